"""Evaluation: held-out rollouts → metrics, drift curves, controllability, videos → an :class:`EvalResult`.

:func:`evaluate` is what the pipeline's evaluate stage calls; it returns the result and logs nothing to a
tracking server: the caller does (:func:`v2w_core.tracking.log_evaluation` writes the eval run: metrics,
drift curves as metric histories, artifacts, the tags below). :func:`compute_metrics` is the pure part (no
Ray) so it can be tested and reused on rollouts produced elsewhere.

Metric keys (all in the [0, 1] frame convention of :mod:`v2w_core.eval.metrics`):
  ``psnr_mean``, ``ssim_mean``, ``lpips_mean`` — per frame, averaged over every generated frame;
  ``fid`` — Fréchet distance of frame features (generated vs ground-truth future frames);
  ``fvd`` — Fréchet distance of clip features (generated vs ground-truth futures);
  ``drift_<m>`` — per horizon step j (1…N), averaged over chunks (the drift curve, ``result.drift[m]``;
  logged as the MLflow metric history of ``drift_<m>`` with step = j, and drawn in a PNG);
  ``ctrl_*`` — see :mod:`v2w_core.eval.controllability`;
  ``motion_*`` — does the generated view move (turn) as the recorded one did: see :mod:`v2w_core.eval.motion`;
  ``steer_*`` — does holding an action move the view as that action moves it in the data: see
  :mod:`v2w_core.eval.steering`.
A metric that cannot be computed is absent from ``metrics`` and present in ``unavailable`` with its reason.

Baselines, on the same chunks and with the same metrics (DESIGN §2.5):
  ``copy_last_<m>`` / drift ``copy_last_<m>`` — the copy-the-last-context-frame predictor (frame K−1
  repeated over the horizon), computed in :func:`compute_metrics` from the chunks alone
  (``copy_last_psnr_mean``, ``copy_last_ssim_mean``, ``copy_last_lpips_mean``, ``copy_last_fid``,
  ``copy_last_fvd`` as their networks allow);
  ``untrained_<m>`` / drift ``untrained_<m>`` — the untrained causal base, copied from its own
  :func:`evaluate` result passed as ``baseline=`` (``untrained_psnr_mean``, ``untrained_ssim_mean``, …).
The registry never makes a version champion unless its primary metric beats ``copy_last_<primary>``
(:func:`v2w_core.tracking.promote_if_better`).

Degenerate outputs: ``gen_nonfinite_frac`` and ``gen_saturated_frac`` (:func:`~v2w_core.output_health.
output_health`); when :func:`~v2w_core.output_health.degenerate_reason` finds them degenerate,
``result.degenerate`` says why, a warning is logged, the eval run is tagged ``v2w.degenerate=true``
(``v2w.degenerate_reason``) and the registry rejects the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
from v2w_core.eval.motion import motion_agreement
from v2w_core.eval.nets.i3d import ARCH as I3D_ARCH
from v2w_core.eval.nets.i3d import FVD_FRAMES
from v2w_core.eval.rollouts import (
    EvalChunk,
    ModelLoader,
    RolloutResult,
    load_chunks,
    run_parallel_rollouts,
    split_fingerprint,
)
from v2w_core.eval.steering import probe_actions, recorded_shifts, steering_response
from v2w_core.eval.videos import plot_drift, rollout_strip, side_by_side, write_video
from v2w_core.output_health import degenerate_reason, output_health

logger = logging.getLogger(__name__)

#: Metric-name prefixes of the two baselines (see the module docstring).
COPY_LAST = "copy_last_"
UNTRAINED = "untrained_"
#: Metrics of the untrained base's own evaluation that are not copied into the model's (timings; its
#: copy-last values are the model's, same chunks).
_NOT_COPIED = ("eval_seconds", "rollout_seconds_per_chunk")
#: Captions of the logged side-by-side videos' two columns.
VIDEO_LABELS = ("truth", "model")  # + per frame: "ctx k/K" (given) or "gen +n/N" (generated)


@dataclass
class MetricsReport:
    metrics: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    drift: dict[str, list[float]] = field(default_factory=dict)
    per_chunk: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)  # metric -> "uri (sha256 …)"
    #: Why the generated frames are degenerate (non-finite / saturated), None when they are not.
    degenerate: str | None = None


@dataclass
class EvalResult:
    """What :func:`evaluate` returns (all small): numbers, reasons, where the artifacts are."""

    metrics: dict[str, float]
    unavailable: dict[str, str]
    drift: dict[str, list[float]]
    split_id: str
    num_chunks: int
    model_uri: str
    #: The local directory holding the artifacts (drift PNG, videos, rollout strip, metrics/per-chunk JSON).
    artifact_dir: str
    #: The artifacts' paths relative to ``artifact_dir`` (as they appear in a logged eval run).
    artifacts: list[str]
    per_chunk: list[dict[str, Any]]
    seconds: float
    #: Why the generated frames are degenerate (see the module docstring), None when they are not.
    degenerate: str | None = None
    #: The metric networks' weights: metric -> "uri (sha256 …)".
    weights: dict[str, str] = field(default_factory=dict)
    #: The protocol (:class:`EvalConfig`) as JSON data: logged as the eval run's ``eval.*`` params.
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor owning a copy: frames and rollouts arrive as read-only views (Ray's object store)."""
    return torch.from_numpy(np.array(a))


