"""Autoregressive rollout speed: full-window recompute vs. the streaming history cache.

Window 16 (15 context frames + the frame being generated), causal action guidance on (s = 2.5, both
branches batched), the embedded tiny UNet3D preset (``tiny_unet3d``, pixel space 3×64×64 by default) on
CPU. Per generated frame the full path runs S forwards of the 16-frame window at batch 2B; the streaming
path runs one history forward (15 frames, batch B) and S forwards of the newest frame at batch 2B.

Two numbers are reported:
  * measured: ms per generated frame of real ``rollout`` calls with ``--steps`` DDIM steps (fewer than
    the paper's 50 so the full path finishes in minutes on a CPU; the ratio grows with S);
  * projected to 50 steps from the measured component times: full = 50·t(window forward),
    streaming = t(encode_history) + 50·t(step_newest).
It also checks that both paths produce the same frames at window 16 (max |Δ|).

    .venv/bin/python bench/rollout.py [--size 64] [--steps 10] [--frames 2] [--threads N]

Prints a table and writes bench/results/rollout.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import diffusers
import torch

from v2w_core.diffusion.rollout import RolloutConfig, rollout
from v2w_core.models.causalize import causalize
from v2w_core.models.presets import tiny_unet3d
from v2w_core.models.world_model import WorldModel

RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"
ACTION_DIM = 4


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_model(seed: int, device: torch.device) -> WorldModel:
    torch.manual_seed(seed)
    model = WorldModel(tiny_unet3d(action_space={"type": "continuous", "dim": ACTION_DIM}))
    causalize(model, "extrapolative")
    # The action head is zero-initialised; give it weights so guidance is not a no-op.
    with torch.no_grad():
        for p in model.action_encoder.mlp[-1].parameters():
            p.normal_(0, 0.1)
    return model.to(device).eval()


def timed(fn, repeats: int, device: torch.device) -> float:
    """Best-of-``repeats`` wall seconds (best, not mean: the bench box may be shared)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="frame height = width (multiple of 4)")
    parser.add_argument("--context", type=int, default=15, help="context frames (window = context + 1)")
    parser.add_argument("--frames", type=int, default=2, help="frames generated per timed rollout")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps in the timed rollouts")
    parser.add_argument("--batch", type=int, default=1, help="independent rollouts per batch")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    window = args.context + 1
    load_before = os.getloadavg()

    model = build_model(0, device)
    g = torch.Generator().manual_seed(0)
    b, k, s = args.batch, args.context, args.size
    context = torch.randn(b, k, 3, s, s, generator=g).to(device)
    actions = torch.randn(b, k + args.frames - 1, ACTION_DIM, generator=g).to(device)
    base_cfg = {"num_inference_steps": args.steps, "window": window, "guidance_scale": 2.5}

    # ---- component times (one denoising step of each path)
    with torch.no_grad():
        x_win = torch.randn(2 * b, window, 3, s, s, device=device)
        t_win = torch.full((2 * b, window), 20, dtype=torch.long, device=device)
        a_win = torch.randn(2 * b, window, ACTION_DIM, device=device)
        x_hist, t_hist, a_hist = x_win[:b, :-1], t_win[:b, :-1], a_win[:b, :-1]
        x_new, t_new, a_new = x_win[:, -1:], t_win[:, -1:], a_win[:, -1:]
        model(x_win, t_win, a_win)  # warm-up
        cache = model.encode_history(x_hist, t_hist, a_hist)
        model.step_newest(x_new, t_new, a_new, None, cache)
        t_full_fwd = timed(lambda: model(x_win, t_win, a_win), 3, device)
        t_encode = timed(lambda: model.encode_history(x_hist, t_hist, a_hist), 3, device)
        t_step = timed(lambda: model.step_newest(x_new, t_new, a_new, None, cache), 5, device)

    # ---- real rollouts
    results: dict[str, dict[str, float]] = {}
    frames: dict[str, torch.Tensor] = {}
    for mode in ("full", "streaming"):
        cfg = RolloutConfig(**base_cfg, mode=mode)
        start, cpu_start = time.perf_counter(), time.process_time()
        frames[mode] = rollout(
            model, context, actions, args.frames, cfg, generator=torch.Generator().manual_seed(1)
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        results[mode] = {
            "ms_per_frame": 1000 * elapsed / args.frames,
            "cpu_ms_per_frame": 1000 * cpu / args.frames,
            "seconds": elapsed,
        }
    max_abs_diff = (frames["full"] - frames["streaming"]).abs().max().item()
    measured_ratio = results["full"]["ms_per_frame"] / results["streaming"]["ms_per_frame"]
    cpu_ratio = results["full"]["cpu_ms_per_frame"] / results["streaming"]["cpu_ms_per_frame"]

    proj_steps = 50
    proj_full = proj_steps * t_full_fwd
    proj_stream = t_encode + proj_steps * t_step
    projected_ratio = proj_full / proj_stream

    full, stream = results["full"], results["streaming"]
    rows = [
        (
            "full window, measured",
            f"{args.steps}",
            f"{full['ms_per_frame']:.0f}",
            f"{full['cpu_ms_per_frame']:.0f}",
            "",
        ),
        (
            "streaming, measured",
            f"{args.steps}",
            f"{stream['ms_per_frame']:.0f}",
            f"{stream['cpu_ms_per_frame']:.0f}",
            f"{measured_ratio:.1f}x wall, {cpu_ratio:.1f}x cpu",
        ),
        ("full window, projected", f"{proj_steps}", f"{1000 * proj_full:.0f}", "", ""),
        (
            "streaming, projected",
            f"{proj_steps}",
            f"{1000 * proj_stream:.0f}",
            "",
            f"{projected_ratio:.1f}x wall",
        ),
    ]
    print(
        f"rollout bench: tiny_unet3d {s}x{s}, window {window}, batch {b}, guidance 2.5 (2 branches), "
        f"{device}, {torch.get_num_threads()} threads"
    )
    print(f"{'path':<24}{'DDIM steps':>11}{'ms/frame':>11}{'CPU ms/frame':>14}  speed-up")
    for row in rows:
        print(f"{row[0]:<24}{row[1]:>11}{row[2]:>11}{row[3]:>14}  {row[4]}")
    print(
        f"components: window forward {1000 * t_full_fwd:.0f} ms (batch {2 * b}x{window}), "
        f"encode_history {1000 * t_encode:.0f} ms, step_newest {1000 * t_step:.0f} ms (batch {2 * b}x1)"
    )
    print(f"max |full - streaming| over {args.frames} generated frames: {max_abs_diff:.2e}")

    record = {
        "benchmark": "rollout",
        "model": {"preset": "tiny_unet3d", "parameters": model.num_parameters(), "frame": [3, s, s]},
        "settings": {
            "window": window,
            "context_frames": k,
            "generated_frames": args.frames,
            "ddim_steps_measured": args.steps,
            "batch": b,
            "guidance_scale": 2.5,
            "guidance_rescale": 0.7,
            "history_noise_level": 20,
            "eta": 1.0,
        },
        "measured": {
            "full_ms_per_frame": results["full"]["ms_per_frame"],
            "streaming_ms_per_frame": results["streaming"]["ms_per_frame"],
            "speedup": measured_ratio,
            "full_cpu_ms_per_frame": full["cpu_ms_per_frame"],
            "streaming_cpu_ms_per_frame": stream["cpu_ms_per_frame"],
            "speedup_cpu_time": cpu_ratio,
            "max_abs_diff_full_vs_streaming": max_abs_diff,
        },
        "components_ms": {
            "window_forward": 1000 * t_full_fwd,
            "encode_history": 1000 * t_encode,
            "step_newest": 1000 * t_step,
        },
        "projected_50_steps": {
            "full_ms_per_frame": 1000 * proj_full,
            "streaming_ms_per_frame": 1000 * proj_stream,
            "speedup": projected_ratio,
        },
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "note": "shared machine; components are best-of-N wall times, rollouts single runs (wall and process CPU)",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
