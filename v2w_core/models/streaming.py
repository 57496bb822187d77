"""Streaming state for autoregressive rollout with a causal world model.

Once the model is causal, a history frame's activations never depend on later frames. The rollout can
therefore run the history once per generated frame (:meth:`WorldModel.encode_history`, the "record" phase)
and then every denoising step on the newest frame alone (:meth:`WorldModel.step_newest`, the "replay"
phase).

Only the temporal layers look across frames, so only they need state, and they are all ours after
:func:`~v2w_core.models.causalize.causalize`:

* causal temporal convolutions cache the history's contribution to the newest frame: the past ``L-1``
  taps (``L`` = causal kernel length) applied to the last ``L-1`` frames of their *input* (zero-padded on
  the left when the history is shorter, exactly as the full forward pads), plus the bias;
* causal temporal self-attention caches its keys and values (after projection, per head);
* frame-position embeddings (SVD's ``time_pos_embed``) need the index of the newest frame, which is the
  history length.

Everything else (spatial convs, spatial/cross attention, per-frame GroupNorm, AlphaBlender) is per frame,
so running the newest frame alone is exact for it. See docs/streaming.md for what stays exact when the
rollout window slides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

#: What a forward does with the history cache: nothing (a full forward), fill it, read it, or read it and
#: write the cache extended by the forward's one frame (the incremental history mode).
StreamPhase = Literal["off", "record", "replay", "append"]
#: How the replay attention contracts the history (``attention_kernels.few_query_attention``): batched GEMMs,
#: a broadcast reduction that ``torch.compile`` fuses into one pass over K/V, or "auto" (the reduction
#: inside torch.compile, GEMMs otherwise; see that function for the measurements).
FewQueryKernel = Literal["auto", "gemm", "reduce"]
FEW_QUERY_KERNELS: tuple[str, ...] = ("auto", "gemm", "reduce")


@dataclass
class HistoryCache:
    """Per-layer state of one history, for batch ``batch_size`` and ``num_frames`` frames.

    ``entries`` maps a causal layer's module path to the tensors it recorded, batch-major in the first
    dimension: for temporal attention the per-head K and V, for causal convs the history's contribution
    to the newest frame's output. A newest-frame batch of ``n * batch_size`` (e.g. the conditional and
    unconditional guidance branches, ``torch.cat([x] * n)`` order) shares them without copies: convs
    broadcast over the n branches, attention treats them as n queries of one row against the shared
    history (``attention_kernels.few_query_attention``), so the cache is never tiled or extended.

    For CUDA graphs the cache's tensors must stay at fixed addresses across generated frames:
    :meth:`copy_` writes a new history of the same shapes into an existing cache in place.

    ``appendable`` caches (``encode_history(..., appendable=True)``) also keep each causal conv's last
    L-1 *inputs*, so :meth:`~v2w_core.models.world_model.WorldModel.append_history` can extend them by one
    frame without re-running the history (the incremental mode, docs/streaming.md).
    """

    batch_size: int
    num_frames: int
    entries: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    appendable: bool = False

    def put(self, key: str, *tensors: torch.Tensor) -> None:
        if key in self.entries:
            raise RuntimeError(
                f"layer {key!r} ran twice in one history forward; streaming needs each causal layer once"
            )
        self.entries[key] = tuple(t.detach() for t in tensors)

    def get(self, key: str) -> tuple[torch.Tensor, ...]:
        entry = self.entries.get(key)
        if entry is None:
            raise KeyError(
                f"history cache has no entry for layer {key!r}: it was made by a different model or before "
                "causalization"
            )
        return entry

    def signature(self) -> tuple[Any, ...]:
        """Shapes/dtypes/devices of everything cached: two caches with equal signatures are interchangeable."""
        return (
            self.batch_size,
            self.num_frames,
            self.appendable,
            tuple(
                (k, tuple((tuple(t.shape), t.dtype, t.device) for t in ts)) for k, ts in self.entries.items()
            ),
        )

    def copy_(self, other: HistoryCache) -> HistoryCache:
        """Overwrite this cache's tensors in place with ``other``'s (same signature); returns self."""
        if other.signature() != self.signature():
            raise ValueError("cannot copy a history cache of different shapes into this one")
        return self.write_rows_(other, 0)

    def write_rows_(self, part: HistoryCache, start: int) -> HistoryCache:
        """Write ``part`` (the cache of rollouts start .. start + part.batch_size) into this one in place.

        Lets a batch-chunked history encode fill a static cache chunk by chunk, so the memory peak is
        the static cache plus one chunk's cache, not two whole caches.
        """
        if part.num_frames != self.num_frames or part.entries.keys() != self.entries.keys():
            raise ValueError("cannot copy a history cache of different shapes into this one")
        if start < 0 or start + part.batch_size > self.batch_size:
            raise ValueError(f"rows {start}..{start + part.batch_size} outside batch {self.batch_size}")
        for key, ts in self.entries.items():
            for dst, src in zip(ts, part.entries[key], strict=True):
                per = dst.shape[0] // self.batch_size  # rows per rollout (H·W for attention entries)
                dst[start * per : (start + part.batch_size) * per] = src
        return self

    @classmethod
    def allocate_like(cls, part: HistoryCache, batch_size: int) -> HistoryCache:
        """An uninitialised cache for ``batch_size`` rollouts with ``part``'s layers and history length.

        Every cached tensor is batch-major in dim 0 (rows b·H·W + p for attention), so a large
        ``encode_history`` can run in batch chunks that :meth:`write_rows_` puts in place: the memory
        peak is the whole cache plus one chunk's, not two whole caches as with a concatenation.
        """
        out = cls(batch_size=batch_size, num_frames=part.num_frames, appendable=part.appendable)
        for key, ts in part.entries.items():
            out.entries[key] = tuple(
                t.new_empty((t.shape[0] // part.batch_size * batch_size, *t.shape[1:])) for t in ts
            )
        return out

    def clone(self) -> HistoryCache:
        """A copy with its own tensors (a carried cache that a runner's next write must not reach)."""
        return HistoryCache.allocate_like(self, self.batch_size).copy_(self)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self.entries.values() for t in ts)


