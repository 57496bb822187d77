"""Why the demo's base samples noise: its x0 estimate at mid noise levels is worse than the data's mean image.

Measured 2026-12-07 on both shipped-size bases (the 2-core CPU one, and one pretrained on an H100 on 10x the
data): at t = 300 the x0 that v-prediction implies, ``√ᾱ·x_t − √(1−ᾱ)·v̂``, is ~5 dB *worse* than predicting
the training set's mean frame, and a 5×5 box blur of x_t beats both — the network cannot reproduce the noise
in x_t exactly enough through its narrow 4×4-patch bottleneck (48 values per token, 64 channels), so the
noise leaks into the x0 estimate. (JiT, Li & He 2025, "Back to Basics: Let Denoising Generative Models
Denoise", report the same failure of ε/v-prediction for pixel patches wide relative to the network, and that
predicting x0 directly fixes it.)

This bench measures, per noise level, the x0 error (as PSNR, higher is better) of: the mean frame, the
best shrinkage of a blurred x_t towards it, a model directory (``--model``, e.g. the shipped base), and two
fresh ``tiny_unet3d`` networks trained here for ``--steps`` with the same data, seed and loss (v-MSE):
one whose output is read as v (``network_output="v"``, the paper's parametrization), one whose output is
read as x0 (``network_output="x0"``: the model converts it to v = (√ᾱ·x_t − x̂0) / max(√(1−ᾱ), 0.05)). One record goes to ``bench/results/denoiser_probe.json``.

    python bench/denoiser_probe.py --steps 120 --model asset://tiny_unet3d_vizdoom
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
import torch.nn.functional as F

from bench._record import append_record, machine_info, machine_summary, new_record

RESULTS = ROOT / "bench" / "results" / "denoiser_probe.json"
LEVELS = (700, 500, 300, 100, 20)


def _clips(seed: int, episodes: int) -> torch.Tensor:
    from v2w_core.data.inmemory import episode_clips, record_episodes

    eps = record_episodes("vizdoom", {"episode_length": 48}, seed=seed, indices=range(episodes), workers=2)
    frames, _ = episode_clips(eps, 16, 8, with_actions=False)
    return torch.as_tensor(np.asarray(frames)).permute(0, 1, 4, 2, 3).float().div(127.5).sub(1)


def _train(velocity, params, data: torch.Tensor, steps: int, batch: int, schedule, seed: int) -> float:
    from v2w_core.diffusion.losses import bidirectional_pretrain_loss

    opt = torch.optim.AdamW(params, lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        loss, _ = bidirectional_pretrain_loss(velocity, data[idx], schedule, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses[-20:]))


def _blur(x: torch.Tensor, k: int) -> torch.Tensor:
    b = x.flatten(0, 1)
    w = torch.ones(3, 1, k, k) / (k * k)
    return F.conv2d(F.pad(b, (k // 2,) * 4, mode="replicate"), w, groups=3).unflatten(0, x.shape[:2])


@torch.no_grad()
def _x0_psnr(velocities: dict, x0: torch.Tensor, mean: torch.Tensor, schedule) -> dict[int, dict[str, float]]:
    out = {}
    for t in LEVELS:
        g = torch.Generator().manual_seed(t)
        tt = torch.full(x0.shape[:2], t, dtype=torch.long)
        xt = schedule.add_noise(x0, torch.randn(x0.shape, generator=g), tt)
        ab = schedule.alphas_cumprod[t].float()
        err = {"mean_frame": ((mean - x0) ** 2).mean()}
        z, d = _blur(xt / ab.sqrt(), 5) - mean, x0 - mean
        lam = ((z * d).sum() / (z * z).sum()).clamp(0, 1)
        err["blur5_shrunk"] = ((mean + lam * z - x0) ** 2).mean()
        for name, v in velocities.items():
            err[name] = ((ab.sqrt() * xt - (1 - ab).sqrt() * v(xt, tt, None, None) - x0) ** 2).mean()
        out[t] = {k: round(float(10 * torch.log10(4 / e)), 2) for k, e in err.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--model", action="append", default=[], help="a model URI to measure as it is (repeatable)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    from v2w_core.diffusion.schedule import NoiseSchedule
    from v2w_core.models.presets import tiny_unet3d
    from v2w_core.models.world_model import WorldModel
    from v2w_core.tracking import load_model

    schedule = NoiseSchedule()
    train, held = _clips(1, 24), _clips(5, 2)[:8]
    mean = train.mean((0, 1))
    velocities, losses, t0 = {}, {}, time.perf_counter()
    for uri in args.model:
        velocities[uri] = load_model(uri).eval()
    for output in ("v", "x0"):
        torch.manual_seed(0)
        # the x0 net is WorldModelConfig.network_output="x0": the model itself converts its output to v
        net = WorldModel(tiny_unet3d(network_output=output)).train()
        losses[output] = _train(net, list(net.parameters()), train, args.steps, args.batch, schedule, seed=0)
        velocities[f"fresh_{output}_output"] = net.eval()
    table = _x0_psnr(velocities, held, mean, schedule)
    names = list(next(iter(table.values())))
    print(f"x0 PSNR (dB) on {len(held)} held-out clips; fresh nets: {args.steps} steps of {args.batch} clips")
    print("t".rjust(5) + "".join(n[-22:].rjust(24) for n in names))
    for t, row in table.items():
        print(str(t).rjust(5) + "".join(f"{row[n]:24.2f}" for n in names))
    machine = machine_info()
    record = new_record(
        "denoiser_probe", steps=args.steps, batch=args.batch, models=args.model, table=table,
        final_v_loss=losses, seconds=round(time.perf_counter() - t0, 1), machine=machine,
    )
    record["headline"] = {
        "x0_psnr_t300": {n: table[300][n] for n in names},
        "x0_output_minus_v_output_db_t300": round(table[300]["fresh_x0_output"] - table[300]["fresh_v_output"], 2),
        "steps": args.steps, "machine": machine_summary(machine, load=True),
    }
    append_record(args.out, record)
    print(f"record -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
