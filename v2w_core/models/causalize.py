"""Causalization of a pretrained bidirectional video UNet (Vid2World §1.1).

A causal model's output at frame t must not change when frames > t change. In the diffusers video UNets
exactly three kinds of layer look across frames, and each gets a causal replacement that keeps the
pretrained weights:

* temporal self-attention -> :class:`CausalTemporalAttnProcessor` (lower-triangular mask), installed
  with diffusers' ``Attention.set_processor`` so the attention modules and their weights stay diffusers';
* temporal convolutions (``Conv3d`` with kernel ``(k, 1, 1)``) -> :class:`CausalTemporalConv`, left padding
  only, with the weights transferred by one of three rules (shift | masked | extrapolative);
* GroupNorm applied to 5-D ``(B, C, F, H, W)`` tensors inside ``TemporalConvLayer``,
  ``TransformerTemporalModel`` and SVD's ``TemporalResnetBlock``: diffusers normalises over *all* frames
  there, so the statistics of frame t would include the future. :class:`FrameGroupNorm` keeps the same
  affine weights but takes statistics per frame.

Other cross-frame ops, checked module by module: SVD's ``AlphaBlender`` mixes per frame (fine); SVD's
frame-position embedding (``TransformerSpatioTemporalModel.time_pos_embed`` of ``arange(F)``) uses
absolute indices from 0, so it is causal, and is wrapped in :class:`FramePositionProj` only so that
streaming can give the newest frame its true index; SVD's ``time_context`` takes frame 0's
cross-attention context for every frame, which is harmless because the world model feeds the same null
context to every frame. ``BasicTransformerBlock`` positional embeddings are not used by either family and
are rejected if present.

Where things are: the weight-transfer math is :mod:`v2w_core.models.weight_transfer`, the causal layers
(and their streaming record/replay) :mod:`v2w_core.models.causal_layers`, the GPU attention kernels
:mod:`v2w_core.models.attention_kernels`. This module is the surgery that puts the layers into a UNet.
"""

from __future__ import annotations

import logging
from typing import Any

from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import TemporalConvLayer, TemporalResnetBlock
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
    TransformerTemporalModel,
)
from torch import nn

from v2w_core.config import CAUSAL_MODES, CausalMode
from v2w_core.models.attention_kernels import (
    MAX_ATTENTION_BATCH,
    RowChunkedAttnProcessor,
    chunked_rows,
    few_query_attention,
)
from v2w_core.models.causal_layers import (
    CausalTemporalAttnProcessor,
    CausalTemporalConv,
    FrameGroupNorm,
    FramePositionProj,
)
from v2w_core.models.streaming import StreamState
from v2w_core.models.weight_transfer import (
    causal_kernel_length,
    check_causal_mode,
    extrapolation_coefficients,
    transfer_temporal_weight,
)

logger = logging.getLogger(__name__)

# Names that lived here before the causal core was split into weight_transfer / causal_layers /
# attention_kernels, re-exported for callers that import them from this module. (Monkeypatching
# MAX_ATTENTION_BATCH or few_query_attention here has no effect: patch them in their own modules.)
check_mode = check_causal_mode
_few_query_attention = few_query_attention
_chunked_rows = chunked_rows

__all__ = [
    "CAUSAL_MODES",
    "MAX_ATTENTION_BATCH",
    "CausalMode",
    "CausalTemporalAttnProcessor",
    "CausalTemporalConv",
    "FrameGroupNorm",
    "FramePositionProj",
    "RowChunkedAttnProcessor",
    "causal_kernel_length",
    "causalize",
    "causalize_unet",
    "check_causal_mode",
    "check_mode",
    "extrapolation_coefficients",
    "transfer_temporal_weight",
]

# Modules whose GroupNorms see 5-D (B, C, F, H, W) tensors, i.e. normalise across frames.
_FRAME_MIXING_NORM_PARENTS = (TemporalConvLayer, TransformerTemporalModel, TemporalResnetBlock)


# --------------------------------------------------------------------------------------------------
# Model surgery
# --------------------------------------------------------------------------------------------------


def _temporal_self_attentions(block: nn.Module) -> list[Attention]:
    found = [block.attn1]
    attn2 = getattr(block, "attn2", None)
    if attn2 is not None and not attn2.is_cross_attention:
        found.append(attn2)
    return found