def _frames(chunks: list[EvalChunk], start: int, stop: int | None = None) -> torch.Tensor:
    """Frames ``start:stop`` of every chunk as (B, T, C, H, W) float in [0, 1]."""
    return torch.stack([to_unit(_tensor(c.frames[start:stop]).permute(0, 3, 1, 2)) for c in chunks])


def _futures(
    chunks: list[EvalChunk], results: list[RolloutResult], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth and generated futures as (B, N, C, H, W) float in [0, 1]."""
    gt = _frames(chunks, k)
    gen = torch.stack([to_unit(_tensor(r.generated)) for r in results])
    if gt.shape != gen.shape:
        raise ValueError(f"generated futures {tuple(gen.shape)} do not match ground truth {tuple(gt.shape)}")
    return gt, gen


def fvd_clip_problem(net: fe.MetricNet, config: EvalConfig) -> str | None:
    """Why this protocol's chunks are too short for the FVD convention, or None when they are long enough."""
    if net.arch == I3D_ARCH and config.chunk_length < FVD_FRAMES:
        return (
            f"FVD needs clips of {FVD_FRAMES} frames (context_frames + horizon), this protocol has "
            f"{config.context_frames} + {config.horizon} = {config.chunk_length}; raise evaluate.protocol.horizon"
        )
    return None


def _copy_last_futures(chunks: list[EvalChunk], k: int, gt: torch.Tensor) -> torch.Tensor:
    """The copy-last-frame baseline's futures: context frame K−1 of each chunk, repeated over the horizon."""
    return _frames(chunks, k - 1, k).expand_as(gt).contiguous()


def _fvd_clips(net: fe.MetricNet, chunks: list[EvalChunk], k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Futures → the clips FVD compares: the last FVD_FRAMES frames of context + future (README "Metrics"),
    so the real and the generated clip share their context frames and differ only where the model
    predicted. Plumbing (non-I3D) networks take the futures as they are."""
    context = _frames(chunks, 0, k)

    def clip(future: torch.Tensor) -> torch.Tensor:
        if net.arch != I3D_ARCH:
            return future
        return torch.cat([context, future], dim=1)[:, -FVD_FRAMES:]

    return clip


def load_metric_nets(config: EvalConfig) -> dict[str, fe.MetricNet | fe.Unavailable]:
    """The protocol's LPIPS, FID and FVD networks (or why each is unavailable), loaded once per evaluation."""
    w = config.metric_weights
    return {
        "lpips": fe.load_metric_net(w.lpips, "lpips"),
        "fid": fe.load_metric_net(w.fid, "frame"),
        "fvd": fe.load_metric_net(w.fvd, "video"),
    }


def prefetch_reference_features(
    chunks: list[EvalChunk], config: EvalConfig, nets: Mapping[str, fe.MetricNet | fe.Unavailable]
) -> None:
    """Compute the FID/FVD features of the ground-truth and copy-last futures — which need no rollout — into
    :mod:`.features`' memo, so :func:`compute_metrics` only computes the generated frames' features.

    :func:`evaluate` runs this in a thread while the rollout actors work: on a small machine the metric
    networks (Inception at 299 px, I3D at 224 px) cost as much as the rollouts, and this way two thirds
    of their work overlaps them. Any failure is left to :func:`compute_metrics` to report.
    """
    k = config.context_frames
    gt = _frames(chunks, k)
    copy = _copy_last_futures(chunks, k, gt)
    b, n = gt.shape[:2]
    fid_net = nets["fid"]
    if isinstance(fid_net, fe.MetricNet) and b * n >= 2:
        for x in (gt, copy):
            fe.frame_features(fid_net, x.flatten(0, 1))
    fvd_net = nets["fvd"]
    if isinstance(fvd_net, fe.MetricNet) and b >= 2 and fvd_clip_problem(fvd_net, config) is None:
        clip = _fvd_clips(fvd_net, chunks, k)
        for x in (gt, copy):
            fe.video_features(fvd_net, clip(x))


def _prefetch_quietly(
    chunks: list[EvalChunk], config: EvalConfig, nets: Mapping[str, fe.MetricNet | fe.Unavailable]
) -> None:
    try:
        prefetch_reference_features(chunks, config, nets)
    except Exception:  # compute_metrics recomputes and reports whatever went wrong
        logger.debug("eval: feature prefetch failed", exc_info=True)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compute_metrics(
    chunks: list[EvalChunk],
    results: list[RolloutResult],
    config: EvalConfig,
    nets: Mapping[str, fe.MetricNet | fe.Unavailable] | None = None,
) -> MetricsReport:
    """All metrics of rollouts against their chunks (same order); see the module docstring for keys.
    ``nets``: the metric networks already loaded (:func:`load_metric_nets`), else loaded here."""
    with _torch_threads(config.metric_threads or os.cpu_count() or 1):
        return _compute_metrics(chunks, results, config, nets or load_metric_nets(config))


def _compute_metrics(
    chunks: list[EvalChunk],
    results: list[RolloutResult],
    config: EvalConfig,
    nets: Mapping[str, fe.MetricNet | fe.Unavailable],
) -> MetricsReport:
    if [c.chunk_id for c in chunks] != [r.chunk_id for r in results]:
        raise ValueError("results must be in the same order as chunks")
    report = MetricsReport()
    k = config.context_frames
    report.metrics.update(output_health(np.stack([r.generated for r in results])))
    report.degenerate = degenerate_reason(report.metrics)
    gt, gen = _futures(chunks, results, k)
    copy = _copy_last_futures(chunks, k, gt)
    predictions = {"": gen, COPY_LAST: copy}
    per_chunk: list[dict[str, Any]] = [{"chunk_id": c.chunk_id} for c in chunks]
    for prefix, pred in predictions.items():
        p, s = psnr(pred, gt), ssim(pred, gt)  # (B, N)
        report.metrics[f"{prefix}psnr_mean"] = float(p.mean())
        report.metrics[f"{prefix}ssim_mean"] = float(s.mean())
        report.drift[f"{prefix}psnr"] = p.mean(dim=0).tolist()
        report.drift[f"{prefix}ssim"] = s.mean(dim=0).tolist()
        for i, row in enumerate(per_chunk):
            row.update({f"{prefix}psnr": float(p[i].mean()), f"{prefix}ssim": float(s[i].mean())})

    b, n = gt.shape[:2]
    lpips_net = nets["lpips"]
    if isinstance(lpips_net, fe.Unavailable):
        report.unavailable["lpips_mean"] = lpips_net.reason
    else:
        for prefix, pred in predictions.items():
            d = fe.lpips_distance(lpips_net, pred.flatten(0, 1), gt.flatten(0, 1)).view(b, n)
            report.metrics[f"{prefix}lpips_mean"] = float(d.mean())
            report.drift[f"{prefix}lpips"] = d.mean(dim=0).tolist()
            for i, row in enumerate(per_chunk):
                row[f"{prefix}lpips"] = float(d[i].mean())
        report.weights["lpips"] = f"{lpips_net.uri} (sha256 {lpips_net.sha256[:16]})"

    fid_net = nets["fid"]
    if isinstance(fid_net, fe.Unavailable):
        report.unavailable["fid"] = fid_net.reason
    elif b * n < 2:
        report.unavailable["fid"] = f"needs at least 2 frames, got {b * n}"
    else:
        fb = fe.frame_features(fid_net, gt.flatten(0, 1))
        for prefix, pred in predictions.items():
            fa = fe.frame_features(fid_net, pred.flatten(0, 1))
            report.metrics[f"{prefix}fid"] = frechet_distance_from_features(fa, fb)
        report.weights["fid"] = f"{fid_net.uri} (sha256 {fid_net.sha256[:16]})"

    fvd_net = nets["fvd"]
    if isinstance(fvd_net, fe.Unavailable):
        report.unavailable["fvd"] = fvd_net.reason
    elif b < 2:
        report.unavailable["fvd"] = f"needs at least 2 rollouts (clips), got {b}"
    elif (short := fvd_clip_problem(fvd_net, config)) is not None:
        report.unavailable["fvd"] = short
    else:
        clip = _fvd_clips(fvd_net, chunks, k)
        vb = fe.video_features(fvd_net, clip(gt))
        for prefix, pred in predictions.items():
            report.metrics[f"{prefix}fvd"] = frechet_distance_from_features(
                fe.video_features(fvd_net, clip(pred)), vb
            )
        report.weights["fvd"] = f"{fvd_net.uri} (sha256 {fvd_net.sha256[:16]})"

    motion, no_corr = motion_agreement(copy[:, 0], gt, gen)  # copy[:, 0]: each chunk's last context frame
    report.metrics.update(motion)
    if no_corr is not None:
        report.unavailable["motion_dx_corr"] = no_corr

    _steering(report, chunks, results, copy[:, 0])

    with_alt = [i for i, r in enumerate(results) if r.shuffled is not None]
    if config.controllability and with_alt:
        alt = torch.stack([to_unit(_tensor(results[i].shuffled)) for i in with_alt])
        ctrl = controllability(gt[with_alt] * 2 - 1, gen[with_alt] * 2 - 1, alt * 2 - 1)
        report.metrics.update(ctrl)
        for i in with_alt:
            row = per_chunk[i]
            c = controllability(gt[i] * 2 - 1, gen[i] * 2 - 1, to_unit(_tensor(results[i].shuffled)) * 2 - 1)
            row.update(
                {"ctrl_psnr_gain_db": c["ctrl_psnr_gain_db"], "ctrl_rollout_diff": c["ctrl_rollout_diff"]}
            )
    elif config.controllability:
        report.unavailable["ctrl"] = "model has no action encoder (action-free model): nothing to control"
    report.per_chunk = per_chunk
    return report


def _steering(
    report: MetricsReport, chunks: list[EvalChunk], results: list[RolloutResult], last_context: torch.Tensor
) -> None:
    """``steer_*`` keys from the probe rollouts (every chunk rolled out the same probes, or none)."""
    probes = results[0].probes if results else {}
    if not probes:
        return
    if any(r.probes.keys() != probes.keys() for r in results):
        raise ValueError("steering: chunks were rolled out with different probe actions")
    steered = {name: np.stack([to_unit(_tensor(r.steered[name])).numpy() for r in results]) for name in probes}
    truth = recorded_shifts([c.frames for c in chunks], [c.actions for c in chunks], probes)
    metrics, no_gain = steering_response(last_context.numpy(), steered, truth)
    report.metrics.update(metrics)
    if no_gain is not None:
        report.unavailable["steer_dx_gain"] = no_gain


def write_artifacts(
    out_dir: Path,
    chunks: list[EvalChunk],
    results: list[RolloutResult],
    report: MetricsReport,
    config: EvalConfig,
) -> list[Path]:
    """Drift PNG, side-by-side videos of the first ``num_videos`` chunks, a still strip of the same chunks
    (truth / model / model under shuffled actions), metrics/per-chunk JSON."""
    paths = [
        plot_drift(
            report.drift, out_dir / "drift_curve.png", title="per-step metrics over the horizon vs baselines"
        )
    ]
    for chunk, res in list(zip(chunks, results, strict=True))[: config.num_videos]:
        frames = side_by_side(
            chunk.frames, res.generated, config.context_frames, scale=config.video_scale, labels=VIDEO_LABELS
        )
        name = chunk.chunk_id.replace("@", "_at_").replace("/", "_")
        paths.append(write_video(frames, out_dir / "videos" / f"{name}.{config.video_format}"))
    strip_rows = [
        (c.chunk_id, c.frames, r.generated, r.shuffled) for c, r in zip(chunks, results, strict=True)
    ]
    if strip_rows:
        from PIL import Image

        strip = rollout_strip(strip_rows[: max(config.num_videos, 1)], config.context_frames)
        Image.fromarray(strip).save(out_dir / "rollout_strip.png")
        paths.append(out_dir / "rollout_strip.png")
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
    baseline: EvalResult | None = None,
    load_model: ModelLoader | None = None,
) -> EvalResult:
    """Evaluate the world model at ``model_uri`` on ``manifest``'s eval split; returns the result, logs nothing
    to a tracking server (the caller does: :func:`v2w_core.tracking.log_evaluation`).

    Rollouts run in Ray actors (a local Ray is started when none is initialised); each loads ``model_uri``
    with ``load_model`` (called as ``load_model(uri, device=...)``; it must pickle, e.g. a module function or
    a ``functools.partial`` of one). The default reads local, ``s3://`` and ``asset://`` directories
    (:func:`v2w_core.models.io.load_stored_model`); for ``runs:/`` or ``models:/`` URIs pass
    :func:`v2w_core.tracking.load_model`. The artifacts (drift PNG, videos, metrics JSON) are written to a
    fresh temporary directory, ``result.artifact_dir``.

    ``baseline``: the untrained causal base's result of this same function on the same split (evaluate it
    first); its metrics and drift curves join this result's as ``untrained_*``, so the drift plot shows
    model, copy-last frame and untrained base together. A different split is an error. The copy-last-frame
    baseline is always computed (:func:`compute_metrics`).
    """
    config = config or EvalConfig()
    t0 = time.perf_counter()
    _check_probes(model_uri, config)
    if isinstance(manifest, str):
        manifest = Manifest.read(manifest)
    chunks = load_chunks(manifest, config)
    split_id = split_fingerprint(manifest, config)
    if baseline is not None and baseline.split_id != split_id:
        raise ValueError(
            f"baseline {baseline.model_uri} was evaluated on split {baseline.split_id}, this model on "
            f"{split_id}: baselines must use the same split and protocol"
        )
    # The reference sets' metric features need no rollout: computed here while the actors roll out.
    nets = load_metric_nets(config)
    prefetch = threading.Thread(target=_prefetch_quietly, args=(chunks, config, nets), daemon=True)
    prefetch.start()
    results = run_parallel_rollouts(model_uri, chunks, config, load_model=load_model)
    prefetch.join()
    report = compute_metrics(chunks, results, config, nets)
    if report.degenerate:
        logger.warning("eval of %s: degenerate outputs: %s", model_uri, report.degenerate)
    if baseline is not None:
        _merge_untrained(report, baseline)
    out_dir = Path(tempfile.mkdtemp(prefix="v2w-eval-"))
    paths = write_artifacts(out_dir, chunks, results, report, config)
    seconds = time.perf_counter() - t0
    report.metrics["eval_seconds"] = seconds
    report.metrics["rollout_seconds_per_chunk"] = float(np.mean([r.seconds for r in results]))
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
        model_uri=model_uri,
        artifact_dir=str(out_dir),
        artifacts=[p.relative_to(out_dir).as_posix() for p in paths],
        per_chunk=report.per_chunk,
        seconds=seconds,
        degenerate=report.degenerate,
        weights=report.weights,
        protocol=config.model_dump(mode="json"),
    )


