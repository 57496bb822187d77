"""World model: diffusers video UNets with per-frame timesteps and actions, causalization, streaming.

* :class:`WorldModel` / :class:`WorldModelConfig` (world_model.py) — our top-level forward over the
  diffusers blocks; presets in presets.py.
* :func:`causalize` (causalize.py) — puts the causal layers into a UNet: causal temporal attention /
  convs / per-frame norms (causal_layers.py), convs carrying the paper's weight transfer
  (weight_transfer.py; the causal modes are :data:`~v2w_core.config.CausalMode`), replay attention
  computed by attention_kernels.py.
* :func:`align_actions`, :func:`sample_action_keep_mask`, :class:`ActionSpec` (actions.py).
* :class:`HistoryCache` (streaming.py) — what ``encode_history`` returns and ``step_newest`` consumes.
* :func:`save_world_model`, :func:`load_world_model`, :func:`load_base` (io.py) — safetensors, local or s3.
"""

from v2w_core.models.actions import ActionEncoder, ActionSpec, align_actions, sample_action_keep_mask
from v2w_core.models.causal_layers import CausalTemporalAttnProcessor, CausalTemporalConv, FrameGroupNorm
from v2w_core.models.causalize import causalize
from v2w_core.models.io import load_base, load_world_model, save_world_model
from v2w_core.models.presets import PRESETS, modelscope_unet3d, svd_unet, tiny_svd, tiny_unet3d
from v2w_core.models.streaming import HistoryCache
from v2w_core.models.weight_transfer import CAUSAL_MODES, extrapolation_coefficients, transfer_temporal_weight
from v2w_core.models.world_model import WorldModel, WorldModelConfig

__all__ = [
    "CAUSAL_MODES",
    "PRESETS",
    "ActionEncoder",
    "ActionSpec",
    "CausalTemporalAttnProcessor",
    "CausalTemporalConv",
    "FrameGroupNorm",
    "HistoryCache",
    "WorldModel",
    "WorldModelConfig",
    "align_actions",
    "causalize",
    "extrapolation_coefficients",
    "load_base",
    "load_world_model",
    "modelscope_unet3d",
    "sample_action_keep_mask",
    "save_world_model",
    "svd_unet",
    "tiny_svd",
    "tiny_unet3d",
    "transfer_temporal_weight",
]
