"""Fréchet distance (FID / FVD) from feature sets: the D×D covariance form vs the sample-space form.

An evaluation fits Gaussians to tens or hundreds of feature vectors (the demo: 14 chunks × 8 generated
frames = 112 frames of Inception's 2048 features for FID, 14 clips of I3D's 400 for FVD) and computes the
distance three times per model (generated, copy-last, untrained vs the truth). The covariance form
(:func:`v2w_core.eval.metrics.frechet_distance` of :func:`~v2w_core.eval.metrics.feature_stats`, what
``frechet_distance_from_features`` did before) takes two float64 eigendecompositions of D×D matrices;
with fewer samples than features ``frechet_distance_from_features`` now takes one SVD of an N₂×N₁ matrix
instead (exact; its docstring has the identity). Per size this times both (best of ``--repeats``, one
process, numpy's own threads) and their agreement, plus the exact value of a scaled copy (b = 2a, known in
closed form) to show which of the two is the more accurate.

    .venv/bin/python bench/frechet.py [--repeats 3]

Prints a table and appends one record to bench/results/frechet.json (``bench/_record.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._record import append_record, format_table, machine_summary, new_record
from v2w_core.eval.metrics import feature_stats, frechet_distance, frechet_distance_from_features

RESULTS = Path(__file__).resolve().parent / "results" / "frechet.json"
#: (name, N₁, N₂, D): what the evaluations here compute.
SIZES = [
    ("tests: FID, 2 chunks x 8 frames", 16, 16, 2048),
    ("demo: FID, 14 chunks x 8 frames", 112, 112, 2048),
    ("demo: FVD, 14 clips", 14, 14, 400),
    ("large: FID, 4096 frames (covariance form)", 4096, 4096, 2048),
]


def best_of(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def measure(name: str, na: int, nb: int, d: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    a = rng.normal(size=(na, d)) @ mix  # correlated features, like a network's
    b = rng.normal(0.2, 1.1, size=(nb, d)) @ mix
    before_s, before = best_of(lambda: frechet_distance(*feature_stats(a), *feature_stats(b)), repeats)
    after_s, after = best_of(lambda: frechet_distance_from_features(a, b), repeats)
    mu, sigma = feature_stats(a)
    exact = float(mu @ mu + np.trace(sigma))  # FD(a, 2a) in closed form
    scaled_before = frechet_distance(*feature_stats(a), *feature_stats(2.0 * a))
    scaled_after = frechet_distance_from_features(a, 2.0 * a)
    return {
        "size": name, "n1": na, "n2": nb, "d": d,
        "sample_space": min(na, nb) < d,
        "covariance_form_s": before_s, "from_features_s": after_s, "speedup": before_s / after_s,
        "rel_diff": abs(after - before) / abs(before),
        "scaled_copy_rel_err_covariance_form": abs(scaled_before - exact) / exact,
        "scaled_copy_rel_err_from_features": abs(scaled_after - exact) / exact,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = [measure(*size, args.repeats) for size in SIZES]
    record = new_record("frechet", settings={"repeats": args.repeats}, rows=rows)
    demo_fid = rows[1]
    record["headline"] = {
        "demo_fid_covariance_form_s": round(demo_fid["covariance_form_s"], 3),
        "demo_fid_from_features_s": round(demo_fid["from_features_s"], 4),
        "demo_fid_speedup": round(demo_fid["speedup"], 1),
        "max_rel_diff": max(r["rel_diff"] for r in rows),
        "machine": machine_summary(record["machine"], load=True),
    }
    append_record(args.out, record)
    print(format_table(
        rows,
        ["size", "n1", "d", "covariance_form_s", "from_features_s", "speedup", "rel_diff",
         "scaled_copy_rel_err_covariance_form", "scaled_copy_rel_err_from_features"],
        ["size", "N", "D", "covariance form s", "from_features s", "speed-up", "rel. diff",
         "2a: rel. err (cov.)", "2a: rel. err (from_features)"],
        floatfmt=".3g",
    ))  # fmt: skip
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
