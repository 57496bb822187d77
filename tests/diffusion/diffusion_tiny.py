"""Tiny real diffusers world models for the diffusion tests (no mocks)."""

from __future__ import annotations

from v2w_core.models.testing import tiny_world_model
from v2w_core.models.world_model import WorldModel

ACTION_DIM = 3
SIZE = 16


def make_causal_model(seed: int = 0, action_dim: int | None = ACTION_DIM) -> WorldModel:
    """The tiny preset (perturbed: its temporal convs matter), causalized, with an action head strong
    enough that actions and guidance visibly change predictions."""
    return make_model(seed, action_dim, causal=True)


def make_model(seed: int = 0, action_dim: int | None = ACTION_DIM, *, causal: bool = False) -> WorldModel:
    """The tiny preset at SIZE×SIZE; bidirectional unless ``causal``."""
    space = None if action_dim is None else {"type": "continuous", "dim": action_dim}
    return tiny_world_model(
        "unet3d",
        seed,
        action_space=space,
        causal_mode="extrapolative" if causal else None,
        action_head_std=None if action_dim is None else 0.5,
        sample_size=(SIZE, SIZE),
    )
