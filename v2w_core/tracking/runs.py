"""MLflow runs: experiments, runs and their params, artifacts, and the evaluation's run.

Runs are created by the driver (:func:`start_run`) so that a restarted worker group keeps logging into the
same run; training's rank 0 logs into it through :class:`v2w_core.tracking.buffer.BufferedMlflowLogger`.
Finishing a run and uploading artifacts (:func:`end_run`, :func:`log_artifacts`) retry with MLflow's own
retries off and never raise: tracking must never kill training. :func:`log_evaluation` writes an evaluation's
result (:class:`v2w_core.eval.EvalResult`) as one finished eval run (metrics, drift curves as metric
histories, artifacts).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from v2w_core.tracking.client import client as mlflow_client

logger = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
#: MLflow 3's UI picks an experiment's view from this tag: model training (runs, metrics, models) for
#: ``custom_model_development``; unset, it may open on the GenAI view (traces, evaluations) instead.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: The run tag holding the eval split's fingerprint (also a registered version's tag, see the registry).
TAG_SPLIT = "v2w.eval_split"
_PACKAGES = ("torch", "deepspeed", "ray", "diffusers", "mlflow", "pyarrow", "numpy", "vid2world")


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"optim.lr": "0.0001", ...}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name + "."))
        else:
            text = str(value)
            out[name] = text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."
    return out


def environment_info() -> dict[str, str]:
    """Hardware and package versions of this process's machine (logged as params under ``env.``)."""
    from importlib import metadata

    info = {
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.cpu_count": str(os.cpu_count()),
        "env.hostname_hash": str(abs(hash(platform.node())) % 10**8),
    }
    for pkg in _PACKAGES:
        try:
            info[f"env.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[f"env.{pkg}"] = "not installed"
    try:
        import torch

        info["env.cuda_available"] = str(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["env.gpu"] = torch.cuda.get_device_name(0)
            info["env.gpu_count"] = str(torch.cuda.device_count())
            info["env.cuda"] = str(torch.version.cuda)
        info["env.torch_threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    return info


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created as a model-training experiment (:data:`EXPERIMENT_KIND`)
    when missing. One without a kind (created before this tag was set) gets it; another kind is kept."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return str(client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
        except Exception:  # RESOURCE_ALREADY_EXISTS: another stage or process created it meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(exp.experiment_id)


def start_run(
    tracking_uri: str,
    experiment: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create an MLflow run (driver side) and log the config params; returns its run id."""
    from mlflow.entities import Param, RunTag

    client = mlflow_client(tracking_uri)
    exp_id = ensure_experiment(client, experiment)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    items = list((params or {}).items())
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(
            run.info.run_id, params=[Param(k, v) for k, v in items[i : i + MAX_PARAMS_PER_BATCH]]
        )
    client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED", *, attempts: int = 5) -> bool:
    """Mark the run finished/failed; tolerant of a tracking outage (returns False and warns)."""
    return _retry(lambda: mlflow_client(tracking_uri).set_terminated(run_id, status), attempts, "end run")


def log_artifacts(
    tracking_uri: str, run_id: str, local_dir: str, artifact_path: str, *, attempts: int = 5
) -> bool:
    """Upload a directory as run artifacts, retrying; a failure is a warning, not an error."""
    return _retry(
        lambda: mlflow_client(tracking_uri).log_artifacts(run_id, local_dir, artifact_path),
        attempts,
        f"log artifacts {artifact_path!r}",
        timeout_s=600.0,  # a paper-size model is GBs through the tracking server's artifact proxy
    )


@contextlib.contextmanager
def _fail_fast(timeout_s: float = 10.0) -> Iterator[None]:
    """MLflow's own retries off (and a short timeout) for the duration: our loop retries instead."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {n: os.environ.get(n) for n in names}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(timeout_s))
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _retry(fn: Any, attempts: int, what: str, backoff_s: float = 1.0, timeout_s: float = 10.0) -> bool:
    for i in range(attempts):
        try:
            with _fail_fast(timeout_s):
                fn()
            return True
        except Exception as err:  # noqa: BLE001 - tracking must never kill training
            if i == attempts - 1:
                logger.warning("MLflow: could not %s after %d attempts: %s", what, attempts, err)
                return False
            time.sleep(backoff_s * 2**i)
    return False


# ------------------------------------------------------------------------------------------- eval runs
class Evaluation(Protocol):
    """What :func:`log_evaluation` reads from an evaluation result (:class:`v2w_core.eval.EvalResult`; this
    package does not import eval, which sits above it)."""

    model_uri: str
    metrics: dict[str, float]
    unavailable: dict[str, str]
    drift: dict[str, list[float]]
    split_id: str
    artifact_dir: str
    degenerate: str | None
    weights: dict[str, str]
    protocol: dict[str, Any]


def log_evaluation(
    tracking_uri: str,
    experiment: str,
    result: Evaluation,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    baseline_run_id: str | None = None,
) -> str:
    """Log an evaluation's result as one finished eval run; returns its id.

    The run holds the metrics, the drift curves (metric history ``drift_<m>``, step = horizon step), the
    protocol as ``eval.*`` params, the artifacts of ``result.artifact_dir``, and tags: the reasons of
    unavailable metrics (``v2w.unavailable.<m>``), the split fingerprint, ``v2w.degenerate`` (+ its reason),
    the metric networks' weights (``v2w.weights.<m>``) and, when the untrained base's own eval run is given,
    ``v2w.baseline_run_id``."""
    from mlflow.entities import Metric, RunTag

    all_tags = {
        "v2w.stage": "evaluate",
        "v2w.model_uri": result.model_uri,
        TAG_SPLIT: result.split_id,
        **{f"v2w.unavailable.{k}": f"unavailable: {v}"[:5000] for k, v in result.unavailable.items()},
        **dict(tags or {}),
        "v2w.degenerate": "true" if result.degenerate else "false",
        **({"v2w.degenerate_reason": result.degenerate} if result.degenerate else {}),
        **({"v2w.baseline_run_id": baseline_run_id} if baseline_run_id else {}),
        **{f"v2w.weights.{k}": v for k, v in result.weights.items()},
    }
    run_id = start_run(
        tracking_uri, experiment, run_name=run_name or "evaluate", parent_run_id=parent_run_id,
        params=flatten_params(result.protocol, "eval."), tags=all_tags,
    )  # fmt: skip
    client = mlflow_client(tracking_uri)
    status = "FAILED"
    try:
        metrics = result.metrics
        entries = [Metric(k, float(v), 0, 0) for k, v in metrics.items() if math.isfinite(float(v))]
        for name, ys in result.drift.items():
            entries += [Metric(f"drift_{name}", float(y), 0, j + 1) for j, y in enumerate(ys)]
        for i in range(0, len(entries), 1000):
            client.log_batch(run_id, metrics=entries[i : i + 1000])
        client.log_batch(run_id, tags=[RunTag("v2w.metrics_json", json.dumps(dict(metrics))[:5000])])
        client.log_artifacts(run_id, str(result.artifact_dir))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    logger.info("eval run %s logged (%d metrics, %d unavailable)", run_id, len(result.metrics),
                len(result.unavailable))  # fmt: skip
    return run_id


# ------------------------------------------------------------------------------- pipeline and stage runs
def start_pipeline_run(
    tracking_uri: str, experiment: str, *, run_name: str, tags: Mapping[str, str]
) -> tuple[str, str]:
    """The pipeline's parent run (stages nest their runs under it): returns (experiment id, run id)."""
    client = mlflow_client(tracking_uri)
    exp_id = ensure_experiment(client, experiment)
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
    return exp_id, run.info.run_id


def start_stage_run(
    tracking_uri: str,
    experiment_id: str,
    *,
    parent_run_id: str,
    stage: str,
    fingerprint: str,
    params: Mapping[str, Any],
) -> str:
    """A stage's run nested under the pipeline's, with the first 100 of its flat config ``params``."""
    from mlflow.entities import Param

    client = mlflow_client(tracking_uri)
    run = client.create_run(experiment_id, run_name=stage,
                            tags={"mlflow.parentRunId": parent_run_id, "v2w.stage": stage,
                                  "v2w.fingerprint": fingerprint})  # fmt: skip
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:500]) for k, v in list(params.items())[:100]])
    return run.info.run_id


