"""The Episode schema rejects every malformed field with an EpisodeError naming the episode and a fix."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from data_helpers import make_episode

from v2w_core.config import ConfigError
from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.errors import EpisodeError


def _replace(ep: Episode, **changes: Any) -> Episode:
    return dataclasses.replace(ep, **changes)


def test_valid_episodes_of_every_action_type() -> None:
    for kind in ("continuous", "discrete", "multi_hot"):
        ep = make_episode(kind)
        assert ep.length == 6 and (ep.height, ep.width) == (32, 32)
        meta = ep.metadata()
        assert meta["action_space"]["type"] == kind and meta["length"] == 6


def _nan(ep: Episode) -> Episode:
    a = ep.actions.copy()
    a[2, 1] = np.nan
    return _replace(ep, actions=a)


def _inf(ep: Episode) -> Episode:
    a = ep.actions.copy()
    a[4, 0] = np.inf
    return _replace(ep, actions=a)


def _above_high(ep: Episode) -> Episode:
    a = ep.actions.copy()
    a[3, 2] = 2.5
    return _replace(ep, actions=a)


def _below_low(ep: Episode) -> Episode:
    a = ep.actions.copy()
    a[1, 0] = -1.01
    return _replace(ep, actions=a)


CONTINUOUS_CASES: dict[str, tuple[Callable[[Episode], Episode], str]] = {
    "fewer actions": (
        lambda e: _replace(e, actions=e.actions[:-1]),
        "frame/action length mismatch: 6 frames but 5",
    ),
    "more actions": (
        lambda e: _replace(e, actions=np.concatenate([e.actions, e.actions[:1]])),
        "6 frames but 7",
    ),
    "nan": (_nan, "NaN/inf at t=2"),
    "inf": (_inf, "NaN/inf at t=4"),
    "above high": (_above_high, "above high bound at t=3"),
    "below low": (_below_low, "below low bound at t=1"),
    "float64 actions": (
        lambda e: _replace(e, actions=e.actions.astype(np.float64)),
        "dtype float64, expected float32",
    ),
    "wrong action dim": (lambda e: _replace(e, actions=e.actions[:, :2]), "shape (6, 2), expected (6, 3)"),
    "list actions": (lambda e: _replace(e, actions=e.actions.tolist()), "not a numpy array"),
    "float frames": (
        lambda e: _replace(e, frames=e.frames.astype(np.float32) / 255),
        "dtype float32, expected uint8",
    ),
    "grey frames": (lambda e: _replace(e, frames=e.frames[..., 0]), "expected (T, H, W, 3)"),
    "rgba frames": (
        lambda e: _replace(e, frames=np.concatenate([e.frames, e.frames[..., :1]], -1)),
        "(T, H, W, 3)",
    ),
    "reward length": (lambda e: _replace(e, reward=e.reward[:3]), "reward has shape (3,), expected (6,)"),
    "reward nan": (lambda e: _replace(e, reward=np.full(6, np.nan, np.float32)), "reward contains NaN/inf"),
    "done int": (lambda e: _replace(e, done=e.done.astype(np.int64)), "done has dtype int64, expected bool"),
    "bad domain": (lambda e: _replace(e, domain="sim"), "domain is 'sim'"),
    "bad fps": (lambda e: _replace(e, fps=0.0), "fps is 0.0"),
    "empty source": (lambda e: _replace(e, source=""), "source is empty"),
    "extra not json": (lambda e: _replace(e, extra={"a": object()}), "extra is not JSON-serialisable"),
}


@pytest.mark.parametrize("case", sorted(CONTINUOUS_CASES))
def test_bad_continuous_episode_is_named_error(case: str) -> None:
    mutate, expected = CONTINUOUS_CASES[case]
    with pytest.raises(EpisodeError) as info:
        mutate(make_episode("continuous", episode_id="robot-run-7"))
    msg = str(info.value)
    assert "episode 'robot-run-7'" in msg
    assert expected in msg
    assert ";" in msg, "the message must say what to do"


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        (np.array([0, 1, 7, 2, 3, 4]), "outside [0, 7) at t=2"),
        (np.array([0, -1, 0, 2, 3, 4]), "outside [0, 7) at t=1"),
    ],
)
def test_discrete_ids_out_of_range(ids: np.ndarray, expected: str) -> None:
    ep = make_episode("discrete", episode_id="doom-3")
    with pytest.raises(
        EpisodeError, match=r"episode 'doom-3'.*" + expected.replace("[", r"\[").replace(")", r"\)")
    ):
        _replace(ep, actions=ids.astype(np.int64))
    with pytest.raises(EpisodeError, match="dtype int32, expected int64"):
        _replace(ep, actions=np.zeros(6, dtype=np.int32))
    with pytest.raises(EpisodeError, match=r"shape \(6, 1\), expected \(6,\)"):
        _replace(ep, actions=np.zeros((6, 1), dtype=np.int64))


def test_multi_hot_must_be_zero_or_one() -> None:
    ep = make_episode("multi_hot", episode_id="atari-1")
    a = ep.actions.copy()
    a[5, 3] = 0.5
    with pytest.raises(EpisodeError, match=r"episode 'atari-1'.*other than 0/1 at t=5"):
        _replace(ep, actions=a)


@pytest.mark.parametrize("bad_id", ["", "ep.1", "a/b", "-lead", "has space", "x" * 201, 17])
def test_bad_episode_id(bad_id: Any) -> None:
    with pytest.raises(EpisodeError, match="invalid episode id.*no dots"):
        make_episode("continuous", episode_id=bad_id)


def test_validate_catches_mutation_after_construction() -> None:
    ep = make_episode("continuous", episode_id="mutated")
    ep.actions[0, 0] = np.nan
    with pytest.raises(EpisodeError, match="episode 'mutated'.*NaN"):
        ep.validate()


def test_action_space_validation() -> None:
    with pytest.raises(ConfigError, match="names has 2 entries but dim is 3"):
        ActionSpace.from_dict({"type": "continuous", "dim": 3, "names": ["a", "b"]})
    with pytest.raises(ConfigError, match="only applies to continuous"):
        ActionSpace.from_dict({"type": "discrete", "dim": 3, "low": [0, 0, 0]})
    with pytest.raises(ConfigError, match="low must be <= high"):
        ActionSpace.from_dict({"type": "continuous", "dim": 1, "low": [1], "high": [0]})
    with pytest.raises(ConfigError, match="dim"):
        ActionSpace.from_dict({"type": "discrete", "dim": 0})
    with pytest.raises(ConfigError, match="bogus"):
        ActionSpace.from_dict({"type": "discrete", "dim": 2, "bogus": 1})


def test_content_hash_covers_frames_and_actions() -> None:
    ep = make_episode("discrete")
    h = ep.content_hash()
    assert h == make_episode("discrete").content_hash()
    frames = ep.frames.copy()
    frames[0, 0, 0, 0] ^= 1
    assert _replace(ep, frames=frames).content_hash() != h
    actions = ep.actions.copy()
    actions[0] = (actions[0] + 1) % 7
    assert _replace(ep, actions=actions).content_hash() != h


def test_errors_survive_pickling() -> None:
    """Errors raised inside Ray tasks are pickled; the structured fields must come back."""
    from v2w_core.data.errors import CorruptSampleError

    err = pickle.loads(pickle.dumps(CorruptSampleError("s3://b/x.tar", "ep-1", "broken")))
    assert (err.shard, err.key, err.reason) == ("s3://b/x.tar", "ep-1", "broken")
    err2 = pickle.loads(pickle.dumps(EpisodeError("ep-2", "bad", "fix it")))
    assert str(err2) == "episode 'ep-2': bad; fix it"
