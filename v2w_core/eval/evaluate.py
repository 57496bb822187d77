"""The evaluate stage: held-out rollouts → metrics, drift curves, controllability, videos → an MLflow run.

:func:`evaluate` is what the pipeline's evaluate stage calls. :func:`compute_metrics` is the pure part
(no Ray, no MLflow) so it can be tested and reused on rollouts produced elsewhere.

Metric keys (all in the [0, 1] frame convention of :mod:`v2w_core.eval.metrics`):
  ``psnr_mean``, ``ssim_mean``, ``lpips_mean`` — per frame, averaged over every generated frame;
  ``fid`` — Fréchet distance of frame features (generated vs ground-truth future frames);
  ``fvd`` — Fréchet distance of clip features (generated vs ground-truth futures);
  ``drift_<m>`` — per horizon step j (1…N), averaged over chunks (the drift curve; logged as the MLflow
  metric history of ``drift_<m>`` with step = j, and as a PNG);
  ``ctrl_*`` — see :mod:`v2w_core.eval.controllability`.
A metric that cannot be computed is absent from ``metrics`` and present in ``unavailable`` with its reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from v2w_core.data.manifest import Manifest
from v2w_core.eval import features as fe
from v2w_core.eval.config import EvalConfig
from v2w_core.eval.controllability import controllability
from v2w_core.eval.metrics import frechet_distance_from_features, psnr, ssim, to_unit
from v2w_core.eval.rollouts import (
    EvalChunk,
    RolloutResult,
    load_chunks,
    run_parallel_rollouts,
    split_fingerprint,
)
from v2w_core.eval.videos import plot_drift, side_by_side, write_video

logger = logging.getLogger(__name__)


@dataclass
class MetricsReport:
    metrics: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    drift: dict[str, list[float]] = field(default_factory=dict)
    per_chunk: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)  # metric -> "uri (sha256 …)"


@dataclass
class EvalResult:
    """What the evaluate stage returns (all small): numbers, reasons, where the artifacts went."""

    metrics: dict[str, float]
    unavailable: dict[str, str]
    drift: dict[str, list[float]]
    split_id: str
    num_chunks: int
    run_id: str | None
    model_uri: str
    artifacts: list[str]
    per_chunk: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _futures(
    chunks: list[EvalChunk], results: list[RolloutResult], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth and generated futures as (B, N, C, H, W) float in [0, 1]."""
    gt = torch.stack([to_unit(torch.from_numpy(c.frames[k:]).permute(0, 3, 1, 2)) for c in chunks])
    gen = torch.stack([to_unit(torch.from_numpy(r.generated)) for r in results])
    if gt.shape != gen.shape:
        raise ValueError(f"generated futures {tuple(gen.shape)} do not match ground truth {tuple(gt.shape)}")
    return gt, gen


def compute_metrics(
    chunks: list[EvalChunk], results: list[RolloutResult], config: EvalConfig
) -> MetricsReport:
    """All metrics of rollouts against their chunks (same order); see the module docstring for keys."""
    if [c.chunk_id for c in chunks] != [r.chunk_id for r in results]:
        raise ValueError("results must be in the same order as chunks")
    report = MetricsReport()
    gt, gen = _futures(chunks, results, config.context_frames)
    p, s = psnr(gen, gt), ssim(gen, gt)  # (B, N)
    report.metrics["psnr_mean"] = float(p.mean())
    report.metrics["ssim_mean"] = float(s.mean())
    report.drift["psnr"] = p.mean(dim=0).tolist()
    report.drift["ssim"] = s.mean(dim=0).tolist()
    per_chunk = [
        {"chunk_id": c.chunk_id, "psnr": float(p[i].mean()), "ssim": float(s[i].mean())}
        for i, c in enumerate(chunks)
    ]

    b, n = gt.shape[:2]
    lpips_net = fe.load_metric_net(config.metric_weights.lpips, "lpips")
    if isinstance(lpips_net, fe.Unavailable):
        report.unavailable["lpips_mean"] = lpips_net.reason
    else:
        d = fe.lpips_distance(lpips_net, gen.flatten(0, 1), gt.flatten(0, 1)).view(b, n)
        report.metrics["lpips_mean"] = float(d.mean())
        report.drift["lpips"] = d.mean(dim=0).tolist()
        report.weights["lpips"] = f"{lpips_net.uri} (sha256 {lpips_net.sha256[:16]})"
        for i, row in enumerate(per_chunk):
            row["lpips"] = float(d[i].mean())

    fid_net = fe.load_metric_net(config.metric_weights.fid, "frame")
    if isinstance(fid_net, fe.Unavailable):
        report.unavailable["fid"] = fid_net.reason
    elif b * n < 2:
        report.unavailable["fid"] = f"needs at least 2 frames, got {b * n}"
    else:
        fa = fe.frame_features(fid_net, gen.flatten(0, 1))
        fb = fe.frame_features(fid_net, gt.flatten(0, 1))
        report.metrics["fid"] = frechet_distance_from_features(fa, fb)
        report.weights["fid"] = f"{fid_net.uri} (sha256 {fid_net.sha256[:16]})"

    fvd_net = fe.load_metric_net(config.metric_weights.fvd, "video")
    if isinstance(fvd_net, fe.Unavailable):
        report.unavailable["fvd"] = fvd_net.reason
    elif b < 2:
        report.unavailable["fvd"] = f"needs at least 2 rollouts (clips), got {b}"
    else:
        report.metrics["fvd"] = frechet_distance_from_features(
            fe.video_features(fvd_net, gen), fe.video_features(fvd_net, gt)
        )
        report.weights["fvd"] = f"{fvd_net.uri} (sha256 {fvd_net.sha256[:16]})"

    with_alt = [i for i, r in enumerate(results) if r.shuffled is not None]
    if config.controllability and with_alt:
        alt = torch.stack([to_unit(torch.from_numpy(results[i].shuffled)) for i in with_alt])
        ctrl = controllability(gt[with_alt] * 2 - 1, gen[with_alt] * 2 - 1, alt * 2 - 1)
        report.metrics.update(ctrl)
        for i in with_alt:
            row = per_chunk[i]
            c = controllability(
                gt[i] * 2 - 1, gen[i] * 2 - 1, to_unit(torch.from_numpy(results[i].shuffled)) * 2 - 1
            )
            row.update(
                {"ctrl_psnr_gain_db": c["ctrl_psnr_gain_db"], "ctrl_rollout_diff": c["ctrl_rollout_diff"]}
            )
    elif config.controllability:
        report.unavailable["ctrl"] = "model has no action encoder (action-free model): nothing to control"
    report.per_chunk = per_chunk
    return report