class StreamState:
    """One per model, shared by all its causal layers: says whether a forward records or replays.

    A plain object rather than a module so it is not part of the state dict; deep copies of the model
    (EMA) keep one shared instance per copy because ``copy.deepcopy`` memoises shared references.
    """

    def __init__(self) -> None:
        self.phase: StreamPhase = "off"
        self.cache: HistoryCache | None = None
        # "append" phase: the cache being built (the old one extended by the forward's frame); its
        # num_frames is how many frames it keeps (the oldest beyond are dropped, as the window drops them).
        self.next_cache: HistoryCache | None = None
        # Newest-frame batch / history batch (guidance branches); the causal layers broadcast over it.
        self.repeats: int = 1
        self.few_query_kernel: FewQueryKernel = "auto"

    @property
    def frame_offset(self) -> int:
        """Index of the first frame of the current forward within the whole window."""
        if self.reads_history and self.cache is not None:
            return self.cache.num_frames
        return 0

    @property
    def reads_history(self) -> bool:
        """The forward runs newest frames against the cache ("replay", and "append", which also extends it)."""
        return self.phase in ("replay", "append")

    @property
    def keeps_inputs(self) -> bool:
        """Causal convs must record their last L-1 inputs too (an appendable cache is being recorded)."""
        return self.phase == "record" and self.cache is not None and self.cache.appendable

    def record(self, key: str, *tensors: torch.Tensor) -> None:
        """Store a layer's entry: into the cache being recorded, or (append) into the extended cache."""
        if self.phase == "record":
            assert self.cache is not None
            self.cache.put(key, *tensors)
        elif self.phase == "append":
            assert self.next_cache is not None
            self.next_cache.put(key, *tensors)

    def history(self, key: str) -> tuple[torch.Tensor, ...]:
        assert self.reads_history and self.cache is not None
        return self.cache.get(key)