def causalize_unet(
    unet: nn.Module, stream: StreamState, causal_mode: CausalMode, extrapolation_window: int = 2
) -> dict[str, int]:
    """Module surgery on a diffusers video UNet in place; returns counts of what was replaced.

    Used by :func:`causalize` and when a saved causal model is rebuilt from its config.
    """
    check_causal_mode(causal_mode)
    if extrapolation_window < 1:
        raise ValueError(f"extrapolation_window must be >= 1, got {extrapolation_window}")
    counts = {"temporal_convs": 0, "frame_norms": 0, "temporal_attentions": 0, "frame_positions": 0}

    def causal_attention(block: nn.Module, path: str) -> None:
        for attn_name in ("attn1", "attn2"):
            attn = getattr(block, attn_name, None)
            if attn is not None and attn in _temporal_self_attentions(block):
                attn.set_processor(CausalTemporalAttnProcessor(stream, f"{path}.{attn_name}"))
                counts["temporal_attentions"] += 1
            elif attn is not None and not isinstance(attn.processor, RowChunkedAttnProcessor):
                attn.set_processor(RowChunkedAttnProcessor(attn.processor))  # per-pixel cross-attention

    def visit(module: nn.Module, prefix: str, in_temporal: bool) -> None:
        for name, child in list(module.named_children()):
            path = f"{prefix}{name}"
            already_causal = isinstance(child, CausalTemporalConv | FrameGroupNorm | FramePositionProj)
            if already_causal:
                raise RuntimeError(f"{path} is already causal; causalize a bidirectional model only once")
            if isinstance(child, nn.Conv3d):
                if child.kernel_size[0] > 1:
                    new = CausalTemporalConv.from_conv(child, causal_mode, extrapolation_window, stream, path)
                    module.add_module(name, new)
                    counts["temporal_convs"] += 1
                elif child.kernel_size[1:] != (1, 1):
                    raise NotImplementedError(f"{path}: spatial Conv3d kernels are not supported")
            elif type(child) is nn.GroupNorm and in_temporal:
                module.add_module(name, FrameGroupNorm.from_group_norm(child))
                counts["frame_norms"] += 1
            elif isinstance(child, TransformerSpatioTemporalModel):
                # Spatial blocks and the 4-D GroupNorm stay; temporal blocks get the causal processor.
                child.time_proj = FramePositionProj(child.time_proj, stream)
                counts["frame_positions"] += 1
                for i, block in enumerate(child.temporal_transformer_blocks):
                    causal_attention(block, f"{path}.temporal_transformer_blocks.{i}")
            else:
                if in_temporal and isinstance(child, BasicTransformerBlock | TemporalBasicTransformerBlock):
                    if getattr(child, "pos_embed", None) is not None:
                        raise NotImplementedError(f"{path}: temporal positional embeddings are not supported")
                    causal_attention(child, path)
                visit(child, f"{path}.", in_temporal or isinstance(child, _FRAME_MIXING_NORM_PARENTS))

    visit(unet, "", False)
    if counts["temporal_convs"] == 0 and counts["temporal_attentions"] == 0:
        raise ValueError(f"{type(unet).__name__} has no temporal layers to causalize")
    logger.info(
        "causalized %s (%s, window %d): %s", type(unet).__name__, causal_mode, extrapolation_window, counts
    )
    return counts


def causalize(model: Any, mode: CausalMode = "extrapolative", extrapolation_window: int = 2) -> Any:
    """Make a bidirectional :class:`~v2w_core.models.world_model.WorldModel` causal, in place.

    Temporal attention gets a causal mask, temporal convs become :class:`CausalTemporalConv` with weights
    transferred by the causal ``mode`` (shift | masked | extrapolative, :mod:`~v2w_core.models.weight_transfer`;
    extrapolative fits a line through the last ``extrapolation_window`` frames), and cross-frame
    GroupNorms become per-frame. Spatial layers are not touched. The model's config records the mode
    (``causal_mode``) so save/load rebuilds the same structure. Returns ``model`` for chaining.
    """
    check_causal_mode(mode)
    if model.config.causal_mode != "none":
        raise RuntimeError(
            f"model is already causal ({model.config.causal_mode}); causalize a bidirectional model"
        )
    causalize_unet(model.unet, model.stream_state, mode, extrapolation_window)
    model._set_causal(mode, extrapolation_window)
    return model
