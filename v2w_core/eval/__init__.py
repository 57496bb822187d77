"""Evaluation: parallel held-out rollouts, video metrics, drift curves, controllability, videos.

* :func:`evaluate` (evaluate.py) — rollouts in Ray actors → metrics, drift curves, artifacts; returns an
  :class:`EvalResult` and logs nothing (the evaluate stage logs it: :func:`v2w_core.tracking.log_evaluation`).
  :func:`compute_metrics` is its pure core.
* :class:`EvalConfig` (config.py) — protocol (context, horizon, split), resources, metric weights.
* rollouts.py — chunks of the eval split, per-chunk seeds, :class:`RolloutWorker` actors.
* metrics.py — PSNR, SSIM, Fréchet distance; features.py — LPIPS / FID / FVD networks from safetensors,
  or :class:`Unavailable` with the reason; controllability.py; videos.py — side-by-side videos, drift PNG.

This package imports neither MLflow nor :mod:`v2w_core.tracking` (tests/eval/test_eval_imports.py);
logging, registration and champion promotion live there.
"""

from v2w_core.eval.config import EvalConfig, MetricWeights
from v2w_core.eval.controllability import controllability
from v2w_core.eval.evaluate import EvalResult, MetricsReport, compute_metrics, evaluate
from v2w_core.eval.features import Unavailable, load_metric_net
from v2w_core.eval.metrics import frechet_distance, frechet_distance_from_features, psnr, ssim
from v2w_core.eval.rollouts import (
    EvalChunk,
    RolloutResult,
    chunk_seed,
    load_chunks,
    rollout_chunks,
    run_parallel_rollouts,
    split_fingerprint,
)

__all__ = [
    "EvalChunk",
    "EvalConfig",
    "EvalResult",
    "MetricWeights",
    "MetricsReport",
    "RolloutResult",
    "Unavailable",
    "chunk_seed",
    "compute_metrics",
    "controllability",
    "evaluate",
    "frechet_distance",
    "frechet_distance_from_features",
    "load_chunks",
    "load_metric_net",
    "psnr",
    "rollout_chunks",
    "run_parallel_rollouts",
    "split_fingerprint",
    "ssim",
]
