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
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import TemporalConvLayer, TemporalResnetBlock
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
    TransformerTemporalModel,
)
from einops import rearrange
from torch import nn

from v2w_core.models.streaming import FewQueryKernel, StreamState

logger = logging.getLogger(__name__)

CausalMode = Literal["shift", "masked", "extrapolative"]
CAUSAL_MODES: tuple[str, ...] = ("shift", "masked", "extrapolative")

# Temporal attention runs one sequence per pixel (B·H·W of them); CUDA attention kernels put that batch on
# a grid axis capped at 65535 and fail beyond it (DESIGN §3: batch 32 at 40×64 latents), so chunk it.
MAX_ATTENTION_BATCH = 32768

# Modules whose GroupNorms see 5-D (B, C, F, H, W) tensors, i.e. normalise across frames.
_FRAME_MIXING_NORM_PARENTS = (TemporalConvLayer, TransformerTemporalModel, TemporalResnetBlock)


def check_mode(mode: str) -> None:
    if mode not in CAUSAL_MODES:
        raise ValueError(f"unknown causal mode {mode!r}; expected one of {', '.join(CAUSAL_MODES)}")


# --------------------------------------------------------------------------------------------------
# Weight transfer
# --------------------------------------------------------------------------------------------------


def extrapolation_coefficients(num_future: int, window: int) -> torch.Tensor:
    """γ[i-1, j] = weight of past frame τ_j in the least-squares linear extrapolation of x_{t+i}.

    Past offsets τ_j = -window+1, ..., 0 (column j in that order), future offsets i = 1..num_future:
    γ_{i,j} = 1/p + (i - μ)(τ_j - μ) / S with μ = mean(τ), S = Σ (τ_j - μ)². A window of 1 has no slope
    to fit, so it extrapolates by holding the last frame (γ = 1). Float64, shape (num_future, window).
    """
    if window < 1:
        raise ValueError(f"extrapolation_window must be >= 1, got {window}")
    tau = torch.arange(-window + 1, 1, dtype=torch.float64)
    future = torch.arange(1, num_future + 1, dtype=torch.float64)
    if window == 1:
        return torch.ones(num_future, 1, dtype=torch.float64)
    mu = tau.mean()
    s = ((tau - mu) ** 2).sum()
    return 1.0 / window + (future[:, None] - mu) * (tau[None, :] - mu) / s


def causal_kernel_length(kernel: int, mode: str, window: int) -> int:
    """Length L of the causal kernel (taps t-L+1 .. t): k, or p when the extrapolation window is longer."""
    check_mode(mode)
    return max(kernel, window) if mode == "extrapolative" else kernel


def transfer_temporal_weight(weight: torch.Tensor, mode: str, window: int = 2) -> torch.Tensor:
    """Turn a centred temporal kernel (..., k, ...) on dim 2 into a causal one of length L.

    ``weight`` is a Conv3d weight (out, in, k, kh, kw) whose tap a multiplies x_{t+a-m}, m = (k-1)//2.
    The result's tap a multiplies x_{t+a-(L-1)}.

    * shift: the same taps on the window ending at t: [w₋ₘ..wₘ] on [t-2m..t];
    * masked: future taps dropped: w'_j = w_j for j <= 0;
    * extrapolative: each future x_{t+i} replaced by its linear extrapolation from the last p frames and
      folded onto those taps: w'_j = w_j·1[j <= 0] + Σ_i γ_{i,j} w_i.
    """
    check_mode(mode)
    k = weight.shape[2]
    if k % 2 != 1:
        raise ValueError(f"temporal kernel size must be odd to have a centre tap, got {k}")
    m = (k - 1) // 2
    length = causal_kernel_length(k, mode, window)
    w = weight.detach().to(torch.float64)
    out = torch.zeros((*w.shape[:2], length, *w.shape[3:]), dtype=torch.float64, device=w.device)

    def tap(offset: int) -> int:  # index in the causal kernel of input offset (<= 0) from t
        return offset + length - 1

    if mode == "shift":
        out[:, :, length - k :] = w
    else:
        for j in range(-m, 1):
            out[:, :, tap(j)] += w[:, :, j + m]
        if mode == "extrapolative" and m > 0:
            gamma = extrapolation_coefficients(m, window)
            for i in range(1, m + 1):
                for col, tau in enumerate(range(-window + 1, 1)):
                    out[:, :, tap(tau)] += gamma[i - 1, col] * w[:, :, i + m]
    return out.to(weight.dtype)


