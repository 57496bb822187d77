"""The procedural source: deterministic under a seed, and frame t+1 is the result of action t."""

from __future__ import annotations

import numpy as np
import pytest

from v2w_core.config import ConfigError
from v2w_core.data.sources import (
    UnknownSourceError,
    available_sources,
    episode_seed,
    get_source,
    register_source,
)
from v2w_core.data.sources.bouncing_shapes import BouncingShapesEnv, BouncingShapesSource


def test_registry() -> None:
    assert "bouncing-shapes" in available_sources()
    assert isinstance(get_source("bouncing-shapes"), BouncingShapesSource)
    with pytest.raises(UnknownSourceError, match="unknown source 'nope'; available: .*bouncing-shapes"):
        get_source("nope")
    with pytest.raises(ConfigError, match="episode_lenght"):
        get_source("bouncing-shapes", episode_lenght=3)
    with pytest.raises(ValueError, match="already registered"):
        register_source("bouncing-shapes")(lambda: None)  # type: ignore[arg-type,return-value]


def test_deterministic_under_seed() -> None:
    src = get_source("bouncing-shapes", episode_length=20)
    a = list(src.episodes(3, seed=7))
    b = list(get_source("bouncing-shapes", episode_length=20).episodes(5, seed=7))[:3]  # more episodes asked
    c = list(src.episodes(3, seed=8))
    for x, y, z in zip(a, b, c, strict=True):
        assert x.episode_id == y.episode_id != z.episode_id
        assert x.content_hash() == y.content_hash() != z.content_hash()
        np.testing.assert_array_equal(x.reward, y.reward)
    assert len({e.content_hash() for e in a}) == 3, "episodes of one run differ from each other"
    ep = a[0]
    assert ep.frames.shape == (20, 64, 64, 3) and ep.actions.shape == (20,) and ep.actions.dtype == np.int64
    assert ep.action_space.dim == 5 and ep.done[-1] and not ep.done[:-1].any()


def _replay(ep_index: int, seed: int, actions: np.ndarray, length: int) -> np.ndarray:
    """Re-run the simulator from the episode's initial state with the given actions."""
    src = BouncingShapesSource(episode_length=length)
    env = BouncingShapesEnv(src.config)
    env_seed, _ = episode_seed(seed, ep_index).spawn(2)
    frames = [env.reset(np.random.default_rng(env_seed))]
    frames += [env.step(int(a)) for a in actions[:-1]]
    return np.stack(frames)


def test_frame_t_plus_1_is_result_of_action_t() -> None:
    n = 24
    ep = get_source("bouncing-shapes", episode_length=n).episode(2, seed=11)
    # recorded frames are exactly the simulator's response to the recorded actions
    np.testing.assert_array_equal(_replay(2, 11, ep.actions, n), ep.frames)
    # changing the action at t never changes frames <= t, and some other action changes frame t+1
    for t in (0, 5, 17):
        changed = False
        for other in set(range(5)) - {int(ep.actions[t])}:
            alt = ep.actions.copy()
            alt[t] = other
            frames = _replay(2, 11, alt, n)
            np.testing.assert_array_equal(frames[: t + 1], ep.frames[: t + 1])
            changed |= not np.array_equal(frames[t + 1], ep.frames[t + 1])
        assert changed, f"action {t} had no effect on frame {t + 1}"
    # the last action has no recorded result: changing it changes no frame
    alt = ep.actions.copy()
    alt[-1] = (alt[-1] + 1) % 5
    np.testing.assert_array_equal(_replay(2, 11, alt, n), ep.frames)


def test_actions_vary_and_move_the_agent() -> None:
    ep = get_source("bouncing-shapes", episode_length=64).episode(0, seed=0)
    assert len(np.unique(ep.actions)) >= 3
    red = (ep.frames == np.array([230, 50, 40], dtype=np.uint8)).all(-1)
    centres = np.array([np.argwhere(m).mean(0) for m in red])
    assert np.abs(np.diff(centres, axis=0)).sum() > 20, "the agent moves"
