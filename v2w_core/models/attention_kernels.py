"""GPU attention kernels of the causal temporal attention: how it is computed, not what it computes.

Nothing here changes a result; each function is an exact (up to float reassociation) reformulation of
softmax attention chosen for speed or for CUDA's limits, measured in bench/:

* :func:`few_query_attention`: the streaming replay's newest-frame query against a shared cached history
  (``StreamState.few_query_kernel`` picks GEMMs or a fused reduction);
* :func:`chunked_rows` / :class:`RowChunkedAttnProcessor`: attention over B·H·W per-pixel sequences in row
  chunks of at most :data:`MAX_ATTENTION_BATCH`, below the CUDA grid limit.

What the causal attention computes (lower-triangular mask, record/replay) is
:class:`~v2w_core.models.causal_layers.CausalTemporalAttnProcessor`.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from v2w_core.models.streaming import FewQueryKernel

# Temporal attention runs one sequence per pixel (B·H·W of them); CUDA attention kernels put that batch on
# a grid axis capped at 65535 and fail beyond it (DESIGN §3: batch 32 at 40×64 latents), so chunk it.
MAX_ATTENTION_BATCH = 32768


def few_query_attention(
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
    so they compute mostly padding (13.9 of a 33.8 ms step on an H100,
    bench/results/historical/rollout_profile_before_attention_fix.json).
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


def chunked_rows(fn: Any, *tensors: torch.Tensor, **kwargs: Any) -> torch.Tensor:
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

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if attention_mask is not None:  # a mask's rows need not line up with the hidden states' rows
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if encoder_hidden_states is None:
            return chunked_rows(lambda h: self.inner(attn, h, None, None, **kwargs), hidden_states)
        return chunked_rows(
            lambda h, e: self.inner(attn, h, e, None, **kwargs), hidden_states, encoder_hidden_states
        )
