"""Model URIs: where a model lives and the one loader that reads every kind (:func:`load_model`).

URIs understood everywhere a model is taken (training bases, eval rollouts, the registry):
  * a local directory or ``s3://`` prefix holding a saved world model (``config.json`` + safetensors) or a
    plain diffusers UNet directory (``UNet3DConditionModel`` / ``UNetSpatioTemporalConditionModel``,
    e.g. a downloaded ``.../unet``), which loads as a bidirectional world model;
  * ``asset://<name>`` — a model packaged with the code (:mod:`v2w_core.assets`);
  * ``runs:/<run_id>/<path>`` — e.g. ``runs:/<train run>/model``, where training logs its export;
  * ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` — a registered version (the pyfunc logged by
    :func:`v2w_core.tracking.register_world_model`, whose ``artifacts/world_model`` is the same
    safetensors directory).

The readers of the on-disk format are in :mod:`v2w_core.models.io` (:func:`~v2w_core.models.io.model_kind`
tells a saved world model from a diffusers UNet, :func:`~v2w_core.models.io.load_stored_model` reads either
from storage); :func:`load_model` resolves MLflow URIs and hands the directory to them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from v2w_core.tracking.client import tracking_uri_or_env


def is_mlflow_uri(uri: str) -> bool:
    """``runs:/``, ``models:/`` or ``mlflow-artifacts:/``: an artifact the tracking server holds."""
    return uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/"))


def find_world_model_dir(root: str | Path) -> Path:
    """The directory under ``root`` whose config.json is a saved WorldModel (root itself first)."""
    from v2w_core.models.io import CLASS_NAME, CONFIG_NAME

    root = Path(root)
    candidates = [root / CONFIG_NAME, *sorted(root.rglob(CONFIG_NAME))]
    for cfg in candidates:
        try:
            if cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == CLASS_NAME:
                return cfg.parent
        except (OSError, json.JSONDecodeError):
            continue
    raise FileNotFoundError(f"no saved WorldModel (config.json with _class_name {CLASS_NAME!r}) under {root}")


def resolve_model_dir(uri: str, *, tracking_uri: str | None = None, dst: str | Path | None = None) -> str:
    """A directory that :func:`v2w_core.models.load_world_model` can read: MLflow URIs are downloaded
    (to ``dst`` or a temp dir) and searched for the world-model directory; others are returned as is."""
    if not is_mlflow_uri(uri):
        return uri
    import mlflow.artifacts

    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="v2w-model-"))
    tracking_uri = tracking_uri_or_env(tracking_uri)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri, registry_uri=tracking_uri
    )
    return str(find_world_model_dir(local))


def load_model(uri: str, *, tracking_uri: str | None = None, device: Any = None) -> Any:
    """Load a world model from any URI of the module docstring (a diffusers UNet directory as a
    bidirectional world model). MLflow URIs are downloaded first (``tracking_uri`` defaults to
    ``MLFLOW_TRACKING_URI``); the rest is :func:`v2w_core.models.io.load_stored_model`."""
    from v2w_core.models import io as model_io

    if is_mlflow_uri(uri):
        return model_io.load_world_model(resolve_model_dir(uri, tracking_uri=tracking_uri), device=device)
    return model_io.load_stored_model(uri, device=device)


def local_copy(uri: str, dst: Path) -> Path:
    """Copy a world-model directory (local, s3:// or MLflow URI) to ``dst`` (for logging as artifacts)."""
    from v2w_core import storage

    if is_mlflow_uri(uri):
        shutil.copytree(resolve_model_dir(uri), dst)
        return dst
    if not storage.is_s3(uri):
        shutil.copytree(find_world_model_dir(uri), dst)
        return dst
    dst.mkdir(parents=True)
    base = uri.rstrip("/") + "/"
    for f in storage.list_files(base):
        rel = f[len(base) :]
        if "/" not in rel:  # the model directory is flat
            (dst / rel).write_bytes(storage.read_bytes(f))
    return dst


__all__ = [
    "find_world_model_dir",
    "is_mlflow_uri",
    "load_model",
    "local_copy",
    "resolve_model_dir",
]
