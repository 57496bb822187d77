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

Appends one record per run to bench/results/ingest.json (``bench/_record.py``): settings, the rows, the
machine and a ``headline`` (per case: produce and end-to-end frames/s and frames/CPU-s).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._record import append_record, machine_info, machine_summary, new_record, print_table
from v2w_core.data.episode import Episode
from v2w_core.data.shards import write_episodes

log = logging.getLogger("bench.ingest")


PACKAGES = ("numpy", "av", "pyarrow", "pillow", "vizdoom", "ale-py", "gymnasium", "gymnasium-robotics",
            "mujoco", "h5py", "google-crc32c")  # fmt: skip


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
    args.out = str(Path(args.out).resolve())  # the cases run in a temporary working directory
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
    print_table(table_rows(rows), TABLE_COLUMNS, TABLE_HEADERS, floatfmt=None)
    record = new_record(
        "ingest",
        machine=machine_info(PACKAGES, mujoco_gl=os.environ.get("MUJOCO_GL")),
        load_average_at_start=load_at_start,
        settings={"output_size": [64, 64], "codec": "h264 crf 8 (default)", "quick": args.quick,
                  "processes": 1},
        results=rows,
    )
    record["headline"] = headline(record)
    append_record(args.out, record)
    print(f"\nappended to {args.out}")
    return 0


TABLE_COLUMNS = ("name", "kind", "episodes", "frames", "produce_episodes_per_s", "produce_frames_per_s",
                 "produce_frames_per_cpu_s", "end_to_end_episodes_per_s", "end_to_end_frames_per_s",
                 "end_to_end_frames_per_cpu_s")  # fmt: skip
TABLE_HEADERS = ("case", "kind", "episodes", "frames", "produce ep/s", "produce frames/s",
                 "produce frames/CPU-s", "end-to-end ep/s", "end-to-end frames/s",
                 "end-to-end frames/CPU-s")  # fmt: skip


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the table: a skipped case says why in its episodes column and leaves the rest empty."""
    return [{"name": r["name"], "kind": r.get("kind", ""), "episodes": f"skipped: {r['skipped']}",
             **dict.fromkeys(TABLE_COLUMNS[3:], "")} if "skipped" in r else r for r in rows]  # fmt: skip


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The figures bench/README.md quotes, per case: produce and end-to-end frames/s and frames/CPU-s (the
    CPU-time rates are the stable ones on a shared machine), and which cases were skipped."""
    done = [r for r in record["results"] if "skipped" not in r]
    keys = ("produce_frames_per_s", "produce_frames_per_cpu_s", "end_to_end_frames_per_s",
            "end_to_end_frames_per_cpu_s")  # fmt: skip
    out: dict[str, Any] = {k: {r["name"]: r[k] for r in done} for k in keys}
    out["skipped"] = [r["name"] for r in record["results"] if "skipped" in r]
    out["quick"] = record["settings"]["quick"]
    start, end = record["load_average_at_start"], record["machine"]["load_average"]  # end: when recorded
    out["load_average_1min_start_end"] = [round(start[0], 2) if start else None, end[0] if end else None]
    out["machine"] = machine_summary(record["machine"], f"{record['machine']['memory_gb']} GB")
    return out


if __name__ == "__main__":
    sys.exit(main())
