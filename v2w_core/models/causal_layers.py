"""The causal layers that replace a video UNet's cross-frame layers, and their streaming record/replay.

* :class:`CausalTemporalConv`: temporal conv with left padding only and transferred weights
  (:mod:`v2w_core.models.weight_transfer`); records the history's contribution to the newest frame.
* :class:`CausalTemporalAttnProcessor`: temporal self-attention with a lower-triangular mask; records the
  history's keys/values and replays the newest frame's query against them.
* :class:`FrameGroupNorm`: GroupNorm with per-frame statistics (diffusers' temporal blocks pool over frames).
* :class:`FramePositionProj`: SVD's frame-index embedding, offset by the history length when streaming.

All of them share the model's :class:`~v2w_core.models.streaming.StreamState`: its phase says whether a
forward is a full one ("off"), records a history ("record") or replays one ("replay") into the cache
(:class:`~v2w_core.models.streaming.HistoryCache`). Where each goes in a UNet is
:func:`v2w_core.models.causalize.causalize_unet`; how the replay attention is computed fast is
:mod:`v2w_core.models.attention_kernels`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

from v2w_core.config import CausalMode
from v2w_core.models.attention_kernels import chunked_rows, few_query_attention
from v2w_core.models.streaming import StreamState
from v2w_core.models.weight_transfer import causal_kernel_length, transfer_temporal_weight


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
        causal_mode: CausalMode,
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
        self.causal_mode = causal_mode
        self.source_kernel = source_kernel
        self.extrapolation_window = extrapolation_window

    @classmethod
    def from_conv(
        cls, conv: nn.Conv3d, causal_mode: CausalMode, window: int, stream: StreamState, stream_key: str
    ) -> CausalTemporalConv:
        """The causal counterpart of a centred temporal ``conv``, weights transferred by ``causal_mode``."""
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
            causal_kernel_length(k, causal_mode, window),
            bias=conv.bias is not None,
            stream=stream,
            stream_key=stream_key,
            causal_mode=causal_mode,
            source_kernel=k,
            extrapolation_window=window,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(transfer_temporal_weight(conv.weight, causal_mode, window))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        new.weight.requires_grad_(conv.weight.requires_grad)
        return new

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, causal={self.causal_mode}, source_kernel={self.source_kernel}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel_size[0] - 1
        if self.stream.reads_history:
            y = self._replay(x)
            if self.stream.phase == "append":
                self._append(x)
            return y
        x = F.pad(x, (0, 0, 0, 0, pad, 0))
        if self.stream.phase == "record":
            # What the newest frame needs from the history is fixed for all its denoising steps: the past
            # taps applied to the last L-1 inputs (plus the bias). Computing it once here leaves a 1×1 conv
            # of the newest frame per step, and nothing to concatenate. An appendable cache keeps the
            # inputs as well, to redo this term once a frame is appended.
            past = x[:, :, x.shape[2] - pad :]
            term = F.conv3d(past, self.weight[:, :, :pad], self.bias)
            self.stream.record(self.stream_key, term, *((past,) if self.stream.keeps_inputs else ()))
        return self._conv_forward(x, self.weight, self.bias)

    def _append(self, x: torch.Tensor) -> None:
        """Incremental mode: the appended frame's input joins the last L-1 inputs (the oldest leaves) and
        the history term is recomputed from them, as a record over the longer history would give."""
        _, inputs = self.stream.history(self.stream_key)  # appendable: append_history checked it
        past = torch.cat([inputs, x.to(inputs.dtype)], dim=2)[:, :, 1:]
        self.stream.record(self.stream_key, F.conv3d(past, self.weight[:, :, :-1], self.bias), past)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """Newest frame(s) (n·B, C, 1, H, W): last tap on the new input + the cached history term."""
        if x.shape[2] != 1:
            raise ValueError(f"{self.stream_key}: streaming replays one new frame, got {x.shape[2]}")
        hist = self.stream.history(self.stream_key)[0]
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


class CausalTemporalAttnProcessor:
    """diffusers attention processor for temporal self-attention with a causal (lower-triangular) mask.

    Input is (B·H·W, F, C): each spatial position attends over its own frames. In the streaming "record"
    phase the per-head keys/values are stored; in "replay" the newest frame's query attends to the cached
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

        if self.stream.reads_history:
            if q.shape[2] != 1:
                raise ValueError(f"{self.stream_key}: streaming replays one new frame, got {q.shape[2]}")
            # The n branches are n queries of the same row against one shared history (never tiled):
            # branch r sees the cached keys/values plus its own newest key/value only.
            n = self.stream.repeats
            k_hist, v_hist = self.stream.history(self.stream_key)
            q, k, v = (rearrange(t, "(r m) h 1 d -> m h r d", r=n) for t in (q, k, v))
            out = chunked_rows(
                few_query_attention,
                q,
                k_hist,
                v_hist,
                k,
                v,
                scale=attn.scale,
                kernel=self.stream.few_query_kernel,
            )
            out = rearrange(out, "m h r d -> (r m) h 1 d")
            if self.stream.phase == "append":  # one branch: the frame's K/V join the history's
                assert self.stream.next_cache is not None
                keep = self.stream.next_cache.num_frames
                k_all = torch.cat([k_hist, k.to(k_hist.dtype)], dim=2)[:, :, -keep:]
                v_all = torch.cat([v_hist, v.to(v_hist.dtype)], dim=2)[:, :, -keep:]
                self.stream.record(self.stream_key, k_all, v_all)
        else:
            self.stream.record(self.stream_key, k, v)
            out = chunked_rows(F.scaled_dot_product_attention, q, k, v, is_causal=True, scale=attn.scale)

        out = rearrange(out, "n h f d -> n f (h d)").to(q.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
