"""Tiny real diffusers world models for the model tests (no mocks).

:func:`~v2w_core.models.testing.tiny_world_model` perturbs the parameters away from their initialisation:
diffusers zero-initialises the last conv of every ``TemporalConvLayer`` and we zero-initialise the action
head, and a zero layer hides exactly the cross-frame leaks and conditioning paths these tests look for.
"""

from __future__ import annotations

import pytest
import torch

from v2w_core.models.testing import TINY_ACTION_SPACE, TINY_PRESETS, tiny_world_model
from v2w_core.models.world_model import WorldModel

ACTION = TINY_ACTION_SPACE
FAMILIES = TINY_PRESETS


def make_model(family: str, seed: int = 0, action_space: dict | None = ACTION) -> WorldModel:
    return tiny_world_model(family, seed, action_space=action_space)  # type: ignore[arg-type]


def training_model(family: str, ckpt: bool | str = False) -> WorldModel:
    """A causalized tiny model in training mode with dropout off (two runs must give equal gradients) and
    activation checkpointing ``ckpt``."""
    from v2w_core.models.causalize import causalize

    model = make_model(family)
    causalize(model)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.enable_gradient_checkpointing(ckpt)  # type: ignore[arg-type]
    return model


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
