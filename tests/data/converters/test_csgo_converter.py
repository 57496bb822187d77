"""DIAMOND CS:GO hdf5 converter: BGR -> RGB, the 51-dim action layout, bad files and keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("h5py", reason="h5py is not installed (pip install h5py)")

import h5py

from v2w_core.data.converters import BadRecordError, convert, get_converter
from v2w_core.data.converters.csgo import ACTION_DIM, ACTION_NAMES, MOUSE_X_BINS, MOUSE_Y_BINS
from v2w_core.data.converters.testing import smooth_frames, write_csgo_hdf5


def diamond_actions(n: int, seed: int) -> np.ndarray:
    """Random actions in DIAMOND's encoding: multi-hot keys/clicks, one-hot mouse x and y bins."""
    rng = np.random.default_rng(seed)
    a = np.zeros((n, ACTION_DIM), dtype=np.float32)
    a[:, :13] = rng.random((n, 13)) < 0.2
    a[np.arange(n), 13 + rng.integers(0, len(MOUSE_X_BINS), n)] = 1
    a[np.arange(n), 36 + rng.integers(0, len(MOUSE_Y_BINS), n)] = 1
    return a


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]]]:
    root = tmp_path / "dataset_dm_scraped_dust2"
    refs = []
    for i in range(3):
        frames = smooth_frames(8 + i, 150, 280, seed=i)
        actions = diamond_actions(8 + i, seed=i)
        write_csgo_hdf5(root / f"hdf5_dm_july2021_{i + 1}.hdf5", frames, actions)
        refs.append((frames, actions))
    return root, refs


def test_round_trip_bgr_to_rgb_and_layout(dataset: tuple[Path, list]) -> None:
    root, refs = dataset
    conv = get_converter("csgo", str(root), height=None, width=None)
    out = list(conv.episodes())
    assert len(out) == 3 and conv.stats.reconciles
    for i, (ep, (frames, actions)) in enumerate(zip(out, refs, strict=True)):
        np.testing.assert_array_equal(ep.frames, frames)  # hdf5 is lossless; BGR was undone
        np.testing.assert_array_equal(ep.actions, actions)
        assert ep.episode_id == f"csgo-hdf5_dm_july2021_{i + 1}"
        assert ep.action_space.type == "multi_hot" and ep.action_space.dim == 51
        assert ep.action_space.names == ACTION_NAMES
        assert ep.action_space.names[0] == "key_w" and ep.action_space.names[11] == "l_click"
        assert ep.action_space.names[13 + MOUSE_X_BINS.index(0)] == "mouse_x_0"
        assert ep.domain == "game" and ep.fps == 16.0
        layout = ep.extra["action_layout"]
        assert layout["mouse_x"] == [13, 36] and layout["mouse_y"] == [36, 51]
        assert ep.extra["mouse_x_one_hot"] and ep.extra["mouse_y_one_hot"]


def test_resize_and_frame_skip_any(dataset: tuple[Path, list]) -> None:
    root, refs = dataset
    ep = next(iter(get_converter("csgo", str(root), frame_skip=2, action_reduce="any").episodes()))
    assert ep.frames.shape == (4, 64, 64, 3) and ep.fps == 8.0
    np.testing.assert_array_equal(ep.actions[0], np.maximum(refs[0][1][0], refs[0][1][1]))


def test_bad_files_and_keys_named(dataset: tuple[Path, list]) -> None:
    root, _ = dataset
    with h5py.File(root / "hdf5_dm_july2021_2.hdf5", "a") as f:
        del f["frame_5_y"]
    with h5py.File(root / "hdf5_dm_july2021_3.hdf5", "a") as f:
        y = f["frame_2_y"][()]
        y[40] = np.nan
        f["frame_2_y"][...] = y
    (root / "hdf5_dm_july2021_4.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)  # truncated
    with pytest.raises(BadRecordError) as info:
        list(get_converter("csgo", str(root)).episodes())
    assert "frame_5_y" in str(info.value) and "hdf5_dm_july2021_2.hdf5" in str(info.value)
    conv = get_converter("csgo", str(root), on_error="skip")
    out = list(conv.episodes())
    assert [e.episode_id for e in out] == ["csgo-hdf5_dm_july2021_1"]
    bad = {b.file: (b.record, b.reason) for b in conv.stats.bad}
    assert bad["hdf5_dm_july2021_2.hdf5"] == ("frame_5_y", "missing")
    assert bad["hdf5_dm_july2021_3.hdf5"][0] == "frame_2_y" and "NaN" in bad["hdf5_dm_july2021_3.hdf5"][1]
    assert bad["hdf5_dm_july2021_4.hdf5"][0] == "file" and "hdf5" in bad["hdf5_dm_july2021_4.hdf5"][1]
    assert conv.stats.records == 4 and conv.stats.reconciles


def test_non_binary_actions_need_continuous(tmp_path: Path) -> None:
    actions = diamond_actions(4, 0)
    actions[1, 13:36] = 0.5
    write_csgo_hdf5(tmp_path / "soft.hdf5", smooth_frames(4, 150, 280, 0), actions)
    with pytest.raises(BadRecordError, match="other than 0/1"):
        list(get_converter("csgo", str(tmp_path / "soft.hdf5")).episodes())
    (ep,) = list(get_converter("csgo", str(tmp_path / "soft.hdf5"), action_type="continuous").episodes())
    assert ep.action_space.type == "continuous"
    np.testing.assert_array_equal(ep.actions, actions)


def test_convert_to_shards(dataset: tuple[Path, list], tmp_path: Path) -> None:
    root, _ = dataset
    result = convert("csgo", str(root), str(tmp_path / "out"), None)
    assert result.written == 3 and result.stats.frames_out == 8 + 9 + 10
