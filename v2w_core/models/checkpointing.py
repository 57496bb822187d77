"""Activation checkpointing of the base's blocks, or of the layers inside them.

Two granularities, one recompute (every activation is recomputed once in backward either way):

* ``"block"``: :class:`~v2w_core.models.world_model.WorldModel` checkpoints each UNet block it calls. Only
  block inputs are kept, but backward recomputes a whole block at once and holds all of its activations:
  at paper size (UNet3D, 16 frames of 40×64 latents) the full-resolution up block holds ≈ 8 GiB per clip,
  so batch 8 needed 89.6 GiB on an H200 (issue 18) and does not fit an 80 GB card.
* ``"layer"``: each layer inside a block (resnet, temporal conv, spatial and temporal transformer) is
  checkpointed on its own, so backward holds one layer's activations at a time, plus the layer inputs.
* ``"selective"``: per layer, but the outputs of the layers' matmuls, convolutions and attention are kept
  (``torch.utils.checkpoint``'s selective policy), so backward recomputes only the cheap ops between them
  (norms, activations, adds, layout copies): almost none of the FLOPs twice, for more memory than
  ``"layer"`` (measured against it on a GPU in bench/train_step.py, ``--grad-ckpt selective``).

diffusers' UNet3D blocks have a ``gradient_checkpointing`` flag they never read, and SVD's checkpoint only
their resnets, so the layers are wrapped here: each layer's instance ``forward`` is replaced by one that
runs the class's forward under ``torch.utils.checkpoint`` (non-reentrant, which Dynamo traces, so it works
inside :meth:`WorldModel.compile_blocks`' compiled blocks). Modules and parameter names are unchanged, so
checkpoints and exports are too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from v2w_core.config import CheckpointGranularity
from v2w_core.models.streaming import StreamState

#: The per-layer module lists of the diffusers blocks of both families (UNet3D: all four; SVD's
#: spatio-temporal blocks: resnets and attentions).
LAYER_LISTS = ("resnets", "temp_convs", "attentions", "temp_attentions")

_ORIGINAL = "_v2w_unwrapped_forward"


def granularity(setting: bool | str) -> CheckpointGranularity | None:
    """The config value (``false``, ``true`` = ``"block"``, ``"block"``, ``"layer"``, ``"selective"``)."""
    if setting is False:
        return None
    if setting is True:
        return "block"
    if setting in ("block", "layer", "selective"):
        return setting  # type: ignore[return-value]
    raise ValueError(
        f"gradient_checkpointing={setting!r}: use false, true (= block), 'block', 'layer' or 'selective'"
    )


def layers(blocks: list[nn.Module]) -> list[nn.Module]:
    """The layers ``"layer"`` checkpointing wraps: every module of the blocks' per-layer lists."""
    return [layer for block in blocks for name in LAYER_LISTS for layer in getattr(block, name, None) or ()]


def active(module: nn.Module, state: StreamState) -> bool:
    """Whether checkpointing applies now: training, with gradients, outside the streaming record/replay
    phases (rollouts run without gradients; a record phase must not run twice)."""
    return module.training and torch.is_grad_enabled() and state.phase == "off"


#: The ops whose outputs ``"selective"`` checkpointing keeps: the FLOPs (GEMMs, convolutions, attention).
_SAVED_OP_NAMES = (
    "mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)  # fmt: skip
SAVED_OPS = frozenset(
    op for name in _SAVED_OP_NAMES if (op := getattr(getattr(torch.ops.aten, name, None), "default", None))
)


def _keep_flops(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def wrap_layers(blocks: list[nn.Module], state: StreamState, selective: bool = False) -> None:
    """Checkpoint each layer of ``blocks`` whenever :func:`active` holds for it and the model's ``state``.

    The wrapper holds the layer's bound forward and the model's stream state, nothing else: a deep copy of
    the model gets wrappers of its own layers and state.
    """
    for layer in layers(blocks):
        if _ORIGINAL in layer.__dict__:
            continue
        forward = layer.forward  # the bound class method
        setattr(layer, _ORIGINAL, forward)
        wrapper = _selectively_checkpointed if selective else _maybe_checkpointed
        layer.forward = functools.partial(wrapper, forward, state)  # type: ignore[method-assign]


def unwrap_layers(blocks: list[nn.Module]) -> None:
    """Undo :func:`wrap_layers`: the layers' own forwards again."""
    for layer in layers(blocks):
        if _ORIGINAL in layer.__dict__:
            del layer.__dict__["forward"]
            del layer.__dict__[_ORIGINAL]


def _maybe_checkpointed(forward: Callable[..., Any], state: StreamState, *args: Any, **kwargs: Any) -> Any:
    if active(forward.__self__, state):  # type: ignore[attr-defined]
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def _selectively_checkpointed(
    forward: Callable[..., Any], state: StreamState, *args: Any, **kwargs: Any
) -> Any:
    if active(forward.__self__, state):  # type: ignore[attr-defined]
        context = functools.partial(create_selective_checkpoint_contexts, _keep_flops)
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context, **kwargs)
    return forward(*args, **kwargs)
