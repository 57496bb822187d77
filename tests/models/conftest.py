"""Tiny real diffusers world models for the model tests (no mocks).

Parameters are perturbed away from their initialisation: diffusers zero-initialises the last conv of
every ``TemporalConvLayer`` and we zero-initialise the action head, and a zero layer hides exactly the
cross-frame leaks and conditioning paths these tests look for.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from v2w_core.models.presets import tiny_svd, tiny_unet3d
from v2w_core.models.world_model import WorldModel, WorldModelConfig

ACTION = {"type": "continuous", "dim": 4}
FAMILIES: dict[str, Callable[..., WorldModelConfig]] = {"unet3d": tiny_unet3d, "svd": tiny_svd}


def perturb_(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def make_model(family: str, seed: int = 0, action_space: dict | None = ACTION) -> WorldModel:
    torch.manual_seed(seed)
    model = WorldModel(FAMILIES[family](action_space))
    return perturb_(model, seed).eval()


def clip(batch: int = 1, frames: int = 5, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, frames, 3, size, size, generator=g),
        "timesteps": torch.randint(0, 1000, (batch, frames), generator=g),
        "actions": torch.randn(batch, frames, ACTION["dim"], generator=g),
    }


@pytest.fixture(params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param
