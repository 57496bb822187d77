"""Tiny world models with weights that exercise every path, for tests and benchmarks.

A freshly constructed model hides exactly what the causal core's tests look for:

* diffusers zero-initialises the last conv (``conv4``) of every UNet3D ``TemporalConvLayer``, so each such
  layer is the identity: its causal temporal convs, their weight transfer and their streaming cache
  cannot change any output, and a rollout test of that family passes whatever they do;
* our action encoder's output layer starts at zero, so actions and guidance change nothing.

:func:`tiny_world_model` builds a tiny preset (:mod:`v2w_core.models.presets`, the embedded default's
architecture) and adds small Gaussian noise to every parameter, which makes all of these paths matter;
optionally it gives the action head stronger (or zero) weights and causalizes the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from v2w_core.config import CausalMode
from v2w_core.models.actions import ActionSpec
from v2w_core.models.causalize import causalize
from v2w_core.models.presets import tiny_svd, tiny_unet3d
from v2w_core.models.world_model import Family, WorldModel, WorldModelConfig

#: The tiny preset of each family.
TINY_PRESETS: dict[str, Callable[..., WorldModelConfig]] = {"unet3d": tiny_unet3d, "svd": tiny_svd}
#: The action space :func:`tiny_world_model` uses unless told otherwise.
TINY_ACTION_SPACE: dict[str, Any] = {"type": "continuous", "dim": 4}


def perturb_(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Add N(0, std²) noise to every parameter of ``model`` in place (generator seeded by ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def tiny_world_model(
    family: Family = "unet3d",
    seed: int = 0,
    *,
    action_space: ActionSpec | dict[str, Any] | None = TINY_ACTION_SPACE,
    causal_mode: CausalMode | None = None,
    weight_std: float = 0.05,
    action_head_std: float | None = None,
    **overrides: Any,
) -> WorldModel:
    """A tiny world model of ``family`` in eval mode, reproducible from ``seed``.

    1. ``torch.manual_seed(seed)``, then the family's tiny preset with ``action_space`` (None: no action
       encoder, a bidirectional base) and ``overrides`` (:class:`WorldModelConfig` fields, e.g.
       ``sample_size``);
    2. every parameter += N(0, ``weight_std``²) (:func:`perturb_`; 0 keeps the diffusers initialisation);
    3. ``action_head_std`` (optional): the action encoder's output layer re-drawn from
       N(0, ``action_head_std``²), for tests where actions must steer visibly; 0 makes it zero, a model
       that ignores its actions;
    4. ``causal_mode`` (optional): :func:`~v2w_core.models.causalize.causalize` with that mode, so the
       causal kernels are the transfer of perturbed (non-zero) bidirectional ones.
    """
    if family not in TINY_PRESETS:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(TINY_PRESETS)}")
    config = TINY_PRESETS[family](action_space)
    if overrides:
        config = WorldModelConfig.model_validate({**config.model_dump(), **overrides})
    torch.manual_seed(seed)
    model = WorldModel(config)
    if weight_std:
        perturb_(model, seed, weight_std)
    if action_head_std is not None:
        if model.action_encoder is None:
            raise ValueError("action_head_std needs an action space")
        head = model.action_encoder.mlp[-1]
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * action_head_std)
            head.bias.copy_(torch.randn(head.bias.shape, generator=g) * action_head_std)
    if causal_mode is not None:
        causalize(model, causal_mode)
    return model.eval()


def tiny_vae(seed: int = 0) -> Any:
    """A small diffusers ``AutoencoderKL`` (×4 down, 4 latent channels, scaling 0.5) for 64×64 frames,
    reproducible from ``seed``: the VAE of latent-space tests and CPU benches (``save_pretrained`` it to get
    the directory layout a user's VAE has)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
                         latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=64,
                         scaling_factor=0.5)  # fmt: skip
