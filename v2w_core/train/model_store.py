"""The one place where training touches the models' save/load functions (world-model safetensors dirs).

Training exports its final weights (and loads a base for fine-tuning) through these two functions so
that the on-disk format is owned by :mod:`v2w_core.models`. Until the models package ships its writer,
a minimal compatible one is used here (``config.json`` = the WorldModelConfig, ``model.safetensors``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _models_io() -> Any | None:
    try:
        from v2w_core.models import io as model_io  # type: ignore[attr-defined]
    except ImportError:
        return None
    return model_io


def save_model(model: Any, dest_dir: str | Path) -> Path:
    """Write ``model`` as a world-model directory (config.json + safetensors) at a local path."""
    io = _models_io()
    if io is not None:
        io.save_world_model(model, dest_dir)
        return Path(dest_dir)
    from safetensors.torch import save_file

    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / CONFIG_NAME).write_text(json.dumps(model.config.model_dump(mode="json"), indent=1))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(dest / WEIGHTS_NAME))
    return dest


def load_model(uri: str) -> Any:
    """Load a world model from a directory, local or ``s3://``."""
    io = _models_io()
    if io is not None:
        return io.load_world_model(uri)
    from safetensors.torch import load_file

    from v2w_core import storage
    from v2w_core.models.world_model import WorldModel, WorldModelConfig

    config = WorldModelConfig.model_validate(json.loads(storage.read_bytes(storage.join(uri, CONFIG_NAME))))
    model = WorldModel(config)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / WEIGHTS_NAME
        local.write_bytes(storage.read_bytes(storage.join(uri, WEIGHTS_NAME)))
        model.load_state_dict(load_file(str(local)), strict=True)
    return model
