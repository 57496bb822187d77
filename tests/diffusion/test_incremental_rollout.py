"""Rollout with the incremental history cache (``history_encoding="incremental"``, issue 19).

Equal to the default re-encode while the window fills (clean history: same draws); once the window
slides it is an approximation whose size docs/streaming.md measures on the demo's model.
"""

from __future__ import annotations

import pytest
import torch
from diffusion_tiny import ACTION_DIM, SIZE

from v2w_core.diffusion.fast_rollout import FastPathConfig, FastStreamer
from v2w_core.diffusion.rollout import RolloutCarry, RolloutConfig, rollout
from v2w_core.models.world_model import WorldModel

TOL = {"rtol": 1e-4, "atol": 1e-4}
B, K, N = 2, 2, 4


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(B, K, 3, SIZE, SIZE, generator=g), torch.randn(B, K + N - 1, ACTION_DIM, generator=g)


def _run(model: WorldModel, runner=None, **cfg) -> torch.Tensor:  # type: ignore[no-untyped-def]
    context, actions = _inputs()
    config = RolloutConfig(num_inference_steps=3, **cfg)
    return rollout(model, context, actions, N, config, generator=torch.Generator().manual_seed(0), runner=runner)


class _Counting:
    """The model as a runner, counting history encodes and appends."""

    def __init__(self, model: WorldModel) -> None:
        self.model, self.encodes, self.appends = model, 0, 0

    def encode_history(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.encodes += 1
        return self.model.encode_history(*args, **kwargs)

    def append_history(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.appends += 1
        return self.model.append_history(*args, **kwargs)

    def step_newest(self, *args):  # type: ignore[no-untyped-def]
        return self.model.step_newest(*args)


def test_incremental_equals_recompute_while_the_window_fills(causal_model: WorldModel) -> None:
    """History at noise level 0 (no history draws), window 16 > K + N: nothing is ever dropped, so
    extending the cache must give the re-encoded frames — with one encode and N - 1 appends."""
    counting = _Counting(causal_model)
    incremental = _run(causal_model, counting, history_noise_level=0, history_encoding="incremental")
    recompute = _run(causal_model, history_noise_level=0)
    torch.testing.assert_close(incremental, recompute, **TOL)
    assert (counting.encodes, counting.appends) == (1, N - 1)


def test_incremental_after_the_window_slides(causal_model: WorldModel) -> None:
    """Window 3 (history 2) with K = 2: frames are dropped from the second generated frame on. The first
    frame is the same; later ones differ (kept frames remember dropped ones) but stay finite and seeded."""
    incremental = _run(causal_model, window=3, history_encoding="incremental")
    recompute = _run(causal_model, window=3)
    assert incremental.shape == recompute.shape == (B, N, 3, SIZE, SIZE)
    assert torch.isfinite(incremental).all()
    torch.testing.assert_close(incremental[:, 0], recompute[:, 0], **TOL)
    assert not torch.allclose(incremental[:, 1:], recompute[:, 1:], atol=1e-3)
    torch.testing.assert_close(_run(causal_model, window=3, history_encoding="incremental"), incremental)


def test_fast_streamer_runs_the_incremental_mode(causal_model: WorldModel) -> None:
    """The fast path's append_history (graphs fall back to eager on CPU) gives the model's own frames."""
    runner = FastStreamer(causal_model, FastPathConfig())
    fast = _run(causal_model, runner, window=3, history_encoding="incremental")
    torch.testing.assert_close(fast, _run(causal_model, window=3, history_encoding="incremental"), **TOL)


def test_a_carry_continues_the_rollout_one_frame_per_call(causal_model: WorldModel) -> None:
    """A play session's calls: one frame each, the context the newest ``window`` frames so far. With a
    RolloutCarry they equal one N-frame incremental rollout (same draws), past the window's slide, with one
    history encode in all (the last call appends its frame for a next one)."""
    context, actions = _inputs()
    config = RolloutConfig(num_inference_steps=3, window=3, history_encoding="incremental")
    whole = rollout(causal_model, context, actions, N, config, generator=torch.Generator().manual_seed(0))
    counting, carry, g = _Counting(causal_model), RolloutCarry(), torch.Generator().manual_seed(0)
    frames = context
    for _ in range(N):
        lo = max(0, frames.shape[1] - config.window)
        acts = actions[:, lo : frames.shape[1]]  # taken at the context's frames; the last one leads to the new
        new = rollout(causal_model, frames[:, lo:], acts, 1, config, generator=g, runner=counting, carry=carry)
        assert torch.equal(carry.last_frame, new[:, 0])
        frames = torch.cat([frames, new], dim=1)
    torch.testing.assert_close(frames[:, K:], whole, **TOL)
    assert (counting.encodes, counting.appends) == (1, N)

    # a context that does not end with the carried frame (a reset, another episode) is encoded afresh
    rollout(causal_model, context, actions, 1, config, generator=g, runner=counting, carry=carry)
    assert counting.encodes == 2 and carry.cache.num_frames == K
    # re-encoding every frame leaves nothing to carry
    recompute = config.model_copy(update={"history_encoding": "recompute"})
    rollout(causal_model, context, actions, 1, recompute, generator=g, runner=counting, carry=carry)
    assert carry.cache is None and carry.last_frame is None


def test_incremental_config_errors(causal_model: WorldModel) -> None:
    with pytest.raises(ValueError, match="mode='streaming'"):
        RolloutConfig(mode="full", history_encoding="incremental")
    with pytest.raises(ValueError, match="append_history"):
        _run(causal_model, object(), history_encoding="incremental")