def set_run_tag(tracking_uri: str, run_id: str, key: str, value: str) -> None:
    mlflow_client(tracking_uri).set_tag(run_id, key, value)


def finish_stage_run(tracking_uri: str, run_id: str, outputs: Mapping[str, Any], seconds: float) -> None:
    """Log a stage's flat ``outputs`` (numbers as metrics, the rest as ``output.*`` tags) and
    ``stage_seconds``, then mark the run finished."""
    client = mlflow_client(tracking_uri)
    client.log_metric(run_id, "stage_seconds", seconds)
    for key, value in outputs.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            client.log_metric(run_id, key, float(value))
        else:
            client.set_tag(run_id, f"output.{key}", str(value)[:5000])
    client.set_terminated(run_id, "FINISHED")


def terminate_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark a run ``FINISHED`` / ``FAILED`` now (errors propagate; :func:`end_run` is the tolerant one)."""
    mlflow_client(tracking_uri).set_terminated(run_id, status)


__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_PER_BATCH",
    "MAX_PARAM_VALUE",
    "TAG_SPLIT",
    "Evaluation",
    "end_run",
    "ensure_experiment",
    "environment_info",
    "finish_stage_run",
    "flatten_params",
    "log_artifacts",
    "log_evaluation",
    "set_run_tag",
    "start_pipeline_run",
    "start_run",
    "start_stage_run",
    "terminate_run",
]
