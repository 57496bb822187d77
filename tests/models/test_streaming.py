"""Streaming rollout cache: encode the history once, then run only the newest frame (DESIGN §1.4)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.models.conftest import clip, make_model
from v2w_core.models import attention_kernels, causal_layers
from v2w_core.models.causalize import CausalTemporalAttnProcessor, causalize
from v2w_core.models.streaming import HistoryCache


@pytest.mark.parametrize("kernel", ["gemm", "reduce"])
@pytest.mark.parametrize("history", [1, 4])
@torch.no_grad()
def test_step_newest_equals_full_forward_with_two_branches(
    family: str, history: int, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = causalize(make_model(family), "extrapolative")
    model.stream_state.few_query_kernel = kernel  # both replay-attention formulations
    used: set[str] = set()
    real = causal_layers.few_query_attention

    def spy(*args, kernel, **kwargs):  # type: ignore[no-untyped-def]
        used.add(kernel)
        return real(*args, kernel=kernel, **kwargs)

    monkeypatch.setattr(causal_layers, "few_query_attention", spy)
    batch_size, frames = 2, history + 1
    b = clip(batch=batch_size, frames=frames, seed=3)
    mask = torch.ones(batch_size, frames, dtype=torch.bool)
    mask[:, 0] = False
    uncond = mask.clone()
    uncond[:, -1] = False  # guidance: drop only the newest frame's action

    cache = model.encode_history(b["x"][:, :-1], b["timesteps"][:, :-1], b["actions"][:, :-1], mask[:, :-1])
    assert cache.num_frames == history and cache.batch_size == batch_size and cache.nbytes() > 0

    n = 2
    new = model.step_newest(
        torch.cat([b["x"][:, -1:]] * n),
        torch.cat([b["timesteps"][:, -1:]] * n),
        torch.cat([b["actions"][:, -1:]] * n),
        torch.cat([mask[:, -1:], uncond[:, -1:]]),
        cache,
    )
    assert new.shape == (n * batch_size, 1, 3, 16, 16)
    full_cond = model(b["x"], b["timesteps"], b["actions"], mask)[:, -1:]
    full_uncond = model(b["x"], b["timesteps"], b["actions"], uncond)[:, -1:]
    torch.testing.assert_close(new[:batch_size], full_cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new[batch_size:], full_uncond, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full_cond, full_uncond, atol=1e-4)  # the branches really differ
    assert used == {kernel}  # the model's setting reached every temporal attention

    # the same cache serves every denoising step: a different noise level for the newest frame
    t2 = (b["timesteps"][:, -1:] + 300) % 1000
    again = model.step_newest(b["x"][:, -1:], t2, b["actions"][:, -1:], mask[:, -1:], cache)
    t_full = b["timesteps"].clone()
    t_full[:, -1:] = t2
    torch.testing.assert_close(again, model(b["x"], t_full, b["actions"], mask)[:, -1:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_history_rows_are_not_mixed_up() -> None:
    """Tiling must pair newest row i·B + b with history row b, not with another sample's history."""
    model = causalize(make_model("unet3d"), "masked")
    b = clip(batch=2, frames=4, seed=5)
    cache = model.encode_history(b["x"][:, :-1], b["timesteps"][:, :-1], b["actions"][:, :-1])
    swapped = model.step_newest(
        b["x"][[1, 0], -1:], b["timesteps"][[1, 0], -1:], b["actions"][[1, 0], -1:], None, cache
    )
    full = model(b["x"], b["timesteps"], b["actions"])[:, -1:]
    assert not torch.allclose(swapped[[1, 0]], full, atol=1e-4)


def test_streaming_needs_a_causal_model() -> None:
    model = make_model("unet3d")
    b = clip()
    with pytest.raises(RuntimeError, match="causal model"):
        model.encode_history(b["x"], b["timesteps"], b["actions"])
    with pytest.raises(RuntimeError, match="causal model"):
        model.step_newest(b["x"][:, -1:], b["timesteps"][:, -1:], None, None, HistoryCache(1, 4))


def test_step_newest_bad_inputs() -> None:
    model = causalize(make_model("unet3d"))
    b = clip(batch=2)
    cache = model.encode_history(b["x"][:, :-1], b["timesteps"][:, :-1])
    with pytest.raises(ValueError, match="one new frame"):
        model.step_newest(b["x"][:, -2:], b["timesteps"][:, -2:], None, None, cache)
    with pytest.raises(ValueError, match="not a multiple"):
        model.step_newest(b["x"][:1, -1:], b["timesteps"][:1, -1:], None, None, cache)
    with pytest.raises(TypeError, match="HistoryCache"):
        model.step_newest(b["x"][:, -1:], b["timesteps"][:, -1:], None, None, {})
    other = causalize(make_model("svd"))
    with pytest.raises(KeyError, match="no entry"):
        other.step_newest(b["x"][:, -1:], b["timesteps"][:, -1:], None, None, cache)
    # a failed streaming call leaves the model usable for full forwards
    assert other.stream_state.phase == "off"


@torch.no_grad()
def test_deepcopy_streams_on_its_own_state() -> None:
    """EMA copies must keep one shared stream state per copy, wired to the copy's own layers."""
    model = causalize(make_model("svd"))
    twin = copy.deepcopy(model)
    assert twin.stream_state is not model.stream_state
    procs = [p for p in twin.unet.attn_processors.values() if isinstance(p, CausalTemporalAttnProcessor)]
    assert procs and all(p.stream is twin.stream_state for p in procs)
    b = clip(frames=4)
    cache = twin.encode_history(b["x"][:, :-1], b["timesteps"][:, :-1], b["actions"][:, :-1])
    new = twin.step_newest(b["x"][:, -1:], b["timesteps"][:, -1:], b["actions"][:, -1:], None, cache)
    torch.testing.assert_close(new, model(**b)[:, -1:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_attention_is_chunked_over_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    model = causalize(make_model("unet3d"))
    b = clip(batch=2, frames=4)
    full = model(**b)
    cache = model.encode_history(b["x"][:, :-1], b["timesteps"][:, :-1], b["actions"][:, :-1])
    monkeypatch.setattr(attention_kernels, "MAX_ATTENTION_BATCH", 5)
    torch.testing.assert_close(model(**b), full, rtol=1e-5, atol=1e-6)
    new = model.step_newest(b["x"][:, -1:], b["timesteps"][:, -1:], b["actions"][:, -1:], None, cache)
    torch.testing.assert_close(new, full[:, -1:], rtol=1e-5, atol=1e-5)
