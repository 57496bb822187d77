"""The fast path (v2w_core.diffusion.fast_rollout) gives the plain streaming path's frames.

On CPU CUDA graphs are unavailable, so FastStreamer must fall back to eager and be exact; bf16 autocast
is checked against fp32 with a tolerance that bf16's 8-bit mantissa allows. The GPU test (marker
``gpu``) checks graph replay against eager on a CUDA device.
"""

from __future__ import annotations

import pytest
import torch
from diffusion_tiny import ACTION_DIM, SIZE, make_causal_model

from v2w_core.diffusion.fast_rollout import FastPathConfig, FastStreamer
from v2w_core.diffusion.rollout import RolloutConfig, rollout
from v2w_core.models.world_model import WorldModel

B, K, N = 2, 3, 3
# Same ops in the same order as the plain path: equal up to nothing (fp32, eager fallback).
EXACT = {"rtol": 1e-6, "atol": 1e-6}


def _inputs(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    context = torch.randn(B, K, 3, SIZE, SIZE, generator=g)
    actions = torch.randn(B, K + N - 1, ACTION_DIM, generator=g)
    return context.to(device), actions.to(device)


def _rollout(
    model: WorldModel, runner: FastStreamer | None, device: str = "cpu", steps: int = 3
) -> torch.Tensor:
    context, actions = _inputs(device)
    cfg = RolloutConfig(num_inference_steps=steps, window=4)  # K = 3: window slides after frame 1
    gen = torch.Generator(device=device).manual_seed(1)
    return rollout(model, context, actions, N, cfg, generator=gen, runner=runner)


@pytest.fixture(scope="module")
def plain(causal_model: WorldModel) -> torch.Tensor:
    return _rollout(causal_model, None)


def test_fast_path_falls_back_to_eager_on_cpu_and_is_exact(
    causal_model: WorldModel, plain: torch.Tensor
) -> None:
    runner = FastStreamer(causal_model, FastPathConfig(cuda_graph=True))
    torch.testing.assert_close(_rollout(causal_model, runner), plain, **EXACT)
    assert not runner._graphs and not runner._static  # nothing captured on CPU


def test_bf16_autocast_stays_close_to_fp32(causal_model: WorldModel, plain: torch.Tensor) -> None:
    fast = _rollout(causal_model, FastStreamer(causal_model, FastPathConfig(autocast="bfloat16")))
    assert fast.dtype == plain.dtype
    # bf16 keeps ~3 significant digits; over 3 frames × 3 DDIM steps with η = 1 (same noise draws)
    # the relative error measured ~1e-2. Bound it at 5 %, far below the frames' own scale.
    rel = (fast - plain).norm() / plain.norm()
    assert rel < 5e-2, f"bf16 fast path deviates by {rel:.3%}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_equals_eager() -> None:
    model = make_causal_model().cuda()
    eager = _rollout(model, None, "cuda")
    runner = FastStreamer(model, FastPathConfig(cuda_graph=True))
    graphed = _rollout(model, runner, "cuda")
    assert runner._graphs, "no CUDA graph was captured"
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
