"""Fixtures for the diffusion tests: one thread, a shared tiny causal model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from diffusion_tiny import make_causal_model

from v2w_core.models.world_model import WorldModel


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The CI box has 2 shared cores; OpenMP spin-waiting under contention is 5-10x slower than 1 thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def causal_model() -> WorldModel:
    return make_causal_model()
