"""Autoregressive rollout speed: full-window recompute vs. the streaming history cache.

Window 16 (15 context frames + the frame being generated), causal action guidance on (s = 2.5, both
branches batched), the embedded tiny UNet3D preset (``tiny_unet3d``, 1.8 M parameters, pixel space
3×64×64 by default) on CPU. Per generated frame the full path runs S forwards of the 16-frame window at
batch 2B; the streaming path runs one history forward (15 frames, batch B) and S forwards of the newest
frame alone at batch 2B. B is the number of independent rollouts batched together.

For each B it reports:
  * measured: ms per generated frame of real ``rollout`` calls with ``--steps`` DDIM steps (fewer than
    the paper's 50 so the full path finishes in minutes on a CPU; the speed-up grows with S);
  * projected to 50 steps from the measured component times: full = 50·t(window forward),
    streaming = t(encode_history) + 50·t(step_newest);
  * max |full − streaming| of the generated frames (they must agree to float tolerance).
Times are process CPU time (the primary number: the bench box is shared and wall time swings with other
jobs' load; with one thread CPU time is what an idle core's wall clock would show) and wall time.

    .venv/bin/python bench/rollout.py [--size 64] [--steps 10] [--frames 2] [--batches 1,4] [--threads 1]

Prints a table and appends one record per run to bench/results/rollout.json (``bench/_record.py``):
settings, rows, the machine and a ``headline`` (per batch: measured and projected 50-step speed-ups,
full and streaming CPU ms per frame, max |full − streaming|).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._record import append_record, machine_info, machine_summary, new_record
from v2w_core.diffusion.rollout import RolloutConfig, rollout
from v2w_core.models.testing import tiny_world_model
from v2w_core.models.world_model import WorldModel

RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"
ACTION_DIM = 4
PROJECTED_STEPS = 50


def build_model(seed: int) -> WorldModel:
    # The action head is zero-initialised; give it weights so guidance is not a no-op.
    return tiny_world_model(seed=seed, action_space={"type": "continuous", "dim": ACTION_DIM},
                            causal_mode="extrapolative", action_head_std=0.1)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` (cpu seconds, wall seconds): best, not mean, because the box is shared."""
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall)