# --------------------------------------------------------------------------------------------------
# Causal layers
# --------------------------------------------------------------------------------------------------


class CausalTemporalConv(nn.Conv3d):
    """Temporal Conv3d (kernel (L, 1, 1)) with left padding only: frame t sees frames t-L+1..t.

    A subclass of ``nn.Conv3d`` so the state-dict keys (``weight``, ``bias``) stay those of the conv it
    replaces. In streaming it records the history's contribution to the newest frame (the past L-1 taps
    applied to the last L-1 inputs, plus bias) and replays it: one (1, 1, 1) conv of the new frame per step.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        length: int,
        *,
        bias: bool,
        stream: StreamState,
        stream_key: str,
        mode: str,
        source_kernel: int,
        extrapolation_window: int,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, (length, 1, 1), padding=0, bias=bias, device=device, dtype=dtype
        )
        self.stream = stream
        self.stream_key = stream_key
        self.mode = mode
        self.source_kernel = source_kernel
        self.extrapolation_window = extrapolation_window

    @classmethod
    def from_conv(
        cls, conv: nn.Conv3d, mode: str, window: int, stream: StreamState, stream_key: str
    ) -> CausalTemporalConv:
        k, kh, kw = conv.kernel_size
        if (kh, kw) != (1, 1) or conv.stride != (1, 1, 1) or conv.dilation != (1, 1, 1) or conv.groups != 1:
            raise NotImplementedError(
                f"{stream_key}: only temporal convs with kernel (k, 1, 1), stride 1, dilation 1, groups 1 can "
                f"be causalized, got kernel {conv.kernel_size}, stride {conv.stride}"
            )
        if conv.padding != ((k - 1) // 2, 0, 0) or conv.padding_mode != "zeros":
            raise NotImplementedError(f"{stream_key}: expected centred zero padding, got {conv.padding}")
        new = cls(
            conv.in_channels,
            conv.out_channels,
            causal_kernel_length(k, mode, window),
            bias=conv.bias is not None,
            stream=stream,
            stream_key=stream_key,
            mode=mode,
            source_kernel=k,
            extrapolation_window=window,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(transfer_temporal_weight(conv.weight, mode, window))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        new.weight.requires_grad_(conv.weight.requires_grad)
        return new

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, causal={self.mode}, source_kernel={self.source_kernel}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel_size[0] - 1
        if self.stream.mode == "replay":
            return self._replay(x)
        x = F.pad(x, (0, 0, 0, 0, pad, 0))
        if self.stream.mode == "record":
            # What the newest frame needs from the history is fixed for all its denoising steps: the past
            # taps applied to the last L-1 inputs (plus the bias). Computing it once here leaves a 1×1 conv
            # of the newest frame per step, and nothing to concatenate.
            past = x[:, :, x.shape[2] - pad :]
            self.stream.record(self.stream_key, F.conv3d(past, self.weight[:, :, :pad], self.bias))
        return self._conv_forward(x, self.weight, self.bias)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """Newest frame(s) (n·B, C, 1, H, W): last tap on the new input + the cached history term."""
        if x.shape[2] != 1:
            raise ValueError(f"{self.stream_key}: streaming replays one new frame, got {x.shape[2]}")
        (hist,) = self.stream.history(self.stream_key)
        n = self.stream.repeats
        y = F.conv3d(x, self.weight[:, :, -1:])
        # Row i·B + b continues history row b: broadcast over the n branches instead of tiling copies.
        y = y.unflatten(0, (n, -1)) + hist.to(y.dtype)
        return y.flatten(0, 1)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are per frame on 5-D (B, C, F, H, W) input; identical on 4-D input.

    Same parameters (and state-dict keys) as the GroupNorm it replaces. Per-frame statistics are what
    make the temporal blocks causal *and* streamable: frame t's normalisation depends on frame t alone.
    """

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm) -> FrameGroupNorm:
        new = cls(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine, device="meta")
        if norm.affine:
            new.weight = norm.weight
            new.bias = norm.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        frames = x.shape[2]
        y = super().forward(rearrange(x, "b c f h w -> (b f) c h w"))
        return rearrange(y, "(b f) c h w -> b c f h w", f=frames)


