"""Model size presets.

The tiny ones are the embedded default: pixel space, 3 channels, 64×64, small enough to train on a CPU
in minutes. The wrapper folds 4×4 pixel patches into channels (``patch_size=4``: 3×64×64 -> 48×16×16,
per frame, so causality is unaffected), which plays the role a VAE plays at paper scale: at full pixel
resolution a forward+backward of a (2, 16, 3, 64, 64) clip costs ≈230 GFLOP, with patches ≈28 GFLOP.
Spatial attention only runs at 8×8.

Every preset keeps full rank from the folded pixels inward (:func:`input_rank_problem`): ``conv_in``
is at least as wide as the C·p² folded channels and ``conv_out`` reads from at least as many. The first
wave's tiny preset folded 48 channels into 32: a third of every frame was invisible to the network, its
noise was never removed, and the demo model generated noise.

The paper-size ones mirror the public checkpoints' configs (ModelScope text-to-video 1.7B's UNet, ≈1.41 B
parameters, on 4×40×64 latents; Stable Video Diffusion's UNet, ≈1.5 B) so a downloaded checkpoint fits
them; they are config functions only and are never instantiated in tests.
"""

from __future__ import annotations

from typing import Any

from v2w_core.models.actions import ActionSpec
from v2w_core.models.world_model import WorldModelConfig


def _spec(action_space: ActionSpec | dict[str, Any] | None) -> ActionSpec | None:
    return None if action_space is None else ActionSpec.from_space(action_space)


def tiny_unet3d(
    action_space: ActionSpec | dict[str, Any] | None = None, **overrides: Any
) -> WorldModelConfig:
    """ModelScope-family UNet3D, ≈2.3 M parameters, for 3×64×64 pixel clips (4×4 patches → 48 channels).

    Widths [64, 64]: the narrowest full-rank choice (≥ 48) and, measured on a 2-core CPU, ≈1 s per step
    of two 16-frame clips per worker; [32, 64] plateaued at 13 dB, [64, 64] kept improving."""
    base = {
        "sample_size": 16,
        "in_channels": 3 * 4 * 4,
        "out_channels": 3 * 4 * 4,
        "down_block_types": ["DownBlock3D", "CrossAttnDownBlock3D"],
        "up_block_types": ["CrossAttnUpBlock3D", "UpBlock3D"],
        "block_out_channels": [64, 64],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
    }
    return WorldModelConfig(
        family="unet3d",
        base=base,
        data_channels=3,
        patch_size=4,
        sample_size=(64, 64),
        action_space=_spec(action_space),
        **overrides,
    )


def tiny_unet3d_latent(
    action_space: ActionSpec | dict[str, Any] | None = None, **overrides: Any
) -> WorldModelConfig:
    """:func:`tiny_unet3d` for 4×16×16 VAE latents (a 64×64 clip through a ×4 VAE): the latent pipeline's
    small-scale check; paper scale uses :func:`modelscope_unet3d` on a ×8 VAE."""
    base = {**tiny_unet3d().base, "in_channels": 4, "out_channels": 4}
    return WorldModelConfig(family="unet3d", base=base, data_channels=4, patch_size=1, sample_size=(16, 16),
                            action_space=_spec(action_space), **overrides)


def tiny_svd(action_space: ActionSpec | dict[str, Any] | None = None, **overrides: Any) -> WorldModelConfig:
    """Stable-Video-Diffusion-family UNet, small, for 3×64×64 pixel clips (SVD's GroupNorms need 32·k channels)."""
    base = {
        "sample_size": 16,
        "in_channels": 3 * 4 * 4,
        "out_channels": 3 * 4 * 4,
        "down_block_types": ["DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"],
        "up_block_types": ["CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"],
        "block_out_channels": [64, 64],
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 24,
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "transformer_layers_per_block": 1,
        "num_attention_heads": [2, 4],
        "num_frames": 16,
    }
    return WorldModelConfig(
        family="svd",
        base=base,
        data_channels=3,
        patch_size=4,
        sample_size=(64, 64),
        action_space=_spec(action_space),
        **overrides,
    )


def modelscope_unet3d(
    action_space: ActionSpec | dict[str, Any] | None = None, **overrides: Any
) -> WorldModelConfig:
    """ModelScope text-to-video (damo-vilab/text-to-video-ms-1.7b) UNet: 4×40×64 latents, ≈1.41 B parameters."""
    base = {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": [
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ],
        "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 1024,
        "attention_head_dim": 64,
        "act_fn": "silu",
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
    }
    overrides.setdefault("context_tokens", 77)
    return WorldModelConfig(
        family="unet3d",
        base=base,
        data_channels=4,
        sample_size=(40, 64),
        action_space=_spec(action_space),
        **overrides,
    )


def svd_unet(action_space: ActionSpec | dict[str, Any] | None = None, **overrides: Any) -> WorldModelConfig:
    """Stable Video Diffusion (img2vid) UNet: 4 latent + 4 conditioning channels, ≈1.5 B parameters."""
    base = {
        "sample_size": 96,
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": [
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ],
        "up_block_types": [
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ],
        "block_out_channels": [320, 640, 1280, 1280],
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 768,
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "transformer_layers_per_block": 1,
        "num_attention_heads": [5, 10, 20, 20],
        "num_frames": 14,
    }
    return WorldModelConfig(
        family="svd",
        base=base,
        data_channels=4,
        sample_size=(40, 64),
        action_space=_spec(action_space),
        **overrides,
    )


def input_rank_problem(config: WorldModelConfig) -> str | None:
    """Why the preset loses rank between the folded pixels and the network, or None when it does not.

    ``conv_in`` maps C·p² data channels to ``block_out_channels[0]``; ``conv_out`` maps those back. A
    narrower first block discards part of every frame (its noise is never denoised under v-prediction)
    and cannot produce part of the output."""
    folded = config.data_channels * config.patch_size**2
    width = config.base["block_out_channels"][0]
    if width < folded:
        return (
            f"block_out_channels[0] = {width} < {config.data_channels} channels × patch {config.patch_size}² = "
            f"{folded}: conv_in/conv_out lose rank (part of every frame is invisible); widen the first "
            f"block to ≥ {folded} or lower patch_size"
        )
    return None


PRESETS = {
    "tiny_unet3d_latent": tiny_unet3d_latent,
    "tiny_unet3d": tiny_unet3d,
    "tiny_svd": tiny_svd,
    "modelscope_unet3d": modelscope_unet3d,
    "svd_unet": svd_unet,
}
