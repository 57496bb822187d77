"""ViZDoom source: headless recording, determinism per (seed, index), action alignment and metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vizdoom", reason="optional simulator 'vizdoom' is not installed (pip install vizdoom)")

from v2w_core.config import ConfigError
from v2w_core.data.episode import Episode
from v2w_core.data.sources import get_source
from v2w_core.data.sources.vizdoom import VizdoomSource, bundled_scenarios


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine may create ./_vizdoom; keep it out of the repository.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("V2W_VIZDOOM_CONFIG_DIR", str(tmp_path / "cfg"))


def _record(seed: int, n: int = 2, **options: object) -> list[Episode]:
    source = VizdoomSource(episode_length=24, **options)
    return list(source.episodes(n, seed=seed))


def test_episode_shape_dtype_and_metadata() -> None:
    (ep,) = _record(0, n=1)
    assert ep.frames.shape == (24, 64, 64, 3) and ep.frames.dtype == np.uint8
    assert ep.actions.shape == (24, 3) and ep.actions.dtype == np.float32
    assert set(np.unique(ep.actions)) <= {0.0, 1.0}
    assert ep.action_space.type == "multi_hot"
    assert ep.action_space.names == ("TURN_LEFT", "TURN_RIGHT", "MOVE_FORWARD")
    assert ep.domain == "game" and ep.source == "vizdoom"
    assert ep.fps == pytest.approx(35 / 4)
    assert ep.reward is not None and ep.reward.shape == (24,)
    assert ep.done is not None and not ep.done.any()  # cut at episode_length, not ended by the game
    assert ep.extra["scenario"] == "health_gathering"
    assert ep.frames.std() > 5  # a rendered scene, not a blank screen
    assert len(set(ep.frames.reshape(24, -1).sum(axis=1).tolist())) > 1  # the view changes


def test_same_seed_same_episodes_different_seed_different() -> None:
    a, b, c = _record(3), _record(3), _record(4)
    for x, y in zip(a, b, strict=True):
        assert x.episode_id == y.episode_id
        assert np.array_equal(x.frames, y.frames)
        assert np.array_equal(x.actions, y.actions)
    assert not np.array_equal(a[0].actions, c[0].actions)
    assert not np.array_equal(a[0].frames, c[0].frames)
    assert a[0].episode_id != a[1].episode_id


def test_episode_depends_only_on_seed_and_index() -> None:
    batch = _record(5, n=2)
    alone = VizdoomSource(episode_length=24).episode(1, seed=5)
    assert np.array_equal(alone.frames, batch[1].frames)
    assert np.array_equal(alone.actions, batch[1].actions)


def test_frames_follow_actions() -> None:
    """Frame t+1 is the result of action t: holding TURN_LEFT only rotates the view every step."""
    source = VizdoomSource(
        scenario="basic", episode_length=8, buttons=("TURN_LEFT", "TURN_RIGHT"), sticky=1.0, press_prob=1.0
    )
    ep = source.episode(0, seed=0)
    # press_prob=1 and sticky=1: both turn buttons held all episode -> they cancel; the view is static
    assert (ep.actions == 1.0).all()
    static = np.abs(np.diff(ep.frames.astype(np.int16), axis=0)).mean()
    turning = VizdoomSource(
        scenario="basic", episode_length=8, buttons=("TURN_LEFT",), sticky=1.0, press_prob=1.0
    )
    ep_turn = turning.episode(0, seed=0)
    moving = np.abs(np.diff(ep_turn.frames.astype(np.int16), axis=0)).mean()
    assert moving > static + 1.0
    assert np.array_equal(ep.frames[0], ep_turn.frames[0])  # same start; only the actions differ


def test_terminal_episode_marks_done_and_min_length_retries() -> None:
    # defend_the_center ends when the player dies (within ~50 frames at frame_skip 8 under this policy).
    source = VizdoomSource(scenario="defend_the_center", episode_length=400, frame_skip=8)
    ep = source.episode(0, seed=0)
    assert ep.length < 400
    assert ep.done is not None and ep.done[-1] and not ep.done[:-1].any()
    assert ep.extra["terminated"] is True
    # Asking for longer episodes than the game gives re-runs with other engine seeds, then fails clearly.
    strict = VizdoomSource(scenario="defend_the_center", episode_length=400, frame_skip=8, min_length=400,
                           max_retries=1)  # fmt: skip
    with pytest.raises(RuntimeError, match="ended before min_length=400"):
        strict.episode(0, seed=0)


def test_registry_resize_crop_and_bad_options() -> None:
    source = get_source("vizdoom", episode_length=4, height=32, width=48, crop="center")
    (ep,) = list(source.episodes(1, seed=0))
    assert ep.frames.shape == (4, 32, 48, 3)
    with pytest.raises(ConfigError, match="episode_lenght"):
        get_source("vizdoom", episode_lenght=4)
    with pytest.raises(ValueError, match="unknown ViZDoom scenario"):
        VizdoomSource(scenario="no_such_map")
    assert "basic" in bundled_scenarios()


def test_no_engine_home_left_in_cwd(tmp_path: Path) -> None:
    _record(0, n=1)
    assert not (tmp_path / "_vizdoom").exists()
