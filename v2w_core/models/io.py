"""Saving and loading world models and diffusers bases, local or ``s3://``, safetensors only.

A world model is stored as a diffusers-style directory::

    config.json                          WorldModelConfig (family, base config, causal mode, window,
                                         action space, ...) plus "_class_name": "WorldModel"
    diffusion_pytorch_model.safetensors  the state dict (causal conv weights already transferred)

Loading rebuilds the architecture from config.json (including causalization, so the saved causal mode is
reproduced) and then loads the tensors, so a round trip is bit-exact. Everything goes through
:mod:`v2w_core.storage`, so the same code reads local directories and object storage. No pickles.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from v2w_core import assets, storage
from v2w_core.models.actions import ActionSpec
from v2w_core.models.world_model import FAMILY_OF_CLASS, WorldModel, WorldModelConfig, build_base

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
CLASS_NAME = "WorldModel"
FORMAT_VERSION = 1


def _weights_name(variant: str | None, index: bool = False) -> str:
    name = INDEX_NAME if index else WEIGHTS_NAME
    if variant:
        stem, _, ext = name.partition(".safetensors")
        name = f"{stem}.{variant}.safetensors{ext}"
    return name


def save_world_model(model: WorldModel, uri: str) -> None:
    """Write ``model`` as a directory at ``uri`` (local path or s3://prefix)."""
    config = model.config.model_dump(mode="json")
    config["_class_name"] = CLASS_NAME
    config["_format_version"] = FORMAT_VERSION
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    storage.write_bytes(storage.join(uri, WEIGHTS_NAME), save_safetensors(state, metadata={"format": "pt"}))
    storage.write_bytes(storage.join(uri, CONFIG_NAME), json.dumps(config, indent=2, sort_keys=True).encode())
    logger.info("saved world model (%s, causal=%s) to %s", model.config.family, model.config.causal_mode, uri)


def read_world_model_config(uri: str) -> WorldModelConfig:
    raw = json.loads(storage.read_bytes(storage.join(uri, CONFIG_NAME)))
    if raw.pop("_class_name", None) != CLASS_NAME:
        raise ValueError(f"{uri} is not a saved WorldModel (config.json has no _class_name {CLASS_NAME!r})")
    version = raw.pop("_format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{uri} was written by a newer format version {version} (this code reads {FORMAT_VERSION})"
        )
    return WorldModelConfig.from_dict(raw, source=storage.join(uri, CONFIG_NAME))


def read_weights(uri: str, variant: str | None = None) -> dict[str, torch.Tensor]:
    """Read a single-file or sharded (index.json) safetensors state dict from a directory."""
    single = storage.join(uri, _weights_name(variant))
    if storage.exists(single):
        return load_safetensors(storage.read_bytes(single))
    index_uri = storage.join(uri, _weights_name(variant, index=True))
    if storage.exists(index_uri):
        index = json.loads(storage.read_bytes(index_uri))
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_safetensors(storage.read_bytes(storage.join(uri, shard))))
        return state
    raise FileNotFoundError(
        f"no {_weights_name(variant)} (or sharded index) under {uri}; only safetensors are read"
    )


def load_world_model(
    uri: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> WorldModel:
    """Rebuild a saved world model (architecture from config.json, then weights, strictly)."""
    config = read_world_model_config(uri)
    model = WorldModel(config)
    missing, unexpected = model.load_state_dict(read_weights(uri), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{uri}: state dict does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.to(device=device, dtype=dtype)
    logger.info("loaded world model (%s, causal=%s) from %s", config.family, config.causal_mode, uri)
    return model


def model_kind(uri: str) -> str:
    """``"world_model"`` or ``"diffusers_unet"`` for a local, ``s3://`` or ``asset://`` directory; raises
    FileNotFoundError / ValueError otherwise."""
    uri = assets.resolve(uri)
    raw = json.loads(storage.read_bytes(storage.join(uri, CONFIG_NAME)))
    name = raw.get("_class_name")
    if name == CLASS_NAME:
        return "world_model"
    if name in FAMILY_OF_CLASS:
        return "diffusers_unet"
    raise ValueError(f"{uri}: config.json _class_name {name!r} is neither a WorldModel nor a supported UNet")


def load_stored_model(uri: str, *, device: torch.device | str | None = None) -> WorldModel:
    """A world model from a local, ``s3://`` or ``asset://`` directory: a saved world model, or a plain
    diffusers UNet directory as a bidirectional one. MLflow URIs (``runs:/``, ``models:/``) go through
    :func:`v2w_core.tracking.load_model`, which downloads them and then calls this."""
    uri = assets.resolve(uri)
    if model_kind(uri) == "world_model":
        return load_world_model(uri, device=device)
    return load_base(uri, device=device)


def load_base(
    uri: str,
    *,
    data_channels: int | None = None,
    action_space: ActionSpec | Any | None = None,
    variant: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> WorldModel:
    """Load a plain diffusers UNet checkpoint (``from_pretrained`` layout) as a bidirectional world model.

    ``uri`` is the UNet directory itself (``.../unet``), holding ``config.json`` whose ``_class_name`` is
    ``UNet3DConditionModel`` or ``UNetSpatioTemporalConditionModel`` and safetensors weights (``variant``
    selects e.g. ``diffusion_pytorch_model.fp16.safetensors``). ``overrides`` go to WorldModelConfig.
    """
    raw = json.loads(storage.read_bytes(storage.join(uri, CONFIG_NAME)))
    class_name = raw.get("_class_name")
    family = FAMILY_OF_CLASS.get(class_name)
    if family is None:
        raise ValueError(
            f"{uri}: config.json _class_name {class_name!r} is not a supported base; expected one of "
            f"{sorted(FAMILY_OF_CLASS)}"
        )
    unet = build_base(family, raw)
    missing, unexpected = unet.load_state_dict(read_weights(uri, variant), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{uri}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    spec = None if action_space is None else ActionSpec.from_space(action_space)
    model = WorldModel.from_base(unet, data_channels=data_channels, action_space=spec, **overrides)
    model.to(device=device, dtype=dtype)
    logger.info("loaded %s base from %s", class_name, uri)
    return model
