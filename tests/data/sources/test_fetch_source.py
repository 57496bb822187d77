"""Fetch arm source (gymnasium-robotics on MuJoCo, offscreen EGL): seeded, continuous 4-dim actions, 64x64."""

from __future__ import annotations

import os

import numpy as np
import pytest

# MuJoCo reads MUJOCO_GL once, when first imported (importorskip below imports it): headless EGL.
os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("gymnasium_robotics", reason="optional simulator 'gymnasium-robotics' is not installed")
pytest.importorskip("mujoco", reason="optional simulator 'mujoco' is not installed")

from v2w_core.data.sources.fetch import ACTION_NAMES, FetchSource


@pytest.fixture(scope="module")
def push() -> FetchSource:
    source = FetchSource(task="push", episode_length=8)
    yield source
    source.close()


def test_episode_shape_actions_metadata(push: FetchSource) -> None:
    ep = push.episode(0, seed=0)
    assert ep.frames.shape == (8, 64, 64, 3) and ep.frames.dtype == np.uint8
    assert ep.actions.shape == (8, 4) and ep.actions.dtype == np.float32
    assert (np.abs(ep.actions) <= 1).all()
    assert ep.action_space.type == "continuous" and ep.action_space.names == ACTION_NAMES
    assert ep.action_space.low == (-1.0,) * 4 and ep.action_space.high == (1.0,) * 4
    assert ep.fps == pytest.approx(25.0) and ep.domain == "robot" and ep.source == "fetch"
    assert ep.extra["task"] == "push" and ep.extra["env_id"] == "FetchPush-v4"
    assert len(ep.extra["goal"]) == 3 and len(ep.extra["object_start"]) == 3
    assert ep.frames.std() > 10  # a rendered scene (not a blank GL buffer)
    # the arm moves under the scripted actions: consecutive frames differ
    assert np.abs(np.diff(ep.frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3)).min() > 0.05


def test_seeded(push: FetchSource) -> None:
    a, b = push.episode(1, seed=3), FetchSource(task="push", episode_length=8).episode(1, seed=3)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.extra["goal"] == b.extra["goal"]
    c = push.episode(1, seed=4)
    assert not np.array_equal(a.actions, c.actions) and a.extra["goal"] != c.extra["goal"]


def test_mixed_tasks_and_size() -> None:
    source = FetchSource(task="mixed", episode_length=3, height=32, width=48)
    tasks = {ep.extra["task"] for ep in source.episodes(8, seed=0)}
    assert tasks == {"reach", "push", "pick_and_place"}
    ep = FetchSource(task="reach", episode_length=2, height=32, width=48).episode(0, seed=0)
    assert ep.frames.shape == (2, 32, 48, 3) and ep.extra["object_start"] is None
