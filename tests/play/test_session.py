"""A session's per-frame steps are the offline streaming rollout; the store bounds and isolates sessions."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests.play.conftest import make_model
from v2w_core.data.clips import normalize_frames, to_uint8
from v2w_core.diffusion.rollout import RolloutConfig, rollout
from v2w_core.play.episodes import Context
from v2w_core.play.errors import SessionGone, TooManySessions
from v2w_core.play.session import PlaySession
from v2w_core.play.sessions import SessionStore
from v2w_core.tracking.models import load_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return load_model(str(make_model(tmp_path_factory.mktemp("m") / "model"))).eval()


def _context(k: int = 3, seed: int = 0) -> Context:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (k, 64, 64, 3), dtype=np.uint8)
    return Context("ctx", frames, rng.integers(0, 2, (k, 3)).astype(np.float32))


class _CountingEncodes:
    """The model as a rollout runner, counting window encodes."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.model, self.encodes = model, 0

    def encode_history(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.encodes += 1
        return self.model.encode_history(*args, **kwargs)

    def append_history(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.model.append_history(*args, **kwargs)

    def step_newest(self, *args):  # type: ignore[no-untyped-def]
        return self.model.step_newest(*args)


@pytest.mark.parametrize("encoding", ["recompute", "incremental"])
def test_steps_equal_one_offline_streaming_rollout(model, encoding: str) -> None:
    """N single-frame steps = rollout(num_frames=N) with the same actions and seed, past the window (up to
    float reassociation: a value on a rounding boundary may land one uint8 level apart). Incremental: the
    session carries the history cache between key presses, so the window is encoded once, not per step."""
    cfg = RolloutConfig(num_inference_steps=2, window=4, history_encoding=encoding)
    ctx = _context(3)
    keys = np.random.default_rng(1).integers(0, 2, (5, 3)).astype(np.float32)
    session = PlaySession(ctx, window=cfg.window, seed=7)
    runner = _CountingEncodes(model)
    stepped = np.stack([session.step(model, a, cfg, runner=runner) for a in keys])
    assert runner.encodes == (1 if encoding == "incremental" else len(keys))
    # offline: recorded actions a_0..a_{K+N-2}: the context's first K-1, then the player's N keys
    actions = torch.from_numpy(np.concatenate([ctx.actions[:2], keys]))[None]
    frames = normalize_frames(torch.from_numpy(ctx.frames).permute(0, 3, 1, 2))[None]
    offline = rollout(model, frames, actions, len(keys), cfg, generator=torch.Generator().manual_seed(7))
    diff = np.abs(stepped.astype(int) - to_uint8(offline[0].numpy()).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert session.frame_count == 3 + 5


def test_reset_replays_and_actions_steer(model) -> None:
    cfg = RolloutConfig(num_inference_steps=2)
    session = PlaySession(_context(), window=cfg.window, seed=3)
    left = session.step(model, np.array([1, 0, 0], np.float32), cfg)
    session.reset()
    assert session.frame_count == 3
    assert np.array_equal(session.step(model, np.array([1, 0, 0], np.float32), cfg), left)
    session.reset()
    right = session.step(model, np.array([0, 1, 0], np.float32), cfg)
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 1.0  # same noise, other button


def test_store_expires_idle_sessions_and_bounds_their_number() -> None:
    store = SessionStore(max_sessions=2, idle_timeout_s=0.3)
    a = store.add(lambda: PlaySession(_context(), window=4, seed=0))
    store.add(lambda: PlaySession(_context(), window=4, seed=1))
    with pytest.raises(TooManySessions, match="all 2 play sessions"):
        store.add(lambda: PlaySession(_context(), window=4, seed=2))
    time.sleep(0.2)
    assert store.get(a.id) is a  # touching a session restarts its idle clock
    time.sleep(0.2)
    assert len(store) == 1 and store.expired == 1  # the untouched one expired, a lives
    store.add(lambda: PlaySession(_context(), window=4, seed=2))
    time.sleep(0.4)
    with pytest.raises(SessionGone, match="expired or never existed"):
        store.get(a.id)
    assert len(store) == 0
