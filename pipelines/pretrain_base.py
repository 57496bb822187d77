"""Pretrain the demo's bidirectional base on one host (a GPU box, no Ray needed) and write it as safetensors.

Vid2World starts from a *pretrained* video diffusion model. No public one fits a 2-core CPU demo, so the
project trains its own small one, once, with its own code: ViZDoom episodes recorded in parallel
processes, cut into action-free 16-frame clips, ordinary (one noise level per clip) v-prediction
training of ``tiny_unet3d`` with :func:`v2w_core.train.local.train_local`, EMA weights exported with the
models' safetensors writer. Its data uses a different seed than the demo's episodes, so the demo's
held-out episodes are never seen in pretraining.

    python pipelines/pretrain_base.py --out /tmp/base --episodes 3000 --steps 12000 --device cuda

writes ``<out>/model`` (the world-model directory to ship as ``v2w_core/assets/tiny_unet3d_vizdoom``),
``<out>/provenance.json`` and ``<out>/samples.png`` (unconditional samples: rows of generated clips).
``--checkpoint DIR`` makes it resumable (state every 1,000 steps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("pretrain_base")

#: The demo's source settings (configs/tiny.yaml) apart from the episode length: longer episodes give
#: more distinct clips per recorded episode.
SOURCE = "vizdoom"
SOURCE_OPTIONS = {"episode_length": 64}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (local)")
    p.add_argument("--episodes", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1, help="data seed; the demo records with seed 0")
    p.add_argument("--steps", type=int, default=12000,
                   help="optimizer steps; 0 = as many as --time-budget-s allows (measured on a short probe), "
                        "so that the cosine schedule ends when the budget does")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--clip-length", type=int, default=16)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--preset", default="tiny_unet3d")
    p.add_argument("--network-output", choices=["v", "x0"], default="x0",
                   help="what the network's output means (WorldModelConfig.network_output): x0, because with "
                        "tiny_unet3d's 4x4 pixel patches v-prediction leaks noise into every sample "
                        "(bench/denoiser_probe.py)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="recording processes")
    p.add_argument("--checkpoint", default=None, help="resumable local state directory")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="stop training early after this many seconds (the model is still written)")
    return p.parse_args(argv)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except Exception:  # noqa: BLE001 - provenance is best effort outside a checkout
        return "unknown"


def save_samples(model, path: Path, *, seed: int = 0, rows: int = 4, frames: int = 8) -> None:
    """A PNG of ``rows`` unconditional clips (one row each) sampled from the bidirectional base."""
    import numpy as np
    import torch
    from PIL import Image

    from v2w_core.diffusion.video_sampler import sample_clips

    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    clips = sample_clips(model, rows, frames, num_inference_steps=50, generator=gen)
    img = ((clips.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    img = img.permute(0, 3, 1, 4, 2).reshape(rows * img.shape[3], frames * img.shape[4], 3)
    Image.fromarray(np.ascontiguousarray(img.numpy())).save(path)


def steps_for_budget(cfg, clips, device: str, budget_s: float) -> int:
    """How many optimizer steps fit in ``budget_s`` seconds on this device.

    Lent GPU time comes in fixed slices and the step time of a tiny model depends on the host's launch
    rate, so a fixed ``--steps`` either cuts the cosine schedule short or leaves time unused. Two short
    runs (10 and 40 steps) time the steady-state step without the first steps' warm-up.
    """
    from v2w_core.train.local import train_local

    seconds = []
    for n in (10, 40):
        probe = cfg.model_copy(update={"max_steps": n})
        seconds.append(train_local(probe, clips, device=device, log_every=0).seconds)
    per_step = max((seconds[1] - seconds[0]) / 30, 1e-4)
    steps = int(0.97 * budget_s / per_step)
    log.info("probe: %.1f ms/step -> %d steps fit in %.0f s", per_step * 1e3, steps, budget_s)
    return max(steps, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commit = _git_commit()  # the code this run imports: read now, not when it ends (commits may land meanwhile)
    import torch

    from v2w_core.data.inmemory import episode_clips, record_episodes
    from v2w_core.models.io import save_world_model
    from v2w_core.train.config import TrainConfig
    from v2w_core.train.local import ClipArrays, train_local

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    episodes = record_episodes(SOURCE, SOURCE_OPTIONS, seed=args.seed, indices=range(args.episodes),
                               workers=args.workers)
    frames, _ = episode_clips(episodes, args.clip_length, args.stride, with_actions=False)
    record_s = time.perf_counter() - t0
    log.info("recorded %d episodes -> %d clips of %d frames in %.0f s", len(episodes), len(frames),
             args.clip_length, record_s)
    del episodes

    cfg = TrainConfig.from_dict({
        "experiment": "pretrain-base", "mode": "pretrain", "storage_path": str(out),
        "model": {"preset": args.preset, "overrides": {"network_output": args.network_output}},
        "optim": {"lr": args.lr, "warmup_steps": args.warmup, "schedule": "cosine", "min_lr_ratio": 0.05,
                  "grad_clip": 1.0},
        "ema": {"enabled": True, "decay": args.ema},
        "max_steps": args.steps or 1, "micro_batch_per_worker": args.batch,
        "precision": "bf16" if args.device.startswith("cuda") else "fp32",
    }, source="pretrain_base")
    clips = ClipArrays(frames)
    if args.steps == 0:
        if args.time_budget_s is None:
            raise SystemExit("pretrain_base: --steps 0 needs --time-budget-s (the steps are fitted to it)")
        cfg = cfg.model_copy(update={"max_steps": steps_for_budget(cfg, clips, args.device, args.time_budget_s)})
    run = train_local(cfg, clips, device=args.device, checkpoint_dir=args.checkpoint,
                      checkpoint_every=1000, log_every=200, time_budget_s=args.time_budget_s)
    model, steps, losses, seconds = run.model, run.step, run.losses, run.seconds
    model = model.float().cpu()
    save_world_model(model, str(out / "model"))
    save_samples(model, out / "samples.png")
    weights = sorted((out / "model").glob("*.safetensors"))
    provenance = {
        "what": "bidirectional tiny_unet3d base, action-free, pretrained for the vid2world CPU demo",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": commit,
        "data": {"source": SOURCE, "options": SOURCE_OPTIONS, "seed": args.seed, "episodes": args.episodes,
                 "clips": len(frames), "clip_length": args.clip_length, "stride": args.stride,
                 "note": "the demo records seed 0: no demo episode is in this data"},
        "train": {"steps": steps, "batch": args.batch, "lr": args.lr, "schedule": "warmup+cosine",
                  "ema_decay": args.ema, "precision": cfg.precision, "objective": f"v-MSE, network output read as {args.network_output}, one t per clip",
                  "loss_first_100": sum(losses[:100]) / max(len(losses[:100]), 1),
                  "loss_last_100": sum(losses[-100:]) / max(len(losses[-100:]), 1)},
        "network_output": args.network_output,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
        "seconds": {"record": round(record_s, 1), "train": round(seconds, 1)},
        "sha256": {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in weights},
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "model" / "provenance.json").write_text(json.dumps(provenance, indent=2))
    print(json.dumps(provenance, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
