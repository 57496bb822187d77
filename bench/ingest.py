"""Ingest throughput: episodes/s and frames/s of every source and converter, on this machine.

    python bench/ingest.py [--quick] [--only vizdoom,lerobot] [--out bench/results/ingest.json]

Two numbers per row, both single process:

* ``produce``: the source/converter generator alone (simulate + render + resize, or parse + decode +
  resize) -- what a Ray ingest task would spend before writing;
* ``end-to-end``: the same episodes also encoded (default lossy H.264) and written as shards + manifest
  to a local directory -- what ``v2w-ingest`` / ``python -m v2w_core.data.converters`` costs.

Converter inputs are synthetic data sets in each real format, written first (not timed) with
``v2w_core.data.converters.testing`` at the data sets' native sizes (LeRobot 96x128 mp4, RT-1 256x320
JPEG, CS:GO 150x280 BGR hdf5). Output is 64x64 everywhere. Sources whose simulator is not installed
are reported as skipped with the reason, never as a number.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco

from v2w_core.data.episode import Episode
from v2w_core.data.shards import write_episodes

log = logging.getLogger("bench.ingest")


# ----------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("numpy", "av", "pyarrow", "pillow", "vizdoom", "ale-py", "gymnasium", "gymnasium-robotics",
                "mujoco", "h5py", "google-crc32c"):  # fmt: skip
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": mem_gb,
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "packages": versions,
    }


# ------------------------------------------------------------------------------------------- cases
def _timed_produce(make: Callable[[], Iterable[Episode]]) -> tuple[float, float, int, int]:
    """Wall and CPU seconds (this process, all threads) to exhaust the generator."""
    start, cpu = time.perf_counter(), time.process_time()
    n_eps = n_frames = 0
    for ep in make():
        n_eps += 1
        n_frames += ep.length
    return time.perf_counter() - start, time.process_time() - cpu, n_eps, n_frames


def _timed_write(make: Callable[[], Iterable[Episode]], out: Path) -> tuple[float, float, int]:
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    manifest = write_episodes(make(), str(out))
    return time.perf_counter() - start, time.process_time() - cpu, len(manifest)


def source_cases(quick: bool) -> dict[str, tuple[Callable[[], Iterable[Episode]], dict[str, Any]]]:
    from v2w_core.data.sources import get_source

    scale = 0.25 if quick else 1.0
    n = lambda x: max(1, int(x * scale))
    specs = {
        "bouncing-shapes": ("bouncing_shapes", {"episode_length": 64}, n(40)),
        "vizdoom": ("vizdoom", {"episode_length": 64, "scenario": "health_gathering"}, n(20)),
        "atari": ("atari", {"episode_length": 64, "game": "breakout"}, n(20)),
        "fetch": ("fetch", {"episode_length": 50, "task": "mixed"}, n(6)),
    }
    cases = {}
    for name, (module, options, count) in specs.items():

        def make(name: str = name, module: str = module, options: dict = options, count: int = count) -> Any:
            __import__(f"v2w_core.data.sources.{module}")  # registers the source
            return get_source(name, **options).episodes(count, seed=0)

        cases[name] = (make, {"kind": "source", "episodes": count, "options": options})
    return cases


def converter_cases(
    quick: bool, tmp: Path
) -> dict[str, tuple[Callable[[], Iterable[Episode]], dict[str, Any]]]:
    from v2w_core.data.converters import get_converter
    from v2w_core.data.converters.testing import (
        fixture_episodes,
        write_csgo_hdf5,
        write_lerobot_v3,
        write_rlds_tfrecords,
    )

    scale = 0.25 if quick else 1.0
    n = lambda x: max(2, int(x * scale))
    cases: dict[str, tuple[Callable[[], Iterable[Episode]], dict[str, Any]]] = {}
    # LeRobot v3: 96x128 mp4 (h264 yuv420p), 5 episodes per file, 6-dim actions
    eps = fixture_episodes(n(20), length=50, height=96, width=128, action_dim=6, seed=1)
    root = write_lerobot_v3(tmp / "lerobot", eps, fps=30, episodes_per_file=5)
    cases["lerobot"] = (lambda: get_converter("lerobot", str(root)).episodes(),
                        {"kind": "converter", "episodes": len(eps), "input": "96x128 h264, 5 episodes/mp4"})  # fmt: skip
    # RLDS RT-1 layout: 256x320 JPEG per step, 7-dim action in 3 fields
    eps = fixture_episodes(n(8), length=30, height=256, width=320, action_dim=7, seed=2)
    path = write_rlds_tfrecords(tmp / "rlds" / "fractal-train.tfrecord-00000-of-00001", eps)
    cases["rlds"] = (lambda: get_converter("rlds", str(path), preset="rt1").episodes(),
                     {"kind": "converter", "episodes": len(eps), "input": "256x320 JPEG q95, RT-1 fields"})  # fmt: skip
    # DIAMOND CS:GO: 150x280 BGR hdf5, 51-dim actions
    rng = np.random.default_rng(3)
    count = n(4)
    for i in range(count):
        frames = fixture_episodes(1, length=200, height=150, width=280, seed=10 + i)[0].frames
        actions = np.zeros((200, 51), np.float32)
        actions[:, :13] = rng.random((200, 13)) < 0.2
        actions[np.arange(200), 13 + rng.integers(0, 23, 200)] = 1
        actions[np.arange(200), 36 + rng.integers(0, 15, 200)] = 1
        write_csgo_hdf5(tmp / "csgo" / f"hdf5_dm_july2021_{i + 1}.hdf5", frames, actions)
    cases["csgo"] = (lambda: get_converter("csgo", str(tmp / "csgo")).episodes(),
                     {"kind": "converter", "episodes": count, "input": "150x280 BGR hdf5, 200 frames/file"})  # fmt: skip
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a quarter of the episodes (smoke run)")
    p.add_argument("--only", default="", help="comma-separated case names")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    only = {s for s in args.only.split(",") if s}
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="v2w-bench-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        os.chdir(tmp)  # ViZDoom drops a _vizdoom dir into the working directory
        cases = dict(source_cases(args.quick))
        try:
            cases.update(converter_cases(args.quick, tmp))
        except ImportError as err:
            rows.append({"name": "converters", "skipped": f"{err}"})
        for name, (make, info) in cases.items():
            if only and name not in only:
                continue
            try:
                produce_s, produce_cpu, n_eps, n_frames = _timed_produce(make)
                write_s, write_cpu, written = _timed_write(make, tmp / f"out-{name}")
            except ImportError as err:
                rows.append({"name": name, **info, "skipped": str(err)})
                print(f"{name:16s} skipped: {err}")
                continue
            row = {
                "name": name,
                **info,
                "frames": n_frames,
                "produce_s": round(produce_s, 3),
                "produce_episodes_per_s": round(n_eps / produce_s, 2),
                "produce_frames_per_s": round(n_frames / produce_s, 1),
                "end_to_end_s": round(write_s, 3),
                "end_to_end_episodes_per_s": round(written / write_s, 2),
                "end_to_end_frames_per_s": round(n_frames / write_s, 1),
                # CPU-time rates: robust to other processes competing for the cores during the run
                "produce_cpu_s": round(produce_cpu, 3),
                "produce_frames_per_cpu_s": round(n_frames / produce_cpu, 1),
                "end_to_end_cpu_s": round(write_cpu, 3),
                "end_to_end_frames_per_cpu_s": round(n_frames / write_cpu, 1),
            }
            rows.append(row)
            print(f"{name:16s} {n_eps:4d} eps {n_frames:6d} fr   produce {row['produce_frames_per_s']:8.1f} fr/s "
                  f"{row['produce_episodes_per_s']:7.2f} ep/s   end-to-end {row['end_to_end_frames_per_s']:8.1f} fr/s "
                  f"{row['end_to_end_episodes_per_s']:7.2f} ep/s", flush=True)  # fmt: skip
    print()
    print(format_table(rows))
    result = {
        "benchmark": "ingest",
        "load_average_at_start": load_at_start,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "output_size": [64, 64],
            "codec": "h264 crf 8 (default)",
            "quick": args.quick,
            "processes": 1,
        },
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| case | kind | episodes | frames | produce ep/s | produce frames/s | produce frames/CPU-s "
            "| end-to-end ep/s | end-to-end frames/s | end-to-end frames/CPU-s |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r.get('kind', '')} | skipped: {r['skipped']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['episodes']} | {r['frames']} | {r['produce_episodes_per_s']} | "
            f"{r['produce_frames_per_s']} | {r['produce_frames_per_cpu_s']} | {r['end_to_end_episodes_per_s']} | "
            f"{r['end_to_end_frames_per_s']} | {r['end_to_end_frames_per_cpu_s']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
