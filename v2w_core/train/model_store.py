"""Where training saves its exports: :func:`save_model` (a world-model directory, local or ``s3://``).

Loading goes through the one loader, :func:`v2w_core.tracking.load_model` (a saved world model or a plain
diffusers UNet directory, local, ``s3://``, ``asset://`` or MLflow). ``load_model`` and ``base_kind`` are
re-exported here for the callers that still import them from this module (tests/models/test_assets.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_model(model: Any, dest: str | Path) -> str:
    """Write ``model`` as a world-model directory (config.json + safetensors), local path or ``s3://``."""
    from v2w_core.models import io as model_io

    model_io.save_world_model(model, str(dest))
    return str(dest)


def __getattr__(name: str) -> Any:
    """``load_model`` / ``base_kind``: imported on first use (the tracking package imports MLflow)."""
    if name not in ("load_model", "base_kind"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from v2w_core.tracking import models

    return models.load_model if name == "load_model" else models.model_kind


__all__ = ["save_model"]  # and, lazily, load_model and base_kind (module __getattr__)