class FramePositionProj(nn.Module):
    """Wraps SVD's frame-index sinusoidal projection to add the streaming frame offset.

    In a full forward frame indices are ``arange(F)``; when the newest frame runs alone its index must
    be the history length, not 0. Holds no parameters, so the state dict is unchanged.
    """

    def __init__(self, inner: nn.Module, stream: StreamState) -> None:
        super().__init__()
        self.inner = inner
        self.stream = stream

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.inner(positions + self.stream.frame_offset)


def _few_query_attention(
    q: torch.Tensor,
    k_hist: torch.Tensor,
    v_hist: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    *,
    scale: float,
    kernel: FewQueryKernel = "auto",
) -> torch.Tensor:
    """Branch r's newest-frame query over the shared history plus its own newest key.

    Shapes: ``q``, ``k_new``, ``v_new`` (N, heads, n, d) with one slot per guidance branch; ``k_hist``,
    ``v_hist`` (N, heads, F_h, d), shared by the n branches. Streaming replay asks this for each of
    B·H·W sequences with n = 2 and F_h ≈ 15. Fused attention kernels tile the query axis by 64–128 rows,
    so they compute mostly padding (13.9 of a 33.8 ms step on an H100, bench/results/rollout_profile_before_attention_fix.json).
    Here the history is read once for all branches and never copied (no (F_h + n)-slot K/V buffer; at
    batch 64 that buffer alone was 8 GiB); the own-key score is an elementwise product; softmax in fp32.
    ``kernel`` (the model's ``StreamState.few_query_kernel``) picks how the history is contracted: two
    batched GEMMs of tiny (n × F_h × d) matrices, or broadcast products summed in fp32, which inductor
    fuses into a memory-bound reduction over K/V instead of tens of thousands of tiny GEMM tiles. "auto"
    takes the reduction inside torch.compile only: eagerly it would materialise the products. Measured on
    an H200 (paper-size UNet3D, one guided step as a CUDA graph, bench/results/rollout_profile.json):
    compiled 11.74 ms (gemm) vs 10.38 ms (reduce); not compiled 21.5 ms (gemm) vs 27.4 ms (reduce).
    """
    own = (q * k_new).sum(-1, keepdim=True, dtype=torch.float32) * scale  # (N, h, n, 1)
    if kernel == "reduce" or (kernel == "auto" and torch.compiler.is_compiling()):
        hist = (q.float().unsqueeze(-2) * k_hist.unsqueeze(-3)).sum(-1) * scale  # (N, h, n, F_h)
        probs = torch.cat([hist, own], dim=-1).softmax(-1)
        out = (probs[..., :-1].unsqueeze(-1) * v_hist.unsqueeze(-3)).sum(-2) + probs[..., -1:] * v_new
        return out.to(v_hist.dtype)
    hist = torch.matmul(q, k_hist.transpose(-1, -2)).float() * scale
    probs = torch.cat([hist, own], dim=-1).softmax(-1).to(v_hist.dtype)
    return torch.matmul(probs[..., :-1], v_hist) + probs[..., -1:] * v_new