def _check_probes(model_uri: str, config: EvalConfig) -> None:
    """Named steering probes that do not fit the model's action space fail here, in one line, before any
    rollout (an actor would fail on its first chunk). MLflow URIs are checked by the actors only."""
    from v2w_core import assets
    from v2w_core.models.io import model_kind, read_world_model_config

    if not config.steering.enabled or config.steering.actions is None or model_uri.startswith(("runs:/", "models:/")):
        return
    uri = assets.resolve(model_uri)
    if model_kind(uri) == "world_model" and (spec := read_world_model_config(uri).action_space) is not None:
        probe_actions(spec, config.steering)


def _merge_untrained(report: MetricsReport, baseline: EvalResult) -> None:
    """The untrained base's own metrics and drift curves, as ``untrained_*`` (not its baselines/timings)."""
    for key, value in baseline.metrics.items():
        if not key.startswith((COPY_LAST, UNTRAINED)) and key not in _NOT_COPIED:
            report.metrics[UNTRAINED + key] = value
    for key, ys in baseline.drift.items():
        if not key.startswith((COPY_LAST, UNTRAINED)):
            report.drift[UNTRAINED + key] = list(ys)


__all__ = [
    "COPY_LAST",
    "UNTRAINED",
    "EvalResult",
    "MetricsReport",
    "compute_metrics",
    "evaluate",
    "write_artifacts",
]
