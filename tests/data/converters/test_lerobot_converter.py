"""LeRobot v3 converter: round trip from a dataset written with pyarrow + PyAV, metadata, bad records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from v2w_core.config import ConfigError
from v2w_core.data.converters import BadRecordError, convert, get_converter
from v2w_core.data.converters import main as convert_main
from v2w_core.data.converters.testing import FixtureEpisode, fixture_episodes, write_lerobot_v3
from v2w_core.data.manifest import Manifest
from v2w_core.data.shards import iter_episodes

#: Mean |decoded - written| of the fixture's yuv420p H.264 at crf 10 on smooth content (grey levels).
CODEC_BOUND = 3.0
CAMERA = "observation.images.top"


@pytest.fixture(scope="module")
def fixture() -> list[FixtureEpisode]:
    return fixture_episodes(5, length=12, height=32, width=48)


@pytest.fixture
def dataset(tmp_path: Path, fixture: list[FixtureEpisode]) -> Path:
    return write_lerobot_v3(tmp_path / "pusht_fixture", fixture, fps=10, episodes_per_file=2, camera=CAMERA)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_round_trip_frames_actions_metadata(dataset: Path, fixture: list[FixtureEpisode]) -> None:
    conv = get_converter("lerobot", str(dataset), height=None, width=None)
    out = list(conv.episodes())
    assert [e.length for e in out] == [f.frames.shape[0] for f in fixture]
    for i, (ep, ref) in enumerate(zip(out, fixture, strict=True)):
        assert ep.frames.shape == ref.frames.shape
        assert _mae(ep.frames, ref.frames) < CODEC_BOUND
        # aligned to the right episode and frame: a one-frame shift is clearly worse
        assert _mae(ep.frames[1:], ref.frames[:-1]) > _mae(ep.frames, ref.frames) + 2.0
        np.testing.assert_array_equal(ep.actions, ref.actions)
        assert ep.episode_id == f"lerobot-pusht_fixture-ep{i:06d}"
        assert ep.domain == "robot" and ep.source == "lerobot" and ep.fps == 10.0
        assert ep.action_space.type == "continuous"
        assert ep.action_space.names == tuple(f"joint_{j}" for j in range(6))
        assert ep.extra["episode_index"] == i
        assert ep.extra["tasks"] == ["push the block"]
        assert ep.extra["camera"] == CAMERA
        assert ep.extra["action_layout"]["shape"] == [6]
        assert ep.extra["robot_type"] == "fixture_arm"
    assert conv.stats.reconciles and conv.stats.converted == 5 and conv.stats.num_bad == 0


def test_resize_crop_frame_skip(dataset: Path, fixture: list[FixtureEpisode]) -> None:
    conv = get_converter("lerobot", str(dataset), height=16, width=16, crop="center", frame_skip=3,
                         action_reduce="sum", max_episodes=2)  # fmt: skip
    out = list(conv.episodes())
    assert len(out) == 2
    ref = fixture[1]
    ep = out[1]
    assert ep.frames.shape == (5, 16, 16, 3)  # 13 frames, every 3rd -> 0,3,6,9,12
    assert ep.fps == pytest.approx(10 / 3)
    np.testing.assert_allclose(ep.actions[0], ref.actions[0:3].sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ep.actions[-1], ref.actions[12:13].sum(axis=0), rtol=1e-6)
    assert ep.extra["source_length"] == 13 and ep.extra["frame_skip"] == 3


def test_truncated_video_is_named_and_skipped(dataset: Path) -> None:
    video = dataset / f"videos/{CAMERA}/chunk-000/file-001.mp4"  # episodes 2 and 3
    video.write_bytes(video.read_bytes()[:300])
    with pytest.raises(BadRecordError) as info:
        list(get_converter("lerobot", str(dataset)).episodes())
    assert "file-001.mp4" in str(info.value) and "episode 2" in str(info.value)

    conv = get_converter("lerobot", str(dataset), on_error="skip")
    out = list(conv.episodes())
    assert [e.extra["episode_index"] for e in out] == [0, 1, 4]
    assert conv.stats.reconciles and conv.stats.records == 5 and conv.stats.num_bad == 2
    assert {b.record for b in conv.stats.bad} == {"episode 2", "episode 3"}
    assert all("file-001.mp4" in b.file for b in conv.stats.bad)


def test_nan_action_and_length_mismatch_are_bad_records(dataset: Path) -> None:
    path = dataset / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    actions = table["action"].to_pylist()
    actions[3][1] = float("nan")  # episode 0, frame 3
    action_type = table.schema.field("action").type
    table = table.set_column(
        table.schema.get_field_index("action"), "action", pa.array(actions, type=action_type)
    )
    pq.write_table(table.slice(0, table.num_rows - 1), path)  # also drop episode 1's last row
    conv = get_converter("lerobot", str(dataset), on_error="skip")
    out = list(conv.episodes())
    assert [e.extra["episode_index"] for e in out] == [2, 3, 4]
    reasons = {b.record: b.reason for b in conv.stats.bad}
    assert "NaN" in reasons["episode 0"]
    assert "12 data rows but the episodes table says 13" in reasons["episode 1"]


def test_bad_options_and_not_v3(dataset: Path) -> None:
    with pytest.raises(ConfigError, match="frame_skp"):
        get_converter("lerobot", str(dataset), frame_skp=2)
    with pytest.raises(ValueError, match="camera 'nope'"):
        get_converter("lerobot", str(dataset), camera="nope")
    info = json.loads((dataset / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (dataset / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="not v3"):
        get_converter("lerobot", str(dataset))


def test_convert_to_shards_reconciles(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards_out"
    result = convert("lerobot", str(dataset), str(out), None, height=32, width=32)
    assert result.written == 5 and result.stats.reconciles
    manifest = Manifest.read(str(out / "manifest.parquet"))
    assert len(manifest) == 5 and set(manifest.table.column("source").to_pylist()) == {"lerobot"}
    back = list(iter_episodes(manifest))
    assert sorted(e.episode_id for e in back) == sorted(manifest.episode_ids())
    assert all(e.frames.shape[1:] == (32, 32, 3) for e in back)


def test_command_line(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = convert_main(["lerobot", "--input", str(dataset), "--out", str(tmp_path / "cli"), "--codec", "zstd",
                       "--opt", "frame_skip=2", "--opt", "on_error=skip"])  # fmt: skip
    assert rc == 0
    assert "5 records: 5 converted, 0 bad" in capsys.readouterr().out
    assert convert_main(["lerobot", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def test_ingest_entry_converts_with_input(dataset: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``v2w-ingest --source lerobot --input …`` goes through the converter, not a simulator source."""
    from v2w_core.data.ingest import main as ingest_main

    out = tmp_path / "ingest_out"
    rc = ingest_main(["--source", "lerobot", "--input", str(dataset), "--out", str(out), "--codec", "zstd",
                      "--source-opt", "height=32", "--source-opt", "width=32"])
    assert rc == 0
    assert "converted 5 episodes" in capsys.readouterr().out
    manifest = Manifest.read(str(out / "manifest.parquet"))
    assert len(manifest) == 5 and set(manifest.table.column("height").to_pylist()) == {32}
    assert ingest_main(["--source", "nope", "--input", str(dataset), "--out", str(out)]) == 2
    # without --input a simulator source needs --episodes and --seed
    assert ingest_main(["--source", "bouncing-shapes", "--out", str(out)]) == 2