def _chunked_rows(fn: Any, *tensors: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``fn(*tensors)`` on row chunks of at most MAX_ATTENTION_BATCH (every tensor shares dim 0)."""
    n, step = tensors[0].shape[0], MAX_ATTENTION_BATCH
    if n <= step:
        return fn(*tensors, **kwargs)
    return torch.cat([fn(*(t[i : i + step] for t in tensors), **kwargs) for i in range(0, n, step)])


class RowChunkedAttnProcessor:
    """Wraps a diffusers processor to run its (N, L, C) rows in chunks of at most MAX_ATTENTION_BATCH.

    SVD's temporal blocks also cross-attend per pixel (B·H·W rows against the image embedding); with 32
    rollouts at 40×64 latents that is 81,920 rows and the fused kernel fails with "CUDA error: invalid
    argument" (measured on an H100, bench/rollout_gpu.py). Every op of such a processor is row-wise.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        if attention_mask is not None:  # a mask's rows need not line up with the hidden states' rows
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if encoder_hidden_states is None:
            return _chunked_rows(lambda h: self.inner(attn, h, None, None, **kwargs), hidden_states)
        return _chunked_rows(
            lambda h, e: self.inner(attn, h, e, None, **kwargs), hidden_states, encoder_hidden_states
        )


class CausalTemporalAttnProcessor:
    """diffusers attention processor for temporal self-attention with a causal (lower-triangular) mask.

    Input is (B·H·W, F, C): each spatial position attends over its own frames. In streaming "record" mode
    the per-head keys/values are stored; in "replay" mode the newest frame's query attends to the cached
    history keys/values plus its own, which is the last row of the causal attention.
    """

    def __init__(self, stream: StreamState, stream_key: str) -> None:
        self.stream = stream
        self.stream_key = stream_key

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError(
                f"{self.stream_key}: the causal temporal processor handles self-attention without masks only"
            )
        if hidden_states.ndim != 3:
            raise ValueError(
                f"{self.stream_key}: expected (B*H*W, F, C) hidden states, got {hidden_states.shape}"
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        q = rearrange(attn.to_q(hidden_states), "n f (h d) -> n h f d", h=attn.heads)
        k = rearrange(attn.to_k(hidden_states), "n f (h d) -> n h f d", h=attn.heads)
        v = rearrange(attn.to_v(hidden_states), "n f (h d) -> n h f d", h=attn.heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        if self.stream.mode == "replay":
            if q.shape[2] != 1:
                raise ValueError(f"{self.stream_key}: streaming replays one new frame, got {q.shape[2]}")
            # The n branches are n queries of the same row against one shared history (never tiled):
            # branch r sees the cached keys/values plus its own newest key/value only.
            n = self.stream.repeats
            k_hist, v_hist = self.stream.history(self.stream_key)
            q, k, v = (rearrange(t, "(r m) h 1 d -> m h r d", r=n) for t in (q, k, v))
            out = _chunked_rows(
                _few_query_attention, q, k_hist, v_hist, k, v, scale=attn.scale, kernel=self.stream.few_query_kernel
            )
            out = rearrange(out, "m h r d -> (r m) h 1 d")
        else:
            self.stream.record(self.stream_key, k, v)
            out = _chunked_rows(F.scaled_dot_product_attention, q, k, v, is_causal=True, scale=attn.scale)

        out = rearrange(out, "n h f d -> n f (h d)").to(q.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


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
    unet: nn.Module, stream: StreamState, mode: str, extrapolation_window: int = 2
) -> dict[str, int]:
    """Module surgery on a diffusers video UNet in place; returns counts of what was replaced.

    Used by :func:`causalize` and when a saved causal model is rebuilt from its config.
    """
    check_mode(mode)
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
                    new = CausalTemporalConv.from_conv(child, mode, extrapolation_window, stream, path)
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
    logger.info("causalized %s (%s, window %d): %s", type(unet).__name__, mode, extrapolation_window, counts)
    return counts


def causalize(model: Any, mode: str = "extrapolative", extrapolation_window: int = 2) -> Any:
    """Make a bidirectional :class:`~v2w_core.models.world_model.WorldModel` causal, in place.

    Temporal attention gets a causal mask, temporal convs become :class:`CausalTemporalConv` with weights
    transferred by ``mode`` (shift | masked | extrapolative; extrapolative fits a line through the last
    ``extrapolation_window`` frames), and cross-frame GroupNorms become per-frame. Spatial layers are not
    touched. The model's config records the mode so save/load rebuilds the same structure. Returns
    ``model`` for chaining.
    """
    check_mode(mode)
    if model.config.causal_mode != "none":
        raise RuntimeError(
            f"model is already causal ({model.config.causal_mode}); causalize a bidirectional model"
        )
    causalize_unet(model.unet, model.stream_state, mode, extrapolation_window)
    model._set_causal(mode, extrapolation_window)
    return model
