"""``train(cfg) -> TrainResult``: the entry point that the CLI and the pipeline's train stages call.

The driver side of a run: validate the config against the Ray cluster (fail fast, before any worker
starts), build the Ray Data clip dataset unless one is passed in, open the MLflow run (so that restarted
workers and the final export all land in one run), launch ``TorchTrainer`` with ``FailureConfig`` and the
run's storage (``s3://`` through the pyarrow filesystem of :mod:`v2w_core.storage`), and turn the result
into URIs for the next stage.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from v2w_core import storage
from v2w_core.config import ConfigError
from v2w_core.train.config import TrainConfig

logger = logging.getLogger(__name__)

# Environment variables forwarded to the workers: storage locations (never secrets; the workers find
# credentials themselves, see v2w_core.storage.s3_settings) and the DeepSpeed extension cache.
_FORWARDED_ENV = (*storage.STORAGE_LOCATION_ENV_VARS, "TORCH_EXTENSIONS_DIR")


@dataclass
class TrainResult:
    """What later stages need: the MLflow run, the exported model, the last checkpoint, final metrics."""

    run_id: str | None
    model_uri: str
    checkpoint_uri: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    ema_model_uri: str | None = None


def check_resources(cfg: TrainConfig) -> None:
    """Raise ConfigError when the cluster can never satisfy ``cfg.scaling`` (instead of hanging pending)."""
    import ray

    total = ray.cluster_resources()
    sc = cfg.scaling
    need_cpu = sc.num_workers * sc.cpus_per_worker
    have_cpu = float(total.get("CPU", 0))
    if need_cpu > have_cpu + 1e-9:
        raise ConfigError(
            f"scaling.num_workers={sc.num_workers} × scaling.cpus_per_worker={sc.cpus_per_worker} needs "
            f"{need_cpu:g} CPUs but the Ray cluster has {have_cpu:g}"
        )
    if sc.placement_strategy == "STRICT_SPREAD":
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        if nodes < sc.num_workers:
            raise ConfigError(
                f"scaling.placement_strategy=STRICT_SPREAD puts each of scaling.num_workers={sc.num_workers} "
                f"workers on its own node but the Ray cluster has {nodes}; use SPREAD or add nodes"
            )
    if sc.use_gpu:
        need_gpu = sc.num_workers * sc.gpus_per_worker
        have_gpu = float(total.get("GPU", 0))
        if need_gpu > have_gpu + 1e-9:
            raise ConfigError(
                f"scaling.num_workers={sc.num_workers} × scaling.gpus_per_worker={sc.gpus_per_worker} needs "
                f"{need_gpu:g} GPUs but the Ray cluster has {have_gpu:g}"
            )


def preflight(cfg: TrainConfig) -> None:
    """Catch model-config mistakes on the driver, before workers start (and retry) in vain."""
    from v2w_core import storage
    from v2w_core.train.loop import model_config

    if cfg.data.clips:
        from v2w_core.data.clips import ClipConfig

        ClipConfig.from_dict(cfg.data.clips, source="data.clips")
    if cfg.mode == "pretrain":
        try:
            model_config(cfg)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"model: {err}") from None
    elif cfg.model.base_uri:
        from v2w_core.models.io import model_kind

        try:
            model_kind(cfg.model.base_uri)
        except (storage.StorageError, FileNotFoundError, ValueError) as err:
            raise ConfigError(f"model.base_uri {cfg.model.base_uri!r}: {err}") from None


def build_dataset(cfg: TrainConfig) -> Any:
    """The Ray Data clip dataset described by ``cfg.data`` (see :mod:`v2w_core.data.clips`)."""
    if not cfg.data.manifest_uri:
        raise ConfigError("data.manifest_uri is required when no dataset is passed to train()")
    from v2w_core.data.clips import ClipConfig, build_clip_dataset

    clip_cfg = ClipConfig.from_dict(cfg.data.clips, source="data.clips")
    return build_clip_dataset(cfg.data.manifest_uri, clip_cfg).dataset


def _tracking_uri(cfg: TrainConfig) -> str | None:
    if not cfg.tracking.enabled:
        return None
    uri = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        logger.warning("tracking enabled but no tracking_uri / MLFLOW_TRACKING_URI; MLflow logging is off")
    return uri


def _uri_of(path: str, storage_path: str) -> str:
    """A pyarrow-filesystem path back to a URI in the scheme of ``storage_path``."""
    return f"s3://{path}" if storage_path.startswith("s3://") else path


def train(cfg: TrainConfig, *, dataset: Any = None) -> TrainResult:
    """Run (or resume) the training run ``cfg.experiment`` and export its model.

    Re-running with the same ``experiment`` and ``storage_path`` resumes from the run's newest valid
    checkpoint (Ray Train restores its checkpoint list from storage). ``dataset`` overrides
    ``cfg.data`` with a ready ``ray.data.Dataset`` of clips.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from v2w_core import storage, tracking
    from v2w_core.train.loop import train_loop_per_worker

    if not ray.is_initialized():
        ray.init()
    check_resources(cfg)
    preflight(cfg)
    if dataset is None:
        dataset = build_dataset(cfg)
    # Only tensor columns reach the workers (episode ids etc. cannot become torch tensors).
    dataset = dataset.select_columns(["frames", "actions"] if cfg.mode == "finetune" else ["frames"])

    tracking_uri = _tracking_uri(cfg)
    run_id = None
    if tracking_uri:
        tags = {
            "v2w.stage": "train",
            "v2w.mode": cfg.mode,
            "v2w.experiment": cfg.experiment,
            **cfg.tracking.tags,
        }
        run_id = tracking.start_run(
            tracking_uri,
            cfg.tracking.experiment,
            run_name=cfg.tracking.run_name or cfg.experiment,
            parent_run_id=cfg.tracking.parent_run_id,
            params=tracking.flatten_params(cfg.model_dump(mode="json")),
            tags=tags,
        )
        logger.info("MLflow run %s at %s", run_id, tracking_uri)

    fs, run_root = storage.get_filesystem(cfg.storage_path)
    sc = cfg.scaling
    resources: dict[str, float] = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        resources["GPU"] = sc.gpus_per_worker
    env = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)}
    env["DS_ACCELERATOR"] = "cuda" if sc.use_gpu else "cpu"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train_config": cfg.model_dump(mode="json"),
            "mlflow_run_id": run_id,
            "tracking_uri": tracking_uri,
        },
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.use_gpu,
            resources_per_worker=resources,
            placement_strategy=sc.placement_strategy,
        ),
        run_config=RunConfig(
            name=cfg.experiment,
            storage_path=run_root,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            worker_runtime_env={"env_vars": env},
        ),
        datasets={"train": dataset},
    )
    try:
        result = trainer.fit()
    except BaseException:
        if run_id:
            tracking.end_run(tracking_uri, run_id, "FAILED")
        raise
    if run_id:
        tracking.end_run(tracking_uri, run_id, "FINISHED")

    metrics = dict(result.metrics or {})
    checkpoint_uri = _uri_of(result.checkpoint.path, cfg.storage_path) if result.checkpoint else None
    ema_uri = cfg.model_export_uri + "_ema" if cfg.ema.enabled else None
    return TrainResult(
        run_id=run_id,
        model_uri=cfg.model_export_uri,
        checkpoint_uri=checkpoint_uri,
        metrics=metrics,
        ema_model_uri=ema_uri,
    )