@torch.no_grad()
def bench_batch(model: WorldModel, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    b, k, s, window = batch, args.context, args.size, args.context + 1
    g = torch.Generator().manual_seed(batch)

    # ---- components: one denoising step of each path, and the per-frame history encode
    x_win = torch.randn(2 * b, window, 3, s, s, generator=g)
    t_win = torch.full((2 * b, window), 20, dtype=torch.long)
    a_win = torch.randn(2 * b, window, ACTION_DIM, generator=g)
    hist = (x_win[:b, :-1], t_win[:b, :-1], a_win[:b, :-1])
    new = (x_win[:, -1:], t_win[:, -1:], a_win[:, -1:])
    model(x_win, t_win, a_win)  # warm-up
    cache = model.encode_history(*hist)
    model.step_newest(*new, None, cache)
    full_fwd = timed(lambda: model(x_win, t_win, a_win), args.repeats)
    encode = timed(lambda: model.encode_history(*hist), args.repeats)
    step = timed(lambda: model.step_newest(*new, None, cache), 2 * args.repeats)

    # ---- real rollouts, same seed on both paths
    context = torch.randn(b, k, 3, s, s, generator=g)
    actions = torch.randn(b, k + args.frames - 1, ACTION_DIM, generator=g)
    out: dict[str, Any] = {"batch": b}
    frames = {}
    for mode in ("full", "streaming"):
        cfg = RolloutConfig(num_inference_steps=args.steps, window=window, guidance_scale=2.5, mode=mode)
        c0, w0 = time.process_time(), time.perf_counter()
        frames[mode] = rollout(
            model, context, actions, args.frames, cfg, generator=torch.Generator().manual_seed(1)
        )
        out[f"{mode}_cpu_ms_per_frame"] = 1000 * (time.process_time() - c0) / args.frames
        out[f"{mode}_wall_ms_per_frame"] = 1000 * (time.perf_counter() - w0) / args.frames
    out["speedup_cpu"] = out["full_cpu_ms_per_frame"] / out["streaming_cpu_ms_per_frame"]
    out["speedup_wall"] = out["full_wall_ms_per_frame"] / out["streaming_wall_ms_per_frame"]
    out["max_abs_diff_full_vs_streaming"] = (frames["full"] - frames["streaming"]).abs().max().item()

    i = 0  # CPU time
    out["components_cpu_ms"] = {
        "window_forward": 1000 * full_fwd[i],
        "encode_history": 1000 * encode[i],
        "step_newest": 1000 * step[i],
    }
    out["components_wall_ms"] = {
        "window_forward": 1000 * full_fwd[1],
        "encode_history": 1000 * encode[1],
        "step_newest": 1000 * step[1],
    }
    proj_full = PROJECTED_STEPS * full_fwd[i]
    proj_stream = encode[i] + PROJECTED_STEPS * step[i]
    out["projected_50_steps_cpu"] = {
        "full_ms_per_frame": 1000 * proj_full,
        "streaming_ms_per_frame": 1000 * proj_stream,
        "speedup": proj_full / proj_stream,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="frame height = width (multiple of 4)")
    parser.add_argument("--context", type=int, default=15, help="context frames (window = context + 1)")
    parser.add_argument("--frames", type=int, default=2, help="frames generated per timed rollout")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps in the timed rollouts")
    parser.add_argument("--batches", default="1,4", help="comma-separated numbers of batched rollouts")
    parser.add_argument("--repeats", type=int, default=3, help="best-of-N for component times")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    model = build_model(0)
    rows = [bench_batch(model, int(b), args) for b in args.batches.split(",")]

    print(
        f"rollout bench: tiny_unet3d ({model.num_parameters() / 1e6:.2f} M params) 3x{args.size}x{args.size}, "
        f"window {args.context + 1}, guidance 2.5 (2 branches), CPU, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"{'batch':>5} {'steps':>5} {'full ms/frame':>14} {'stream ms/frame':>16} {'speed-up':>9} "
        f"{'wall speed-up':>14} {'max |diff|':>11}"
    )
    for r in rows:
        print(
            f"{r['batch']:>5} {args.steps:>5} {r['full_cpu_ms_per_frame']:>14.0f} "
            f"{r['streaming_cpu_ms_per_frame']:>16.0f} {r['speedup_cpu']:>8.1f}x {r['speedup_wall']:>13.1f}x "
            f"{r['max_abs_diff_full_vs_streaming']:>11.1e}"
        )
    for r in rows:
        p = r["projected_50_steps_cpu"]
        print(
            f"{r['batch']:>5} {PROJECTED_STEPS:>5} {p['full_ms_per_frame']:>14.0f} "
            f"{p['streaming_ms_per_frame']:>16.0f} {p['speedup']:>8.1f}x {'(projected)':>14}"
        )
    for r in rows:
        c = r["components_cpu_ms"]
        print(
            f"batch {r['batch']}: window forward {c['window_forward']:.0f} ms, encode_history "
            f"{c['encode_history']:.0f} ms, step_newest {c['step_newest']:.0f} ms (CPU time)"
        )

    record = new_record(
        "rollout",
        machine=machine_info(
            ("diffusers",), torch_threads=torch.get_num_threads(),
            loadavg_1m_before_after=[round(load_before, 2), round(os.getloadavg()[0], 2)],
        ),
        model={"preset": "tiny_unet3d", "parameters": model.num_parameters(),
               "frame": [3, args.size, args.size]},
        settings={
            "window": args.context + 1,
            "context_frames": args.context,
            "generated_frames": args.frames,
            "ddim_steps_measured": args.steps,
            "guidance_scale": 2.5,
            "guidance_rescale": 0.7,
            "history_noise_level": 20,
            "eta": 1.0,
            "primary_time": "process CPU time (shared box); wall time alongside",
        },
        results=rows,
    )  # fmt: skip
    record["headline"] = headline(record)
    append_record(args.out, record)
    print(f"appended to {args.out}")


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The figures bench/README.md quotes, per batch B: full and streaming CPU ms per frame and their ratio
    at the measured steps (and the wall ratio), the same projected to 50 steps, max |full − streaming|."""
    rows = {str(r["batch"]): r for r in record["results"]}
    m = record["machine"]

    def per_batch(fn: Callable[[dict[str, Any]], float], digits: int) -> dict[str, float]:
        return {b: round(fn(r), digits) for b, r in rows.items()}

    return {
        "ddim_steps_measured": record["settings"]["ddim_steps_measured"],
        "full_cpu_ms_per_frame": per_batch(lambda r: r["full_cpu_ms_per_frame"], 0),
        "streaming_cpu_ms_per_frame": per_batch(lambda r: r["streaming_cpu_ms_per_frame"], 0),
        "speedup_cpu": per_batch(lambda r: r["speedup_cpu"], 1),
        "speedup_wall": per_batch(lambda r: r["speedup_wall"], 1),
        f"projected_{PROJECTED_STEPS}_steps_full_ms_per_frame": per_batch(
            lambda r: r["projected_50_steps_cpu"]["full_ms_per_frame"], 0),
        f"projected_{PROJECTED_STEPS}_steps_streaming_ms_per_frame": per_batch(
            lambda r: r["projected_50_steps_cpu"]["streaming_ms_per_frame"], 0),
        f"projected_{PROJECTED_STEPS}_steps_speedup": per_batch(
            lambda r: r["projected_50_steps_cpu"]["speedup"], 1),
        "max_abs_diff_full_vs_streaming": max(r["max_abs_diff_full_vs_streaming"] for r in rows.values()),
        "machine": machine_summary(
            m, f"{m['torch_threads']} torch thread(s)", "load {}→{}".format(*m["loadavg_1m_before_after"])),
    }  # fmt: skip


if __name__ == "__main__":
    main()
