"""Clip pipeline throughput: decoded 64x64 frames/s and clips/s from the local object store through Ray Data.

    python bench/data_throughput.py [--episodes 64] [--length 64] [--codecs h264,h264-lossless,zstd]
                                    [--out bench/results/data_throughput.json] [--profile]

Appends one record per run to bench/results/data_throughput.json (``bench/_record.py``): settings, the
rows below, the machine and a ``headline`` (decoded frames/s, clip frames/s, frames/CPU-s per case; the
best Ray Data case).

What runs: a moto_server (``infra.stack``, loopback, its own port) holds WebDataset shards of
bouncing-shapes episodes (64x64, written untimed with ``shards.write_episodes``, 8 shards per codec so
both cores get read tasks); a local Ray (2 CPUs, loopback) runs ``build_clip_dataset`` (clip 16,
stride 8) and the driver consumes it the way a train worker does, ``iter_torch_batches(collate_fn=
collate_clips)``. Reported per case:

* ``decoded frames/s``: episode frames decoded per wall second (each frame decoded once);
* ``clip frames/s`` and ``clips/s``: what the consumer received (stride 8 < 16, so each frame is in
  two clips);
* ``frames/CPU-s``: decoded frames per CPU second of the driver + every Ray process of the run, which
  is the better number on a shared machine (wall rates fall with other people's load);
* a single-process baseline without Ray (read shard, ``decode_sample``, cut clips) and, with
  ``--profile``, the top functions of that baseline, to say where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._record import append_record, machine_info, machine_summary, new_record, print_table, rounded
from infra import stack
from v2w_core import storage
from v2w_core.data.clips import ClipConfig, build_clip_dataset, clip_starts, collate_clips
from v2w_core.data.codec import CodecConfig
from v2w_core.data.manifest import Manifest
from v2w_core.data.shards import ShardWriterConfig, decode_sample, iter_samples, write_episodes
from v2w_core.data.sources import get_source

log = logging.getLogger("bench.data_throughput")
CLIP, STRIDE, SHARDS = 16, 8, 8
PACKAGES = ("ray", "pyarrow", "numpy", "av", "zstandard", "torch", "moto", "boto3")


def cpu_seconds() -> float:
    """CPU time of this process and all its descendants alive now (Ray's raylet, workers, GCS...)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def write_dataset(root: str, codec: str, episodes: int, length: int) -> int:
    """Bouncing-shapes episodes as ``SHARDS`` shards (one write per shard: each write opens new shards)."""
    src = get_source("bouncing-shapes", episode_length=length, size=64)
    eps = list(src.episodes(episodes, seed=11))
    cfg = ShardWriterConfig(codec=CodecConfig(name=codec), eval_fraction=0.0)
    per = -(-episodes // SHARDS)
    for i in range(0, episodes, per):
        write_episodes(eps[i : i + per], root, cfg)
    return sum(e.length for e in eps)


def idle_cpu_rate(seconds: float = 5.0) -> float:
    """CPU-s per wall-s that the idle Ray processes burn (raylet, GCS, agents): subtracted below."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds() - c0) / (time.perf_counter() - t0)


def run_ray_pass(root: str, shuffle: str, idle_rate: float = 0.0) -> dict[str, Any]:
    cfg = ClipConfig(clip_length=CLIP, stride=STRIDE, split=None, shuffle=shuffle, seed=0)
    c0, t0 = cpu_seconds(), time.perf_counter()
    clips = build_clip_dataset(root, cfg)
    n_clips = 0
    for batch in clips.dataset.iter_torch_batches(
        batch_size=32, collate_fn=collate_clips, prefetch_batches=2
    ):
        n_clips += int(batch["frames"].shape[0])
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    report = clips.report()
    assert report.reconciles and n_clips == clips.expected_clips, report.summary()
    frames = int(sum(r["length"] for r in clips.manifest.rows()))
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "episodes": report.read,
        "decoded_frames": frames,
        "clips": n_clips,
        "decoded_frames_per_s": frames / wall,
        "clips_per_s": n_clips / wall,
        "clip_frames_per_s": n_clips * CLIP / wall,
        "decoded_frames_per_cpu_s": frames / cpu if cpu > 0 else None,
        "decoded_frames_per_busy_cpu_s": frames / (cpu - idle_rate * wall)
        if cpu > idle_rate * wall
        else None,
        "load_average_1min": os.getloadavg()[0],
    }


def run_baseline(root: str, profile: bool) -> dict[str, Any]:
    """Same work in one process without Ray: read each shard, decode, cut clips (copies)."""
    manifest = Manifest.read(root)
    prof = cProfile.Profile() if profile else None
    c0, t0 = time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    frames = clips = 0
    for uri in manifest.shard_uris():
        for sample in iter_samples(uri):
            ep = decode_sample(sample, shard=uri)
            frames += ep.length
            for s in clip_starts(ep.length, CLIP, STRIDE):
                np.ascontiguousarray(ep.frames[s : s + CLIP])
                clips += 1
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out: dict[str, Any] = {
        "wall_s": wall,
        "cpu_s": cpu,
        "decoded_frames": frames,
        "clips": clips,
        "decoded_frames_per_s": frames / wall,
        "decoded_frames_per_cpu_s": frames / cpu if cpu > 0 else None,
        "clips_per_s": clips / wall,
    }
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        out["profile_top_tottime"] = buf.getvalue()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--codecs", default="h264,h264-lossless,zstd")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_throughput.json"))
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import ray
    from ray._private import ray_constants

    record = new_record("data_throughput", machine=machine_info(PACKAGES))
    load_start = list(os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="v2w-bench-"))
    ray_tmp = tempfile.mkdtemp(prefix="v2w-ray-", dir="/tmp")  # short: Ray's socket paths are bounded
    cfg = stack.StackConfig(stack_dir=work / "stack", s3_port=stack.free_port(9430), bucket="v2w-bench",
                            access_key="bench", secret_key="bench-secret")  # fmt: skip
    info = stack.ensure_running(("s3",), config=cfg)
    os.environ.update(info.env())
    storage.clear_caches()
    results: list[dict[str, Any]] = []
    idle: float | None = None
    try:
        roots = {}
        for codec in args.codecs.split(","):
            root = f"s3://{cfg.bucket}/bench-{codec}"
            t = time.perf_counter()
            frames = write_dataset(root, codec, args.episodes, args.length)
            nbytes = sum(len(storage.read_bytes(u)) for u in Manifest.read(root).shard_uris())
            roots[codec] = root
            print(
                f"wrote {codec}: {frames} frames, {nbytes / frames:.0f} B/frame ({time.perf_counter() - t:.1f}s)"
            )
            base = run_baseline(root, args.profile and codec == "h264")
            results.append({"case": f"{codec} / 1 process, no Ray", "codec": codec, "bytes_per_frame": nbytes / frames,
                            **base})  # fmt: skip

        ray_constants.ENABLE_RAY_CLUSTER = False  # loopback-only node (see tests/conftest.py)
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 _temp_dir=ray_tmp, object_store_memory=1 << 30,
                 runtime_env={"env_vars": {k: v for k, v in info.env().items()}}, configure_logging=False,
                 log_to_driver=False)  # fmt: skip
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        run_ray_pass(roots[next(iter(roots))], "none")  # warm-up: worker start-up, imports
        idle = idle_cpu_rate()
        print(f"idle Ray CPU: {idle:.2f} CPU-s per s")
        for codec, root in roots.items():
            for shuffle in ("none", "global") if codec == "h264" else ("none",):
                r = run_ray_pass(root, shuffle, idle)
                results.append({"case": f"{codec} / Ray Data, shuffle={shuffle}", "codec": codec, **r})
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stack.stop(config=cfg)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    cols = ("case", "decoded_frames", "clips", "wall_s", "decoded_frames_per_s", "clips_per_s",
            "clip_frames_per_s", "decoded_frames_per_cpu_s", "decoded_frames_per_busy_cpu_s")  # fmt: skip
    print()
    print_table(results, cols)
    for r in results:
        if "profile_top_tottime" in r:
            print(f"\nprofile of {r['case']}:\n{r['profile_top_tottime']}")
    record.update({
        "load_average_at_start": load_start,
        "load_average_at_end": list(os.getloadavg()),
        "ray_idle_cpu_per_s": idle,
        "settings": {
            "episodes": args.episodes,
            "episode_length": args.length,
            "size": 64,
            "clip_length": CLIP,
            "stride": STRIDE,
            "shards_per_codec": SHARDS,
            "ray_num_cpus": 2,
            "batch_size": 32,
            "object_store": "moto_server on loopback",
        },
        "results": results,
    })  # fmt: skip
    record["headline"] = headline(record)
    append_record(args.out, record)
    print(f"\nappended to {args.out}")
    return 0


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The figures bench/README.md quotes: per case decoded frames/s, clips/s, clip frames/s, frames/CPU-s
    and frames/busy CPU-s (Ray rows), and the best Ray Data case without shuffle (the target's number)."""
    rows = record["results"]

    def per_case(key: str) -> dict[str, float | None]:
        return {r["case"]: rounded(r.get(key)) for r in rows if key in r}

    ray = [r for r in rows if r["case"].endswith("Ray Data, shuffle=none")]
    best = max(ray, key=lambda r: r["decoded_frames_per_s"], default=None)
    return {
        "best_ray_case": best["case"] if best else None,
        "best_ray_decoded_frames_per_s": rounded(best["decoded_frames_per_s"]) if best else None,
        "best_ray_clip_frames_per_s": rounded(best["clip_frames_per_s"]) if best else None,
        "decoded_frames_per_s": per_case("decoded_frames_per_s"),
        "clips_per_s": per_case("clips_per_s"),
        "clip_frames_per_s": per_case("clip_frames_per_s"),
        "decoded_frames_per_cpu_s": per_case("decoded_frames_per_cpu_s"),
        "decoded_frames_per_busy_cpu_s": per_case("decoded_frames_per_busy_cpu_s"),
        "load_average_1min_start_end": [rounded(record["load_average_at_start"][0], 2),
                                        rounded(record["load_average_at_end"][0], 2)],
        "machine": machine_summary(record["machine"], f"{record['machine']['memory_gb']} GB"),
    }


if __name__ == "__main__":
    sys.exit(main())
