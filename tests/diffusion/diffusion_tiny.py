"""Tiny real diffusers world models for the diffusion tests (no mocks)."""

from __future__ import annotations

import torch

from v2w_core.models.causalize import causalize
from v2w_core.models.world_model import WorldModel, WorldModelConfig

ACTION_DIM = 3
SIZE = 16


def tiny_config(action_dim: int | None = ACTION_DIM) -> WorldModelConfig:
    """A ~0.44 M-parameter UNet3D at 16×16: small enough for many forwards on 2 shared cores."""
    base = {
        "sample_size": SIZE,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownBlock3D", "CrossAttnDownBlock3D"],
        "up_block_types": ["CrossAttnUpBlock3D", "UpBlock3D"],
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 16,
        "attention_head_dim": 4,
    }
    space = None if action_dim is None else {"type": "continuous", "dim": action_dim}
    return WorldModelConfig(
        family="unet3d", base=base, data_channels=3, sample_size=(SIZE, SIZE), action_space=space
    )


def make_causal_model(seed: int = 0, action_dim: int | None = ACTION_DIM) -> WorldModel:
    """Causalized tiny model whose action encoder output is non-zero (it is zero-initialised), so that
    actions and guidance visibly change predictions."""
    torch.manual_seed(seed)
    model = WorldModel(tiny_config(action_dim))
    causalize(model, "extrapolative")
    if model.action_encoder is not None:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            last = model.action_encoder.mlp[-1]
            last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.5)
            last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.5)
            model.action_encoder.null_embedding.copy_(
                torch.randn(model.action_encoder.embed_dim, generator=g)
            )
    return model.eval()
