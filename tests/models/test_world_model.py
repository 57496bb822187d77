"""Whole-model behaviour: causality in every mode and family, per-frame conditioning, clear errors."""

from __future__ import annotations

from typing import Self

import pytest
import torch
from diffusers.models.resnet import TemporalConvLayer

from tests.models.conftest import clip, make_model, training_model
from v2w_core.config import CAUSAL_MODES
from v2w_core.models import checkpointing, world_model
from v2w_core.models.causalize import (
    CausalTemporalAttnProcessor,
    CausalTemporalConv,
    FrameGroupNorm,
    causalize,
)
from v2w_core.models.world_model import WorldModel

CUT = 2  # frames 0..CUT are "past"


def _future_changed(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same clip with every frame > CUT changed: pixels, actions and timesteps."""
    other = {k: v.clone() for k, v in batch.items()}
    g = torch.Generator().manual_seed(99)
    other["x"][:, CUT + 1 :] = torch.randn(other["x"][:, CUT + 1 :].shape, generator=g)
    other["actions"][:, CUT + 1 :] = torch.randn(other["actions"][:, CUT + 1 :].shape, generator=g)
    other["timesteps"][:, CUT + 1 :] = (other["timesteps"][:, CUT + 1 :] + 500) % 1000
    return other


@torch.no_grad()
def test_bidirectional_model_is_not_causal(family: str) -> None:
    model = make_model(family)
    batch = clip()
    a, b = model(**batch), model(**_future_changed(batch))
    assert not torch.allclose(a[:, : CUT + 1], b[:, : CUT + 1], atol=1e-4)


@pytest.mark.parametrize("mode", CAUSAL_MODES)
@torch.no_grad()
def test_causal_model_ignores_the_future(family: str, mode: str) -> None:
    model = causalize(make_model(family), mode)
    batch = clip()
    a, b = model(**batch), model(**_future_changed(batch))
    torch.testing.assert_close(a[:, : CUT + 1], b[:, : CUT + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, CUT + 1 :], b[:, CUT + 1 :], atol=1e-4)
    assert model.config.causal_mode == mode


def test_causalize_replaces_every_temporal_layer(family: str) -> None:
    model = causalize(make_model(family), "extrapolative")
    unet = model.unet
    assert not any(type(m) is torch.nn.Conv3d and m.kernel_size[0] > 1 for m in unet.modules())
    convs = [m for m in unet.modules() if isinstance(m, CausalTemporalConv)]
    assert convs and all(c.kernel_size == (3, 1, 1) and c.padding == (0, 0, 0) for c in convs)
    procs = [p for p in unet.attn_processors.values() if isinstance(p, CausalTemporalAttnProcessor)]
    assert procs
    assert any(isinstance(m, FrameGroupNorm) for m in unet.modules())
    if family == "unet3d":  # every norm inside a TemporalConvLayer is per-frame now
        for layer in (m for m in unet.modules() if isinstance(m, TemporalConvLayer)):
            assert all(type(m) is not torch.nn.GroupNorm for m in layer.modules())
    with pytest.raises(RuntimeError, match="already causal"):
        causalize(model, "masked")


@torch.no_grad()
def test_causalize_keeps_state_dict_layout_and_spatial_weights(family: str) -> None:
    model = make_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    causalize(model, "masked")
    after = model.state_dict()
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("weight") for k in changed)
    convs = {n for n, m in model.named_modules() if isinstance(m, CausalTemporalConv)}
    assert {k.rsplit(".", 1)[0] for k in changed} <= convs


@pytest.mark.parametrize("causal", [False, True])
@torch.no_grad()
def test_timestep_reaches_its_own_frame(family: str, causal: bool) -> None:
    model = make_model(family)
    if causal:
        causalize(model)
    batch = clip()
    j = 2
    other = dict(batch, timesteps=batch["timesteps"].clone())
    other["timesteps"][:, j] = (other["timesteps"][:, j] + 400) % 1000
    a, b = model(**batch), model(**other)
    assert not torch.allclose(a[:, j], b[:, j], atol=1e-4)
    if causal:
        torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@torch.no_grad()
def test_action_reaches_its_own_frame(family: str, causal: bool) -> None:
    model = make_model(family)
    if causal:
        causalize(model)
    batch = clip()
    j = 2
    other = dict(batch, actions=batch["actions"].clone())
    other["actions"][:, j] += 1.0
    a, b = model(**batch), model(**other)
    assert not torch.allclose(a[:, j], b[:, j], atol=1e-4)
    if causal:
        torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=1e-6)


@torch.no_grad()
def test_action_mask_selects_null_embedding() -> None:
    model = make_model("unet3d")
    batch = clip()
    mask = torch.ones(1, 5, dtype=torch.bool)
    mask[:, 3] = False
    other = dict(batch, actions=batch["actions"].clone())
    other["actions"][:, 3] += 5.0  # masked: must not matter
    torch.testing.assert_close(
        model(**batch, action_mask=mask), model(**other, action_mask=mask), rtol=0, atol=0
    )
    # all frames masked == no actions at all
    none_mask = torch.zeros(1, 5, dtype=torch.bool)
    x, t = batch["x"], batch["timesteps"]
    torch.testing.assert_close(model(x, t, batch["actions"], none_mask), model(x, t), rtol=0, atol=0)
    assert not torch.allclose(model(**batch), model(x, t), atol=1e-4)


def test_new_action_encoder_leaves_predictions_unchanged() -> None:
    model = make_model("unet3d", action_space=None)
    batch = clip()
    with torch.no_grad():
        before = model(batch["x"], batch["timesteps"])
        model.set_action_space({"type": "discrete", "dim": 6})
        ids = torch.randint(0, 6, (1, 5))
        after = model(batch["x"], batch["timesteps"], ids)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert model.config.action_space is not None and model.config.action_space.dim == 6


@pytest.mark.parametrize("family", ["unet3d", "svd"])
def test_gradient_checkpointing_gives_same_gradients(family: str) -> None:
    batch = clip(frames=3, size=8)
    grads, losses = {}, {}
    for ckpt in (False, "block", "layer", "selective"):
        model = training_model(family, ckpt)
        calls = _CheckpointCalls()
        with calls:
            loss = model(**batch).square().mean()
        loss.backward()
        losses[ckpt] = loss.item()
        grads[ckpt] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        blocks = len(model.compiled_blocks())
        layers = len(checkpointing.layers(model.compiled_blocks()))
        assert calls.n == {False: 0, "block": blocks, "layer": layers, "selective": layers}[ckpt], (
            ckpt
        )  # it really checkpoints
    assert layers > blocks
    for ckpt in ("block", "layer", "selective"):
        assert losses[ckpt] == losses[False]
        assert grads[ckpt].keys() == grads[False].keys()
        for name in grads[False]:
            torch.testing.assert_close(grads[ckpt][name], grads[False][name], rtol=1e-4, atol=1e-6, msg=name)


class _CheckpointCalls:
    """Counts torch.utils.checkpoint.checkpoint calls from the model's modules inside the ``with``."""

    def __enter__(self) -> Self:
        import torch.utils.checkpoint as tuc

        self.n, self._orig = 0, tuc.checkpoint

        def counted(*a: object, **k: object) -> object:
            self.n += 1
            return self._orig(*a, **k)

        for mod in (world_model, checkpointing):
            mod.checkpoint = counted  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        for mod in (world_model, checkpointing):
            mod.checkpoint = self._orig  # type: ignore[attr-defined]


def test_selective_checkpointing_recomputes_no_convolution_or_matmul() -> None:
    """ "layer" recomputes every layer's forward in backward; "selective" keeps the GEMM/conv/attention
    outputs, so the forward's convolutions and matmuls run once."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func in checkpointing.SAVED_OPS:
                self.n += 1
            return func(*args, **(kwargs or {}))

    batch = clip(frames=3, size=8)
    counts = {}
    for ckpt in (False, "layer", "selective"):
        model = training_model("unet3d", ckpt)
        with Count() as count:
            model(**batch).square().mean().backward()
        counts[ckpt] = count.n
    assert counts["layer"] > counts[False]  # the recompute runs the layers' convs and matmuls again
    assert counts["selective"] == counts[False]  # kept, not recomputed


def test_layer_checkpointing_is_off_outside_training_and_undoes() -> None:
    model = make_model("unet3d")
    names = list(model.state_dict())
    model.enable_gradient_checkpointing("layer")
    layers = checkpointing.layers(model.compiled_blocks())
    assert layers and all("forward" in layer.__dict__ for layer in layers)
    assert list(model.state_dict()) == names  # checkpoints and exports unchanged
    batch = clip(frames=3, size=8)
    model.eval()
    with _CheckpointCalls() as calls:
        model(**batch)
    assert calls.n == 0  # evaluation and rollouts never checkpoint
    model.enable_gradient_checkpointing(False)
    assert not any("forward" in layer.__dict__ for layer in layers)
    with pytest.raises(ValueError, match="gradient_checkpointing='leyer'"):
        model.enable_gradient_checkpointing("leyer")  # type: ignore[arg-type]


def test_layer_checkpointing_from_the_config_and_in_a_deep_copy() -> None:
    import copy

    model = make_model("unet3d")
    cfg = model.config.model_copy(update={"gradient_checkpointing": "layer"})
    rebuilt = world_model.WorldModel(cfg)
    assert all("forward" in layer.__dict__ for layer in checkpointing.layers(rebuilt.compiled_blocks()))
    # a deep copy (e.g. an EMA or evaluation copy) checkpoints by its own training state, not the original's
    twin = copy.deepcopy(rebuilt).train()
    rebuilt.eval()
    batch = clip(frames=3, size=8)
    with _CheckpointCalls() as calls:
        twin(**batch).square().mean().backward()
    assert calls.n == len(checkpointing.layers(twin.compiled_blocks()))
    with _CheckpointCalls() as calls:
        rebuilt(**batch)  # with gradients, but the original is in eval mode
    assert calls.n == 0


def test_full_size_clip_shape() -> None:
    model = make_model("unet3d")
    x = torch.randn(2, 16, 3, 64, 64)
    with torch.no_grad():
        out = model(x, torch.randint(0, 1000, (2, 16)), torch.randn(2, 16, 4))
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda b: dict(b, x=b["x"][0]), r"\(B, F, C, H, W\)"),
        (lambda b: dict(b, x=b["x"].transpose(1, 2)), "channels"),
        (lambda b: dict(b, x=b["x"].long()), "floating point"),
        (lambda b: dict(b, x=b["x"][..., :14, :14]), "patch_size"),
        (lambda b: dict(b, timesteps=b["timesteps"][:, 0]), "timesteps must be a"),
        (lambda b: dict(b, timesteps=b["timesteps"].bool()), "timesteps must be integer"),
        (lambda b: dict(b, actions=b["actions"][:, :4]), "one entry per frame"),
        (lambda b: dict(b, actions=b["actions"][..., :3]), r"\(B, F, dim\)"),
        (lambda b: dict(b, actions=b["actions"].long()), "floating"),
        (lambda b: dict(b, action_mask=torch.ones(1, 5)), "bool"),
        (lambda b: dict(b, action_mask=torch.ones(1, 4, dtype=torch.bool)), r"\(B, F\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match: str) -> None:
    model = make_model("unet3d")
    with pytest.raises(ValueError, match=match):
        model(**change(clip()))


def test_actions_without_action_space_raise() -> None:
    model = make_model("svd", action_space=None)
    b = clip()
    with pytest.raises(ValueError, match="no action space"):
        model(**b)


def test_unknown_mode_raises() -> None:
    with pytest.raises(ValueError, match="unknown causal mode"):
        causalize(make_model("unet3d"), "bidirectional")


def test_config_rejects_unknown_keys() -> None:
    from v2w_core.config import ConfigError
    from v2w_core.models.presets import tiny_unet3d

    data = tiny_unet3d().model_dump()
    data["causal"] = "yes"
    with pytest.raises(ConfigError, match="causal"):
        type(tiny_unet3d()).from_dict(data)
    with pytest.raises(ValueError, match="unknown model family"):
        WorldModel(tiny_unet3d().model_copy(update={"family": "dit"}))
