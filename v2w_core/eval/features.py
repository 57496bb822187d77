"""Metric networks (LPIPS, FID / FVD feature extractors), loaded only from safetensors.

Why this shape: LPIPS, FID and FVD are defined by pretrained networks (AlexNet + LPIPS heads, Inception,
I3D) whose weights must never be made up. A metric network is a safetensors file (local path or ``s3://``)
whose metadata names its architecture (``{"v2w_arch": "i3d_kinetics400", ...}``), or ``"auto"``: the
file :mod:`v2w_core.eval.weights` converted from the published weights into this machine's cache.
:func:`load_metric_net` returns either the network or an :class:`Unavailable` carrying the reason (not
configured, file missing or damaged, unknown architecture, weights not matching). Callers report
``"unavailable: <reason>"`` instead of a number.

Architectures:
  * ``i3d_kinetics400`` (FVD), ``inception_v3_fid`` (FID), ``lpips_alexnet`` / ``lpips_vgg16`` (LPIPS) —
    the published networks, ported to torch in :mod:`v2w_core.eval.nets` and cross-checked there against
    the originals. Conventions (resize, value range, layer) are in those modules and the README.
  * ``conv2d_pool`` / ``conv3d_pool`` — a stack of stride-2 convolutions + ReLU + global average pool, built
    from the weight shapes (``layers.{i}.weight``/``bias``). *Plumbing* extractors for tests: with random
    weights they give a self-consistent distance, not the published FID/FVD. The weights file's sha256 is
    reported with every value, so a number is never mistaken for another network's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections import OrderedDict
from collections.abc import Callable
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
    "lpips_vgg16": "lpips",
    "conv2d_pool": "frame",
    "conv3d_pool": "video",
    "inception_v3_fid": "frame",
    "i3d_kinetics400": "video",
}
#: The metric_weights key whose "auto" default each kind resolves (see v2w_core.eval.weights).
AUTO_METRIC: dict[MetricKind, str] = {"lpips": "lpips", "frame": "fid", "video": "fvd"}


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


def _build(arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
    if arch in ("conv2d_pool", "conv3d_pool"):
        net = ConvPoolNet.from_state(state, 2 if arch == "conv2d_pool" else 3)
        net.load_state_dict(state, strict=True)
        return net.eval()
    from v2w_core.eval.weights import NETS

    return NETS[arch].builder()(state).eval()


def load_metric_net(
    uri: str | None, kind: MetricKind, *, device: str | torch.device = "cpu"
) -> MetricNet | Unavailable:
    """Load the metric network at ``uri`` (safetensors) for ``kind``, or say why it is unavailable."""
    if not uri:
        return Unavailable(f"no {kind} network weights configured (safetensors path or s3:// URI)")
    expected_sha = None
    if uri == "auto":
        from v2w_core.eval import weights

        try:
            uri = weights.cached_weights(weights.DEFAULT_ARCH[AUTO_METRIC[kind]])
        except (FileNotFoundError, RuntimeError) as err:
            return Unavailable(str(err))
        expected_sha = weights.recorded_sha256(uri)
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, storage.StorageError) as err:
        return Unavailable(f"cannot read weights {uri}: {type(err).__name__}: {err}")
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha is not None and sha != expected_sha:
        return Unavailable(
            f"{uri}: sha256 {sha[:16]}… does not match its .sha256 sidecar ({expected_sha[:16]}…); the file "
            "is damaged — delete it and rerun: python -m v2w_core.eval.weights convert"
        )
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
    try:
        module = _build(arch, state).to(device)
    except (RuntimeError, ValueError, KeyError) as err:
        return Unavailable(f"{uri}: weights do not fit architecture {arch}: {str(err).splitlines()[0]}")
    logger.info("loaded %s metric network %s from %s (sha256 %s)", kind, arch, uri, sha[:12])
    return MetricNet(arch=arch, kind=kind, module=module, uri=uri, sha256=sha)


#: Features of recently seen inputs, per network: an evaluation stage scores the untrained base and then the
#: trained model on the same chunks, so the ground-truth and copy-last features (2/3 of the metric networks'
#: work) are computed once. Keyed by the weights' sha256 and the input's bytes; a few entries suffice.
_FEATURE_CACHE: OrderedDict[tuple[str, str, str], torch.Tensor] = OrderedDict()
_FEATURE_CACHE_SIZE = 16


def _input_key(x: torch.Tensor) -> str:
    x = x.detach().cpu().contiguous()
    return hashlib.blake2b(x.numpy().tobytes(), digest_size=16).hexdigest() + str(tuple(x.shape))


def _cached(net: MetricNet, kind: str, x: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    key = (net.sha256, kind, _input_key(x))
    if key in _FEATURE_CACHE:
        _FEATURE_CACHE.move_to_end(key)
        return _FEATURE_CACHE[key]
    value = compute()
    _FEATURE_CACHE[key] = value
    while len(_FEATURE_CACHE) > _FEATURE_CACHE_SIZE:
        _FEATURE_CACHE.popitem(last=False)
    return value


@torch.no_grad()
def frame_features(net: MetricNet, frames: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, C, H, W) frames in [0, 1] → (N, D) features."""
    dev = next(net.module.parameters()).device

    def compute() -> torch.Tensor:
        return torch.cat(
            [net.module(frames[i : i + batch].to(dev)).cpu() for i in range(0, len(frames), batch)]
        )

    return _cached(net, "frame", frames, compute)


@torch.no_grad()
def video_features(net: MetricNet, videos: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """(N, T, C, H, W) clips in [0, 1] → (N, D) features (3-D nets take (N, C, T, H, W))."""
    dev = next(net.module.parameters()).device
    x = videos.permute(0, 2, 1, 3, 4)

    def compute() -> torch.Tensor:
        return torch.cat([net.module(x[i : i + batch].to(dev)).cpu() for i in range(0, len(x), batch)])

    return _cached(net, "video", videos, compute)


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
    "MetricNet",
    "Unavailable",
    "frame_features",
    "load_metric_net",
    "lpips_distance",
    "safetensors_metadata",
    "video_features",
]
