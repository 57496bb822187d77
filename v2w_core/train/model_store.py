"""The one place where training touches the models' save/load functions (:mod:`v2w_core.models.io`).

Fine-tuning accepts either kind of base directory (local or ``s3://``): a saved world model (e.g. the
export of a pretraining run, ``_class_name`` "WorldModel") or a plain diffusers UNet directory
(``UNet3DConditionModel`` / ``UNetSpatioTemporalConditionModel``, e.g. a downloaded ``.../unet``), which
is wrapped as a bidirectional world model. Exports are always world-model directories.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from v2w_core import assets


def save_model(model: Any, dest: str | Path) -> str:
    """Write ``model`` as a world-model directory (config.json + safetensors), local path or ``s3://``."""
    from v2w_core.models import io as model_io

    model_io.save_world_model(model, str(dest))
    return str(dest)


def base_kind(uri: str) -> str:
    """``"world_model"`` or ``"diffusers_unet"``; raises FileNotFoundError / ValueError otherwise."""
    from v2w_core import storage
    from v2w_core.models import io as model_io
    from v2w_core.models.world_model import FAMILY_OF_CLASS

    uri = assets.resolve(uri)
    raw = json.loads(storage.read_bytes(storage.join(uri, model_io.CONFIG_NAME)))
    name = raw.get("_class_name")
    if name == model_io.CLASS_NAME:
        return "world_model"
    if name in FAMILY_OF_CLASS:
        return "diffusers_unet"
    raise ValueError(f"{uri}: config.json _class_name {name!r} is neither a WorldModel nor a supported UNet")


def load_model(uri: str) -> Any:
    """Load a base for fine-tuning: a world-model directory or a diffusers UNet directory, local,
    ``s3://`` or a packaged ``asset://<name>`` (:mod:`v2w_core.assets`)."""
    from v2w_core.models import io as model_io

    uri = assets.resolve(uri)
    if base_kind(uri) == "world_model":
        return model_io.load_world_model(uri)
    return model_io.load_base(uri)
