"""Regional torch.compile of the UNet blocks (issue 18): same loss and gradients as eager, with and without
gradient checkpointing, parameter names unchanged, undoable. Traced with the ``aot_eager`` backend on CPU
(Dynamo + AOTAutograd, the graphs inductor would fuse) so the suite does not pay inductor's codegen; the
inductor run is the GPU benchmark's (bench/train_step.py)."""

from __future__ import annotations

import pytest
import torch

from tests.models.conftest import clip, make_model, training_model
from v2w_core.train.config import TrainConfig
from v2w_core.train.local import ClipArrays, train_local


def _grads(
    compile_backend: str | None, ckpt: bool | str, family: str = "unet3d", regions: str = "block"
) -> tuple[float, dict[str, torch.Tensor]]:
    torch._dynamo.reset()
    batch = clip(frames=3, size=8)
    model = training_model(family, ckpt)
    if compile_backend is not None:
        model.compile_blocks(compile_backend, regions=regions)  # type: ignore[arg-type]
    loss = model(**batch).square().mean()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("ckpt", "regions"),
    # per-layer checkpointing inside block regions is left out: each half is covered on its own, and
    # every case costs the suite ~20 s of tracing
    [(False, "block"), ("block", "block"), ("layer", "layer"), ("selective", "layer")],
)
def test_compiled_blocks_give_the_eager_loss_and_gradients(ckpt: bool | str, regions: str) -> None:
    from torch._dynamo.utils import counters

    eager_loss, eager = _grads(None, ckpt)
    counters.clear()
    compiled_loss, compiled = _grads("aot_eager", ckpt, regions=regions)
    assert counters["stats"]["unique_graphs"] >= 4  # the blocks really went through Dynamo
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert eager.keys() == compiled.keys() and len(eager) > 20
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-6, msg=name)


def test_compile_blocks_is_regional_keeps_names_and_undoes() -> None:
    model = make_model("unet3d")
    names = list(model.state_dict())
    model.compile_blocks("aot_eager")
    blocks = model.compiled_blocks()
    unet = model.unet
    assert blocks[0] is unet.transformer_in and blocks[-1] is unet.up_blocks[-1]
    assert len(blocks) == 1 + len(unet.down_blocks) + 1 + len(unet.up_blocks)
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert unet.conv_in._compiled_call_impl is None  # not the whole model: only the blocks
    assert list(model.state_dict()) == names  # checkpoints and exports unchanged
    model.compile_blocks(None)
    assert all(b._compiled_call_impl is None for b in blocks)


def test_layer_regions_compile_the_layers_and_share_graphs_between_equal_layers() -> None:
    from torch._dynamo.utils import counters

    from v2w_core.models.checkpointing import layers

    torch._dynamo.reset()
    counters.clear()
    model = make_model("unet3d")
    model.compile_blocks("aot_eager", regions="layer")
    blocks = model.compiled_blocks()
    targets = [blocks[0], *layers(blocks)]  # the stem (transformer_in) and every layer
    assert all(m._compiled_call_impl is not None for m in targets)
    assert all(b._compiled_call_impl is None for b in blocks[1:])  # the blocks' glue stays eager
    with torch.no_grad():
        model(**clip(frames=3, size=8))
    # layers of one class and shape (e.g. an up block's transformers) run one compiled graph
    assert 0 < counters["stats"]["unique_graphs"] < len(targets)
    model.compile_blocks(None)
    assert not any(m._compiled_call_impl is not None for m in [*blocks, *targets])
    with pytest.raises(ValueError, match="compile regions 'layers'"):
        model.compile_blocks("aot_eager", regions="layers")  # type: ignore[arg-type]


@pytest.mark.parametrize("regions", ["block", "layer"])
def test_train_local_compiles_from_the_config_and_returns_an_eager_model(regions: str) -> None:
    from torch._dynamo.utils import counters

    from v2w_core.models.checkpointing import layers

    torch._dynamo.reset()
    counters.clear()
    cfg = TrainConfig.from_dict(
        {
            "experiment": "compile",
            "mode": "pretrain",
            "storage_path": "/tmp/unused",
            "max_steps": 2,
            "micro_batch_per_worker": 2,
            "model": {
                "preset": "tiny_unet3d",
                "compile_blocks": True,
                "compile_backend": "aot_eager",
                "compile_regions": regions,
                "gradient_checkpointing": regions,  # the two switches together, as at paper size
            },
        },
        source="test",
    )
    frames = torch.randint(0, 255, (4, 4, 64, 64, 3), dtype=torch.uint8).numpy()
    seen = []
    run = train_local(
        cfg,
        ClipArrays(frames),
        device="cpu",
        log_every=0,
        callback=lambda step, m: seen.append(
            [r._compiled_call_impl for r in (*m.compiled_blocks(), *layers(m.compiled_blocks()))]
        ),
        callback_every=1,
    )
    assert run.step == 2 and all(torch.isfinite(torch.tensor(run.losses)))
    assert counters["stats"]["unique_graphs"] >= 4  # the training steps ran the compiled regions
    assert len(seen) == 2 and not any(any(s) for s in seen)  # callbacks (evaluation) see the eager model
    blocks = run.model.compiled_blocks()
    assert all(r._compiled_call_impl is None for r in (*blocks, *layers(blocks)))
    assert run.model.config.gradient_checkpointing == regions
    assert all("forward" in layer.__dict__ for layer in layers(blocks)) == (regions == "layer")
