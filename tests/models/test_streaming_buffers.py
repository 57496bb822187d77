"""Static streaming buffers: in-place history refresh (CUDA graphs), batch-chunked encoding, no tiling."""

from __future__ import annotations

import pytest
import torch

from tests.models.conftest import clip, make_model
from v2w_core.models.causalize import causalize
from v2w_core.models.streaming import HistoryCache

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _guided_step(model, b: dict[str, torch.Tensor], cache: HistoryCache) -> torch.Tensor:
    """Both guidance branches (same newest frame, second without its action) in one batch."""
    mask = torch.ones(b["x"].shape[0], 1, dtype=torch.bool)
    return model.step_newest(
        torch.cat([b["x"][:, -1:]] * 2),
        torch.cat([b["timesteps"][:, -1:]] * 2),
        torch.cat([b["actions"][:, -1:]] * 2),
        torch.cat([mask, ~mask]),
        cache,
    )


def _full_last(model, b: dict[str, torch.Tensor]) -> torch.Tensor:
    frames = b["x"].shape[1]
    uncond = torch.ones(b["x"].shape[0], frames, dtype=torch.bool)
    uncond[:, -1] = False
    cond = model(b["x"], b["timesteps"], b["actions"])[:, -1:]
    return torch.cat([cond, model(b["x"], b["timesteps"], b["actions"], uncond)[:, -1:]])


def _encode(model, b: dict[str, torch.Tensor]) -> HistoryCache:
    return model.encode_history(b["x"][:, :-1], b["timesteps"][:, :-1], b["actions"][:, :-1])


@torch.no_grad()
def test_copy_into_used_cache_gives_the_new_history(family: str) -> None:
    """A static cache refreshed in place (what a captured CUDA graph reads) must serve the new history,
    at the same addresses."""
    model = causalize(make_model(family), "extrapolative")
    first, second = clip(batch=2, frames=4, seed=1), clip(batch=2, frames=4, seed=2)
    static = _encode(model, first)
    torch.testing.assert_close(_guided_step(model, first, static), _full_last(model, first), **TOL)
    ptrs = {k: [t.data_ptr() for t in ts] for k, ts in static.entries.items()}
    static.copy_(_encode(model, second))
    assert {k: [t.data_ptr() for t in ts] for k, ts in static.entries.items()} == ptrs
    torch.testing.assert_close(_guided_step(model, second, static), _full_last(model, second), **TOL)


@torch.no_grad()
def test_cache_is_shared_by_branches_not_tiled_or_extended() -> None:
    """Replaying both guidance branches reads the history as recorded: no per-branch copy, no K/V buffer
    with extra slots (which cost 2/15 of the temporal K/V, 8 GiB at batch 64 paper size)."""
    model = causalize(make_model("unet3d"))
    b = clip(batch=2, frames=4, seed=3)
    cache = _encode(model, b)
    before = {k: [(t.data_ptr(), tuple(t.shape)) for t in ts] for k, ts in cache.entries.items()}
    attention = [ts for ts in cache.entries.values() if len(ts) == 2]
    assert attention and all(k.shape[2] == 3 for k, _ in attention)  # 3 history frames, batch 2 rows
    _guided_step(model, b, cache)
    assert {k: [(t.data_ptr(), tuple(t.shape)) for t in ts] for k, ts in cache.entries.items()} == before


@torch.no_grad()
def test_batch_chunked_encoding_joins_to_the_whole_batch(family: str) -> None:
    model = causalize(make_model(family))
    b = clip(batch=3, frames=4, seed=4)
    parts = [
        (rows.start, _encode(model, {k: v[rows] for k, v in b.items()}))
        for rows in (slice(0, 2), slice(2, 3))
    ]
    joined = HistoryCache.allocate_like(parts[0][1], 3)
    for start, part in parts:
        joined.write_rows_(part, start)
    assert joined.batch_size == 3 and joined.signature() == _encode(model, b).signature()
    torch.testing.assert_close(_guided_step(model, b, joined), _full_last(model, b), **TOL)


def test_copy_refuses_other_shapes() -> None:
    model = causalize(make_model("unet3d"))
    with torch.no_grad():
        short = _encode(model, clip(frames=3))
        long = _encode(model, clip(frames=4))
    with pytest.raises(ValueError, match="different shapes"):
        short.copy_(long)


@torch.no_grad()
def test_chunks_written_into_a_static_cache() -> None:
    """The fast path refreshes its static cache chunk by chunk (write_rows_) after steps have read it."""
    model = causalize(make_model("unet3d"))
    first, second = clip(batch=3, frames=4, seed=5), clip(batch=3, frames=4, seed=6)
    static = _encode(model, first)
    _guided_step(model, first, static)
    for rows in (slice(0, 2), slice(2, 3)):
        static.write_rows_(_encode(model, {k: v[rows] for k, v in second.items()}), rows.start)
    torch.testing.assert_close(_guided_step(model, second, static), _full_last(model, second), **TOL)
