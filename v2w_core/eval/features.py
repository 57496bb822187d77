"""Metric networks (LPIPS, FID / FVD feature extractors), loaded only from safetensors the user supplies.

Why this shape: LPIPS, FID and FVD are defined by pretrained networks (AlexNet + LPIPS heads, Inception,
I3D) whose weights cannot be downloaded here and must never be made up. A metric network is therefore a
safetensors file (local path or ``s3://``) whose metadata names its architecture::

    {"v2w_arch": "lpips_alexnet" | "conv2d_pool" | "conv3d_pool", ...}

and :func:`load_metric_net` returns either the network or an :class:`Unavailable` carrying the reason
(not configured, file missing, unknown or unimplemented architecture, weights not matching). Callers report
``"unavailable: <reason>"`` instead of a number.

Architectures implemented here:
  * ``lpips_alexnet`` — LPIPS v0.1 with AlexNet features (Zhang et al. 2018). Key names follow torchvision's
    ``alexnet.features.{0,3,6,8,10}`` and the ``lpips`` package's ``lin{0..4}.model.1.weight``, so real
    weights convert by renaming nothing (load both state dicts, merge, ``safetensors.torch.save_file``).
  * ``conv2d_pool`` / ``conv3d_pool`` — a stack of stride-2 convolutions + ReLU + global average pool, built
    from the weight shapes (``layers.{i}.weight``/``bias``). These are the *plumbing* extractors for frames
    (FID-style) and clips (FVD-style); with random weights they give a self-consistent distance, not the
    published FID/FVD. Numbers are comparable across runs only with the same weights file, which is why
    the file's sha256 is reported with every value.
  * ``inception_v3_fid`` and ``i3d_kinetics400`` are recognised names but **not implemented** in this build;
    a file naming them yields ``Unavailable`` with that reason rather than a wrong number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from torch import nn

from v2w_core import storage

logger = logging.getLogger(__name__)

MetricKind = Literal["lpips", "frame", "video"]
ARCH_KIND: dict[str, MetricKind] = {
    "lpips_alexnet": "lpips",
    "conv2d_pool": "frame",
    "conv3d_pool": "video",
    "inception_v3_fid": "frame",
    "i3d_kinetics400": "video",
}
NOT_IMPLEMENTED = {"inception_v3_fid", "i3d_kinetics400"}


@dataclass(frozen=True)
class Unavailable:
    """Why a metric could not be computed; rendered as ``"unavailable: <reason>"``."""

    reason: str

    def __str__(self) -> str:
        return f"unavailable: {self.reason}"


@dataclass
class MetricNet:
    """A loaded metric network plus what identifies its weights (reported next to every value)."""

    arch: str
    kind: MetricKind
    module: nn.Module
    uri: str
    sha256: str


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (header: u64 little-endian length + JSON)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__") or {})


# ------------------------------------------------------------------------------------- architectures
class ConvPoolNet(nn.Module):
    """Stride-2 conv stack + ReLU + global average pool; 2-D (frames) or 3-D (clips). Input in [0, 1]."""

    def __init__(self, shapes: list[tuple[int, ...]], dims: Literal[2, 3]) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        self.layers = nn.ModuleList(
            conv(s[1], s[0], kernel_size=tuple(s[2:]), stride=2, padding=tuple(k // 2 for k in s[2:]))
            for s in shapes
        )

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], dims: Literal[2, 3]) -> ConvPoolNet:
        n = len({k.split(".")[1] for k in state if k.startswith("layers.")})
        shapes = [tuple(state[f"layers.{i}.weight"].shape) for i in range(n)]
        if not shapes or any(len(s) != dims + 2 for s in shapes):
            raise ValueError(f"conv{dims}d_pool weights need layers.<i>.weight of rank {dims + 2}")
        return cls(shapes, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 2.0 - 1.0
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x.flatten(2).mean(dim=2)


class LpipsAlexNet(nn.Module):
    """LPIPS v0.1 (AlexNet): distance between (N, 3, H, W) images in [0, 1]; needs H, W ≥ 32."""

    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        for i, c in enumerate(self.CHANNELS):
            self.add_module(f"lin{i}", nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False)))
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.taps = (1, 4, 7, 9, 11)  # the ReLU outputs LPIPS compares

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x * 2.0 - 1.0) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if min(a.shape[-2:]) < 32:
            a = F.interpolate(a, size=(32, 32), mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=(32, 32), mode="bilinear", align_corners=False)
        total = torch.zeros(a.shape[0], device=a.device)
        for i, (fa, fb) in enumerate(zip(self._feats(a), self._feats(b), strict=True)):
            total = total + getattr(self, f"lin{i}")((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total


def _build(arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
    if arch == "lpips_alexnet":
        net: nn.Module = LpipsAlexNet()
    elif arch in ("conv2d_pool", "conv3d_pool"):
        net = ConvPoolNet.from_state(state, 2 if arch == "conv2d_pool" else 3)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(arch)
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_metric_net(
    uri: str | None, kind: MetricKind, *, device: str | torch.device = "cpu"
) -> MetricNet | Unavailable:
    """Load the metric network at ``uri`` (safetensors) for ``kind``, or say why it is unavailable."""
    if not uri:
        return Unavailable(f"no {kind} network weights configured (safetensors path or s3:// URI)")
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, storage.StorageError) as err:
        return Unavailable(f"cannot read weights {uri}: {type(err).__name__}: {err}")
    try:
        meta = safetensors_metadata(data)
        state = load_safetensors(data)
    except Exception as err:  # noqa: BLE001 - any parse failure means "not usable weights"
        return Unavailable(f"{uri} is not a readable safetensors file: {err}")
    arch = meta.get("v2w_arch")
    if arch not in ARCH_KIND:
        return Unavailable(f"{uri}: metadata v2w_arch={arch!r} is not one of {sorted(ARCH_KIND)}")
    if ARCH_KIND[arch] != kind:
        return Unavailable(f"{uri}: architecture {arch} computes {ARCH_KIND[arch]} features, not {kind}")
    if arch in NOT_IMPLEMENTED:
        return Unavailable(f"{uri}: architecture {arch} is not implemented in this build")
    try:
        module = _build(arch, state).to(device)
    except (RuntimeError, ValueError, KeyError) as err:
        return Unavailable(f"{uri}: weights do not fit architecture {arch}: {str(err).splitlines()[0]}")
    sha = hashlib.sha256(data).hexdigest()
    logger.info("loaded %s metric network %s from %s (sha256 %s)", kind, arch, uri, sha[:12])
    return MetricNet(arch=arch, kind=kind, module=module, uri=uri, sha256=sha)


@torch.no_grad()
def frame_features(net: MetricNet, frames: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, C, H, W) frames in [0, 1] → (N, D) features."""
    dev = next(net.module.parameters()).device
    return torch.cat([net.module(frames[i : i + batch].to(dev)).cpu() for i in range(0, len(frames), batch)])


@torch.no_grad()
def video_features(net: MetricNet, videos: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """(N, T, C, H, W) clips in [0, 1] → (N, D) features (3-D nets take (N, C, T, H, W))."""
    dev = next(net.module.parameters()).device
    x = videos.permute(0, 2, 1, 3, 4)
    return torch.cat([net.module(x[i : i + batch].to(dev)).cpu() for i in range(0, len(x), batch)])


@torch.no_grad()
def lpips_distance(net: MetricNet, a: torch.Tensor, b: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Per-image LPIPS of (N, C, H, W) pairs in [0, 1]."""
    dev = next(net.module.parameters()).device
    return torch.cat(
        [
            net.module(a[i : i + batch].to(dev), b[i : i + batch].to(dev)).cpu()
            for i in range(0, len(a), batch)
        ]
    )


__all__ = [
    "ARCH_KIND",
    "ConvPoolNet",
    "LpipsAlexNet",
    "MetricNet",
    "Unavailable",
    "frame_features",
    "load_metric_net",
    "lpips_distance",
    "safetensors_metadata",
    "video_features",
]
