"""What every pipeline entry point shares (``full.py``, ``retrain.py``): the local stack's environment, joining
the Ray cluster with the workers' (secret-free) environment, and the pipeline's parent MLflow run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from v2w_core import storage
from v2w_core.data.clips import PROGRESS_ENV

#: What stage tasks need to reach storage and tracking: locations and switches, never a secret. Whatever
#: a Ray runtime env holds is shown in plain text by `ray job list`, the Jobs API and Ray's logs, so the
#: workers find credentials themselves: the node's own environment or credential chain (instance roles,
#: a mounted secret), or the file that ``V2W_CREDENTIALS_FILE`` names (the local stack's, mode 0600).
WORKER_ENV_VARS = (
    *storage.STORAGE_LOCATION_ENV_VARS,
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_DISABLE_TELEMETRY",
)


def worker_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in WORKER_ENV_VARS if os.environ.get(k)}
    env[PROGRESS_ENV] = "1" if sys.stdout.isatty() else "0"  # Ray Data progress bars only on a terminal
    return env


def use_stack_env(*, local_stack: bool) -> None:
    """Fill unset variables from the local stack (``--local-stack``); MLflow telemetry off either way."""
    if local_stack:
        from infra.stack import StackConfig, write_credentials

        stack = StackConfig.from_env()
        for key, value in stack.client_env().items():
            os.environ.setdefault(key, value)
        creds = Path(os.environ["V2W_CREDENTIALS_FILE"])
        if creds == stack.credentials_path and not creds.exists():
            write_credentials(stack)  # a stack started before the file existed: the workers need it
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # see infra/stack.py


def connect_ray(address: str | None) -> None:
    """Join the cluster. Under ``ray job submit`` the job's own runtime_env (working dir, env vars) applies
    and must not be replaced; run directly, the stage tasks get the storage/tracking locations
    (:func:`worker_env`, no secrets)."""
    import ray

    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        ray.init()
    else:
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": worker_env()})


def start_tracking(cfg: PipelineConfig) -> dict[str, Any] | None:
    """Create the parent MLflow run; stages nest their own runs under it (None: tracking is off)."""
    if not cfg.run.tracking:
        return None
    from v2w_core import tracking

    uri = os.environ["MLFLOW_TRACKING_URI"]  # checked by the preflight
    exp_id, run_id = tracking.start_pipeline_run(
        uri, cfg.run.experiment, run_name=f"pipeline:{cfg.run.name}", tags={"v2w.pipeline": cfg.run.name}
    )
    return {
        "tracking_uri": uri,
        "experiment_id": exp_id,
        "experiment_name": cfg.run.experiment,
        "parent_run_id": run_id,
    }


__all__ = ["WORKER_ENV_VARS", "connect_ray", "start_tracking", "use_stack_env", "worker_env"]