def write_artifacts(
    out_dir: Path,
    chunks: list[EvalChunk],
    results: list[RolloutResult],
    report: MetricsReport,
    config: EvalConfig,
) -> list[Path]:
    """Drift PNG, side-by-side videos of the first ``num_videos`` chunks, metrics/per-chunk JSON."""
    paths = [plot_drift(report.drift, out_dir / "drift_curve.png", title="per-step metrics over the horizon")]
    for chunk, res in list(zip(chunks, results, strict=True))[: config.num_videos]:
        frames = side_by_side(chunk.frames, res.generated, config.context_frames, scale=config.video_scale)
        name = chunk.chunk_id.replace("@", "_at_").replace("/", "_")
        paths.append(write_video(frames, out_dir / "videos" / f"{name}.{config.video_format}"))
    summary = {
        "metrics": report.metrics,
        "unavailable": {k: f"unavailable: {v}" for k, v in report.unavailable.items()},
        "drift": report.drift,
        "weights": report.weights,
    }
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    (out_dir / "per_chunk.json").write_text(json.dumps(report.per_chunk, indent=2))
    return paths + [out_dir / "metrics.json", out_dir / "per_chunk.json"]


def evaluate(
    model_uri: str,
    manifest: Manifest | str,
    config: EvalConfig | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str = "vid2world",
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> EvalResult:
    """Evaluate the world model at ``model_uri`` on ``manifest``'s eval split; log an MLflow run.

    ``model_uri``: local dir, ``s3://`` dir, ``runs:/<id>/model`` or ``models:/<name>@<alias>`` (see
    :func:`v2w_core.tracking.load_model_from_uri`). Rollouts run in Ray actors (a local Ray is started
    when none is initialised). ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI``; with neither, nothing
    is logged and ``run_id`` is None (artifacts then stay in a temp dir, listed in ``artifacts``).
    """
    from v2w_core import tracking

    config = config or EvalConfig()
    t0 = time.perf_counter()
    if isinstance(manifest, str):
        manifest = Manifest.read(manifest)
    chunks = load_chunks(manifest, config)
    split_id = split_fingerprint(manifest, config)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    results = run_parallel_rollouts(model_uri, chunks, config, tracking_uri=tracking_uri)
    report = compute_metrics(chunks, results, config)
    out_dir = Path(tempfile.mkdtemp(prefix="v2w-eval-"))
    paths = write_artifacts(out_dir, chunks, results, report, config)
    seconds = time.perf_counter() - t0
    report.metrics["eval_seconds"] = seconds
    report.metrics["rollout_seconds_per_chunk"] = float(np.mean([r.seconds for r in results]))

    run_id = None
    artifacts = [str(p) for p in paths]
    if tracking_uri:
        run_id = tracking.log_eval_run(
            tracking_uri,
            experiment,
            model_uri=model_uri,
            metrics=report.metrics,
            unavailable=report.unavailable,
            drift=report.drift,
            split_id=split_id,
            params={"eval." + k: v for k, v in _flat(config.model_dump(mode="json")).items()},
            artifact_dir=out_dir,
            parent_run_id=parent_run_id,
            run_name=run_name,
            tags={**(tags or {}), **{f"v2w.weights.{k}": v for k, v in report.weights.items()}},
        )
        artifacts = [p.relative_to(out_dir).as_posix() for p in paths]
    for name, reason in report.unavailable.items():
        logger.warning("eval: %s unavailable: %s", name, reason)
    logger.info(
        "eval of %s: %s", model_uri, {k: round(v, 4) for k, v in report.metrics.items() if math.isfinite(v)}
    )
    return EvalResult(
        metrics=report.metrics,
        unavailable=report.unavailable,
        drift=report.drift,
        split_id=split_id,
        num_chunks=len(chunks),
        run_id=run_id,
        model_uri=model_uri,
        artifacts=artifacts,
        per_chunk=report.per_chunk,
        seconds=seconds,
    )


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


__all__ = ["EvalResult", "MetricsReport", "compute_metrics", "evaluate", "write_artifacts"]
