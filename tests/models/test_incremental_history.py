"""Incremental history cache (issue 19): extend the streaming cache by one frame instead of re-encoding.

Exact while the history still fits (== encode_history over the longer history); once frames are dropped,
it is the unbounded causal history truncated to the newest frames, which the tests state precisely.
"""

from __future__ import annotations

import pytest
import torch

from tests.models.conftest import clip, make_model
from v2w_core.models.causalize import causalize
from v2w_core.models.world_model import WorldModel

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _appended(model: WorldModel, b: dict, start: int, stop: int, max_frames: int):  # type: ignore[no-untyped-def]
    """encode frames [0, start), then append start … stop-1 one by one."""
    x, t, a = b["x"], b["timesteps"], b["actions"]
    cache = model.encode_history(x[:, :start], t[:, :start], a[:, :start], appendable=True)
    for i in range(start, stop):
        cache = model.append_history(
            cache, x[:, i : i + 1], t[:, i : i + 1], a[:, i : i + 1], None, max_frames=max_frames
        )
    return cache


def _assert_caches_close(got, want) -> None:  # type: ignore[no-untyped-def]
    assert got.entries.keys() == want.entries.keys() and got.num_frames == want.num_frames
    for key in want.entries:
        for g, w in zip(got.entries[key], want.entries[key], strict=True):
            torch.testing.assert_close(g, w, **TOL, msg=lambda m, key=key: f"{key}: {m}")


@torch.no_grad()
def test_append_equals_encode_while_the_history_fits(family: str) -> None:
    """Both families (SVD's frame-position embedding included): appending frames 2, 3, 4 to a 2-frame cache
    gives the cache of encoding all 5, and the newest frame's step reads it the same."""
    model = causalize(make_model(family), "extrapolative")
    b = clip(batch=2, frames=6, seed=11)
    grown = _appended(model, b, 2, 5, max_frames=15)
    encoded = model.encode_history(b["x"][:, :5], b["timesteps"][:, :5], b["actions"][:, :5], appendable=True)
    _assert_caches_close(grown, encoded)
    new = (b["x"][:, 5:], b["timesteps"][:, 5:], b["actions"][:, 5:], None)
    torch.testing.assert_close(model.step_newest(*new, grown), model(b["x"], b["timesteps"], b["actions"])[:, 5:], **TOL)


def _banded_causal_sdpa(width: int, real):  # type: ignore[no-untyped-def]
    """scaled_dot_product_attention whose causal calls (the temporal layers') see only the last ``width``
    frames: frame i attends to frames i-width+1 … i (sliding-window attention)."""

    def sdpa(q, k, v, *args, is_causal=False, **kwargs):  # type: ignore[no-untyped-def]
        if not is_causal:
            return real(q, k, v, *args, **kwargs)
        i = torch.arange(q.shape[-2])
        band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < width)
        return real(q, k, v, *args, attn_mask=band, **kwargs)

    return sdpa


@torch.no_grad()
def test_after_the_window_slides_it_is_sliding_window_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the mode computes once frames are dropped, exactly: with ``max_frames`` M, every frame attends to
    itself and the M frames before it, *as they were computed when they entered* — a full forward over the
    whole sequence with a banded (sliding-window) causal mask of width M + 1 (UNet3D: no frame positions).
    A re-encode of the last M frames alone differs: its oldest frame no longer sees its predecessors."""
    model = causalize(make_model("unet3d"), "extrapolative")
    b = clip(batch=1, frames=8, seed=4)
    kept = _appended(model, b, 2, 7, max_frames=3)  # frames 0-1 encoded, 2-6 appended: 4-6 kept
    assert kept.num_frames == 3
    fresh = model.encode_history(b["x"][:, 4:7], b["timesteps"][:, 4:7], b["actions"][:, 4:7], appendable=True)
    assert fresh.signature() == kept.signature()  # same shapes: the step graphs of a full window serve both
    new = (b["x"][:, 7:8], b["timesteps"][:, 7:8], b["actions"][:, 7:8], None)
    incremental, recomputed = model.step_newest(*new, kept), model.step_newest(*new, fresh)
    assert not torch.allclose(incremental, recomputed, atol=1e-4)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        _banded_causal_sdpa(4, torch.nn.functional.scaled_dot_product_attention))  # fmt: skip
    banded = model(b["x"], b["timesteps"], b["actions"])[:, 7:8]
    torch.testing.assert_close(incremental, banded, **TOL)


@torch.no_grad()
def test_append_refuses_a_plain_cache_and_bad_frames() -> None:
    model = causalize(make_model("unet3d"), "extrapolative")
    b = clip(batch=2, frames=3, seed=1)
    plain = model.encode_history(b["x"][:, :2], b["timesteps"][:, :2], b["actions"][:, :2])
    one = (b["x"][:, 2:], b["timesteps"][:, 2:], b["actions"][:, 2:], None)
    with pytest.raises(ValueError, match="appendable=True"):
        model.append_history(plain, *one, max_frames=15)
    cache = model.encode_history(b["x"][:, :2], b["timesteps"][:, :2], b["actions"][:, :2], appendable=True)
    with pytest.raises(ValueError, match=r"\(B, 1, C, H, W\) with B = 2"):
        model.append_history(cache, b["x"][:1, 2:], b["timesteps"][:1, 2:], None, None, max_frames=15)
    with pytest.raises(ValueError, match="max_frames"):
        model.append_history(cache, *one, max_frames=0)
    with pytest.raises(RuntimeError, match="causal"):
        make_model("unet3d").append_history(cache, *one, max_frames=15)
    assert cache.num_frames == 2 and model.stream_state.phase == "off"  # failures leave nothing behind
