"""Distributed training: Ray Train + DeepSpeed ZeRO over Ray Data, checkpoints in object storage, MLflow.

``from v2w_core.train import train, TrainConfig`` is the public API. The package import is light on
purpose (no Ray, MLflow or DeepSpeed at import time) so that the single-process benchmark and the config
tooling can use :mod:`v2w_core.train.config` and :mod:`v2w_core.train.deepspeed_config` on a machine
with only torch, diffusers and deepspeed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from v2w_core.train.config import TrainConfig

if TYPE_CHECKING:
    from v2w_core.train.api import TrainResult

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from v2w_core.train import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
