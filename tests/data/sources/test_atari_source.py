"""Atari (ALE) source: seeded, discrete actions with names, 64x64 frames, action -> next frame."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ale_py", reason="optional simulator 'ale-py' is not installed (pip install ale-py)")

from v2w_core.config import ConfigError
from v2w_core.data.sources.atari import AtariSource, available_games


@pytest.fixture(scope="module")
def breakout() -> AtariSource:
    return AtariSource(episode_length=40)


def test_episode_shape_actions_metadata(breakout: AtariSource) -> None:
    ep = breakout.episode(0, seed=0)
    assert ep.frames.shape == (40, 64, 64, 3) and ep.frames.dtype == np.uint8
    assert ep.actions.shape == (40,) and ep.actions.dtype == np.int64
    assert ep.action_space.type == "discrete"
    assert ep.action_space.names == ("NOOP", "FIRE", "RIGHT", "LEFT")
    assert ep.fps == 15.0 and ep.domain == "game" and ep.source == "atari"
    assert ep.extra["game"] == "breakout" and ep.extra["ale_action_ids"] == [0, 1, 3, 4]
    assert ep.done is not None and not ep.done.any()
    assert len({f.tobytes() for f in ep.frames}) > 5  # the screen changes


def test_seeded_and_order_independent(breakout: AtariSource) -> None:
    a = list(breakout.episodes(2, seed=7))
    b = list(AtariSource(episode_length=40).episodes(2, seed=7))
    c = breakout.episode(0, seed=8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.actions, y.actions)
    assert not np.array_equal(a[0].actions, c.actions)
    alone = AtariSource(episode_length=40).episode(1, seed=7)
    np.testing.assert_array_equal(alone.frames, a[1].frames)


def test_actions_drive_frames() -> None:
    """Same start, different actions -> different futures (the paddle moves right vs left)."""
    right = AtariSource(episode_length=12, sticky=1.0, noop_max=0, actions=("RIGHT",))
    left = AtariSource(episode_length=12, sticky=1.0, noop_max=0, actions=("LEFT",))
    assert right.action_space.names == ("RIGHT",)
    r, lft = right.episode(0, seed=0), left.episode(0, seed=0)
    np.testing.assert_array_equal(r.frames[0], lft.frames[0])
    assert not np.array_equal(r.frames[-1], lft.frames[-1])


def test_game_over_sets_done_and_options() -> None:
    ep = AtariSource(game="pong", episode_length=3000, frame_skip=16, height=32, width=32).episode(0, seed=0)
    assert ep.length < 3000 and ep.done is not None and ep.done[-1]
    assert ep.frames.shape[1:] == (32, 32, 3)
    with pytest.raises(ValueError, match="unknown ALE actions"):
        AtariSource(actions=("JUMP",))
    with pytest.raises(ValueError, match="unknown Atari game"):
        AtariSource(game="not_a_game")
    with pytest.raises(ConfigError, match="stickyness"):
        AtariSource(stickyness=0.5)
    assert "pong" in available_games()
