"""Frames per second and latency of ``v2w-play`` *through the served endpoint* (Ray Serve HTTP → one
replica → one streaming-rollout step → PNG → JSON), as a player's browser sees them.

Starts the real play server (``v2w_core.play.server.start``, Ray Serve on loopback) for a model, opens a
session from the blank context, and steps it ``--frames`` times per denoising-step count, one request at a
time (what one player does: the next key follows the last frame), holding a changing multi-hot action.
Per step: round-trip milliseconds (client clock) and the model's own milliseconds (``compute_ms`` from the
server); frames/s = frames / wall time of the loop.

    python bench/play_latency.py                       # CPU, the demo's architecture (tiny), 2 and 10 steps
    python bench/play_latency.py --model models:/vid2world-tiny@champion --local-stack

Without ``--model`` the model is the demo's architecture (``tiny_unet3d``, 64×64, ViZDoom's 3 buttons) with
seeded random weights (``tiny_world_model``): timing does not depend on what the weights learned.
``headline``: ``fps_cpu_tiny`` and ``latency_ms_p50`` / ``latency_ms_p95`` at ``--headline-steps`` (10, what
the demo evaluates and registers with); ``fps_gpu_paper_10_steps`` / ``fps_gpu_paper_50_steps`` stay null
with a note: they need the lent GPU *and* a paper-size model that play can show (the paper preset works
in VAE latents, and play does not decode latents yet). → ``bench/results/play_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._record import append_record, machine_info, machine_summary, new_record

OUT = Path(__file__).resolve().parent / "results" / "play_latency.json"


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def measure(base: str, steps: int, frames: int, warmup: int, dim: int) -> dict:
    session = _post(base + "api/session", {"context": "blank", "seed": 0})["session"]
    step_url = f"{base}api/session/{session}/step"
    for i in range(warmup):
        _post(step_url, {"action": [float(i % 2 == 0)] + [0.0] * (dim - 1), "steps": steps})
    latencies, compute = [], []
    t0 = time.perf_counter()
    for i in range(frames):
        action = [float((i // 4 + j) % 3 == 0) for j in range(dim)]  # a held key that changes every 4 frames
        s = time.perf_counter()
        reply = _post(step_url, {"action": action, "steps": steps})
        latencies.append((time.perf_counter() - s) * 1000)
        compute.append(reply["compute_ms"])
    wall = time.perf_counter() - t0
    req = urllib.request.Request(f"{base}api/session/{session}", method="DELETE")
    urllib.request.urlopen(req, timeout=30).close()
    return {
        "steps": steps, "frames": frames, "fps": round(frames / wall, 2),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p95": round(_percentile(latencies, 95), 1),
        "compute_ms_p50": round(statistics.median(compute), 1),
        "overhead_ms_p50": round(statistics.median(a - b for a, b in zip(latencies, compute, strict=True)), 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="any v2w-play model URI (default: the tiny demo architecture, random weights)")
    p.add_argument("--local-stack", action="store_true", help="models:/ URIs from the local stack")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", default="2,10", help="denoising-step counts to measure")
    p.add_argument("--headline-steps", type=int, default=10)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--port", type=int, default=8690)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)

    import torch

    from v2w_core.play import server
    from v2w_core.play.cli import use_local_stack
    from v2w_core.play.engine import PlaySettings
    from v2w_core.play.source import resolve_source

    steps_list = [int(s) for s in args.steps.split(",")]
    if args.local_stack:
        use_local_stack()
    if args.model:
        src = resolve_source(args.model)
        model_dir, label = src.model_dir, src.label
    else:
        from v2w_core.models.io import save_world_model
        from v2w_core.models.testing import tiny_world_model

        model_dir = str(Path(tempfile.mkdtemp(prefix="v2w-play-bench-")) / "model")
        space = {"type": "multi_hot", "dim": 3}
        save_world_model(tiny_world_model(action_space=space, causal_mode="extrapolative"), model_dir)
        label = "tiny_unet3d (demo architecture, random weights), multi_hot 3"
    settings = PlaySettings(model_dir=model_dir, label=label, device=args.device, steps=args.headline_steps,
                            max_steps=max([*steps_list, args.headline_steps]))  # fmt: skip
    machine = machine_info(["ray", "torch"], torch_threads=torch.get_num_threads(), device=args.device)
    t0 = time.perf_counter()
    running = server.start(settings, port=args.port, num_gpus=1.0 if args.device.startswith("cuda") else 0.0)
    startup_s = time.perf_counter() - t0
    try:
        info = json.loads(urllib.request.urlopen(running.url + "api/info", timeout=30).read())
        dim = info["actions"]["dim"]
        rows = [measure(running.url, s, args.frames, args.warmup, dim) for s in steps_list]
    finally:
        server.stop(running)

    print(f"v2w-play through {running.url} ({label}, {args.device}); server start {startup_s:.1f} s")
    print(f"{'steps':>5} {'fps':>6} {'p50 ms':>7} {'p95 ms':>7} {'model ms':>8} {'overhead ms':>11}")
    for r in rows:
        print(f"{r['steps']:>5} {r['fps']:>6} {r['latency_ms_p50']:>7} {r['latency_ms_p95']:>7} "
              f"{r['compute_ms_p50']:>8} {r['overhead_ms_p50']:>11}")  # fmt: skip

    by_steps = {r["steps"]: r for r in rows}
    main_row = by_steps.get(args.headline_steps, rows[-1])
    cpu = not args.device.startswith("cuda")
    gpu_note = ("needs the lent GPU and a paper-size model play can show: the paper preset works in VAE latents "
                "and play does not decode latents yet; run this bench with --device cuda --model <RGB model>")  # fmt: skip
    record = new_record(
        "play_latency", machine=machine,
        settings={"model": args.model or label, "device": args.device, "steps": steps_list,
                  "frames_per_measure": args.frames, "warmup": args.warmup, "clients": 1,
                  "server_start_s": round(startup_s, 1), "context": "blank", "frame_size": info["frame"],
                  "what": "sequential HTTP steps of one session through Ray Serve; latency = client round trip"},
        results=rows,
    )  # fmt: skip
    record["headline"] = {
        "steps": main_row["steps"],
        "fps_cpu_tiny": main_row["fps"] if cpu and not args.model else None,
        "fps_cpu_tiny_2_steps": by_steps[2]["fps"] if cpu and not args.model and 2 in by_steps else None,
        "latency_ms_p50": main_row["latency_ms_p50"],
        "latency_ms_p95": main_row["latency_ms_p95"],
        "serving_overhead_ms_p50": main_row["overhead_ms_p50"],
        "fps_gpu_paper_10_steps": None,
        "fps_gpu_paper_50_steps": None,
        "gpu_note": gpu_note,
        "machine": machine_summary(machine, f"{machine['torch_threads']} torch threads", load=True),
    }
    append_record(args.out, record)
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
