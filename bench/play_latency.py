"""Frames per second and latency of ``v2w-play`` *through the served endpoint* (Ray Serve HTTP → one
replica → one streaming-rollout step → PNG → JSON), as a player's browser sees them.

Starts the real play server (``v2w_core.play.server.start``, Ray Serve on loopback) for a model, opens a
session from the blank context, fills the model's window (untimed, like ``--warmup``), and steps it
``--frames`` times per denoising-step count, one request at a time (what one player does: the next key
follows the last frame), holding a changing multi-hot action.
Per step: round-trip milliseconds (client clock) and the model's own milliseconds (``compute_ms`` from the
server); frames/s = frames / wall time of the loop.

    python bench/play_latency.py                       # CPU, the demo's architecture (tiny), 2 and 10 steps
    python bench/play_latency.py --model models:/vid2world-tiny@champion --local-stack
    python bench/play_latency.py --preset paper --device cuda --in-process --steps 10,50   # the lent GPU

Without ``--model`` the model is built from ``--preset`` with seeded random weights (timing does not depend
on what the weights learned): ``tiny`` is the demo's architecture (``tiny_unet3d``, 64×64 RGB, ViZDoom's 3
buttons); ``tiny-latent`` the same on 4×16×16 latents of a small ×4 VAE (a CPU check of the latent path);
``paper`` the ModelScope-size UNet3D (≈1.41 B) on 4×40×64 latents with a Stable-Diffusion-size VAE
(``AutoencoderKL``, ×8, 320×512 frames): what a paper-size world model plays like.

``--in-process`` drives the same :class:`~v2w_core.play.engine.PlayEngine` a Serve replica runs, without
Ray (the lent GPU has no Ray): latency is then the engine's step (rollout step, VAE decode, PNG), and the
HTTP/Serve overhead is the served CPU run's ``serving_overhead_ms_p50``.
``headline``: ``fps_cpu_tiny`` and ``latency_ms_p50`` / ``latency_ms_p95`` at ``--headline-steps`` (10, what
the demo evaluates and registers with); ``fps_gpu_paper_10_steps`` / ``fps_gpu_paper_50_steps`` from a
``--preset paper --device cuda`` run (null otherwise). → ``bench/results/play_latency.json``.
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


def measure(api, steps: int, frames: int, warmup: int, dim: int, window: int) -> dict:
    """Steady state: the blank context grows by one frame per step until the model's window is full, and
    each new window length is a new shape (on a GPU a new graph capture), so the ``window`` steps that fill
    it come before the ``warmup`` ones and are not timed."""
    session = api.new_session({"context": "blank", "seed": 0})
    for i in range(window + warmup):
        api.step(session, {"action": [float(i % 2 == 0)] + [0.0] * (dim - 1), "steps": steps})
    latencies, compute = [], []
    t0 = time.perf_counter()
    for i in range(frames):
        action = [float((i // 4 + j) % 3 == 0) for j in range(dim)]  # a held key that changes every 4 frames
        s = time.perf_counter()
        reply = api.step(session, {"action": action, "steps": steps})
        latencies.append((time.perf_counter() - s) * 1000)
        compute.append(reply["compute_ms"])
    wall = time.perf_counter() - t0
    api.close(session)
    return {
        "steps": steps, "frames": frames, "fps": round(frames / wall, 2),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p95": round(_percentile(latencies, 95), 1),
        "compute_ms_p50": round(statistics.median(compute), 1),
        "overhead_ms_p50": round(statistics.median(a - b for a, b in zip(latencies, compute, strict=True)), 1),
    }  # fmt: skip


PRESETS = ("tiny", "tiny-latent", "paper")


def build_preset(preset: str, root: Path) -> tuple[str, str | None, str]:
    """Save a causal world model of ``preset`` with seeded random weights (and its VAE, for the latent
    presets) under ``root``; returns (model dir, VAE dir or None, label)."""
    import torch

    from v2w_core.models.io import save_world_model
    from v2w_core.models.testing import tiny_vae, tiny_world_model

    space = {"type": "multi_hot", "dim": 3}
    vae = None
    if preset == "tiny":
        model = tiny_world_model(action_space=space, causal_mode="extrapolative")
        label = "tiny_unet3d (demo architecture, random weights), multi_hot 3"
    elif preset == "tiny-latent":
        from v2w_core.models.presets import tiny_unet3d_latent

        shape = tiny_unet3d_latent().model_dump(include={"base", "data_channels", "patch_size", "sample_size"})
        model = tiny_world_model(action_space=space, causal_mode="extrapolative", **shape)
        vae = tiny_vae()
        label = "tiny_unet3d_latent (random weights) on 4×16×16 latents + a ×4 VAE, multi_hot 3"
    else:
        from diffusers import AutoencoderKL

        from v2w_core.models.causalize import causalize
        from v2w_core.models.presets import modelscope_unet3d
        from v2w_core.models.world_model import WorldModel

        torch.manual_seed(0)
        model = causalize(WorldModel(modelscope_unet3d(action_space=space)), "extrapolative")
        # Stable Diffusion's VAE architecture (ModelScope's): ×8, 4 latent channels
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512)  # fmt: skip
        label = "modelscope_unet3d (≈1.41 B, random weights) on 4×40×64 latents + SD-size VAE, multi_hot 3"
    save_world_model(model, str(root / "model"))
    vae_dir = None
    if vae is not None:
        vae_dir = str(root / "vae")
        vae.save_pretrained(vae_dir, safe_serialization=True)
    return str(root / "model"), vae_dir, label


class InProcess:
    """The engine a Serve replica runs, called directly: the same requests and replies, no HTTP."""

    def __init__(self, settings) -> None:
        from v2w_core.play.engine import PlayEngine

        self.engine = PlayEngine(settings)

    def info(self) -> dict:
        return self.engine.info()

    def new_session(self, body: dict) -> str:
        return self.engine.new_session(json.dumps(body).encode())["session"]

    def step(self, session: str, body: dict) -> dict:
        return self.engine.step(session, json.dumps(body).encode())

    def close(self, session: str) -> None:
        self.engine.close(session)


class Served:
    """The play server's HTTP API (what a browser calls)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def info(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "api/info", timeout=30).read())

    def new_session(self, body: dict) -> str:
        return _post(self.url + "api/session", body)["session"]

    def step(self, session: str, body: dict) -> dict:
        return _post(f"{self.url}api/session/{session}/step", body)

    def close(self, session: str) -> None:
        req = urllib.request.Request(f"{self.url}api/session/{session}", method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="any v2w-play model URI (default: --preset with random weights)")
    p.add_argument("--vae", help="the VAE of a latent --model (default: its registered one)")
    p.add_argument("--preset", choices=PRESETS, default="tiny")
    p.add_argument("--in-process", action="store_true", help="drive the engine without Ray Serve (no HTTP)")
    p.add_argument("--local-stack", action="store_true", help="models:/ URIs from the local stack")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", default="2,10", help="denoising-step counts to measure")
    p.add_argument("--headline-steps", type=int, default=10)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--history-encoding", choices=["recompute", "incremental"], default="recompute",
                   help="the sessions' history mode (v2w-play --history-encoding)")  # fmt: skip
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
        src = resolve_source(args.model, vae=args.vae)
        model_dir, vae_dir, label = src.model_dir, src.vae_uri, src.label
    else:
        model_dir, vae_dir, label = build_preset(args.preset, Path(tempfile.mkdtemp(prefix="v2w-play-bench-")))
    settings = PlaySettings(model_dir=model_dir, vae_uri=vae_dir, label=label, device=args.device,
                            steps=args.headline_steps, max_steps=max([*steps_list, args.headline_steps]),
                            history_encoding=args.history_encoding)  # fmt: skip
    machine = machine_info(["ray", "torch"], torch_threads=torch.get_num_threads(), device=args.device)
    t0 = time.perf_counter()
    running = None
    if args.in_process:
        api = InProcess(settings)
    else:
        running = server.start(settings, port=args.port, num_gpus=1.0 if args.device.startswith("cuda") else 0.0)
        api = Served(running.url)
    startup_s = time.perf_counter() - t0
    try:
        info = api.info()
        dim = info["actions"]["dim"]
        rows = [measure(api, s, args.frames, args.warmup, dim, info["window"]) for s in steps_list]
    finally:
        if running is not None:
            server.stop(running)
    where = "in process (no HTTP)" if args.in_process else f"through {running.url}"

    print(f"v2w-play {where} ({label}, {args.device}, history {args.history_encoding}); start {startup_s:.1f} s")
    print(f"{'steps':>5} {'fps':>6} {'p50 ms':>7} {'p95 ms':>7} {'model ms':>8} {'overhead ms':>11}")
    for r in rows:
        print(f"{r['steps']:>5} {r['fps']:>6} {r['latency_ms_p50']:>7} {r['latency_ms_p95']:>7} "
              f"{r['compute_ms_p50']:>8} {r['overhead_ms_p50']:>11}")  # fmt: skip

    by_steps = {r["steps"]: r for r in rows}
    main_row = by_steps.get(args.headline_steps, rows[-1])
    cpu = not args.device.startswith("cuda")
    paper_gpu = not cpu and not args.model and args.preset == "paper"
    record = new_record(
        "play_latency", machine=machine,
        settings={"model": args.model or label, "preset": None if args.model else args.preset,
                  "vae": bool(vae_dir), "device": args.device, "steps": steps_list, "frames_per_measure": args.frames,
                  "window_filled_first": info["window"],
                  "warmup": args.warmup, "clients": 1, "history_encoding": args.history_encoding, "path": "in-process" if args.in_process else "served",
                  "start_s": round(startup_s, 1), "context": "blank", "frame_size": info["frame"],
                  "what": "sequential steps of one session; latency = the caller's round trip"},
        results=rows,
    )  # fmt: skip
    record["headline"] = {
        "steps": main_row["steps"],
        "path": "in-process" if args.in_process else "served",
        "history_encoding": args.history_encoding,
        "fps_cpu_tiny": main_row["fps"] if cpu and not args.model and args.preset == "tiny" else None,
        "fps_cpu_tiny_2_steps": by_steps[2]["fps"] if cpu and not args.model and args.preset == "tiny"
        and 2 in by_steps else None,
        "latency_ms_p50": main_row["latency_ms_p50"],
        "latency_ms_p95": main_row["latency_ms_p95"],
        "serving_overhead_ms_p50": None if args.in_process else main_row["overhead_ms_p50"],
        "fps_gpu_paper_10_steps": by_steps[10]["fps"] if paper_gpu and 10 in by_steps else None,
        "fps_gpu_paper_50_steps": by_steps[50]["fps"] if paper_gpu and 50 in by_steps else None,
        "machine": machine_summary(machine, f"{machine['torch_threads']} torch threads", load=True),
    }
    append_record(args.out, record)
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
