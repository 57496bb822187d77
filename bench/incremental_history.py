"""Incremental history cache vs. re-encoding the window (issue 19): what the approximation costs, what it saves.

``RolloutConfig.history_encoding="incremental"`` extends the streaming cache by each generated frame
instead of re-encoding the whole window. It is exact until the window slides; after that it is
sliding-window causal attention (docs/streaming.md). This bench measures the difference on a real
video model and real held-out ViZDoom chunks, over a horizon long enough for the window to slide:

* per generated frame, PSNR against the recorded frames for ``recompute`` and ``incremental`` (same
  seed), and for ``recompute`` with another seed — the sampler's own spread, the yardstick for the gap;
* relative L2 incremental vs recompute (same seed) and recompute vs recompute (other seed), split into
  the frames before and after the window starts sliding — under the protocol's sampler (fresh noise),
  where the two modes' draws part ways, and deterministically (clean history, η = 0), where they are
  equal until the slide, so what remains is the approximation alone;
* seconds per generated frame of each mode (this machine; recompute: the faster of its two runs; the
  GPU's figures are bench/rollout_gpu.py's ``compile_incremental`` row).

Model: ``--model`` (a saved world model directory or ``asset://`` URI; default the demo's packaged
pretrained base, causalized as the config says — a video model that knows how ViZDoom moves but no
actions, so the rollouts are action-free unless the model has an action head). Appends one record to
``bench/results/incremental_history.json`` (by code only) with a ``headline``.

    python bench/incremental_history.py                 # CPU, ~10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._record import append_record, machine_summary, new_record

RESULTS = ROOT / "bench" / "results" / "incremental_history.json"
log = logging.getLogger("incremental_history")


def _psnr_per_frame(gen: Any, truth: Any) -> list[float]:
    """Mean PSNR over chunks per generated frame, on [-1, 1] frames (peak-to-peak 2)."""
    mse = ((gen.clamp(-1, 1) - truth) ** 2).mean(dim=(0, 2, 3, 4))
    return [10 * math.log10(4 / max(float(m), 1e-12)) for m in mse]


def _rel_l2(a: Any, b: Any) -> list[float]:
    """Relative L2 of a against b per generated frame (over chunks, channels and pixels)."""
    return [float((a[:, i] - b[:, i]).norm() / b[:, i].norm()) for i in range(a.shape[1])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--set", action="append", default=[], help="pipeline config override key=value")
    p.add_argument("--model", default=None, help="world model dir / asset:// URI (default: the config's base)")
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--horizon", type=int, default=20, help="generated frames (window slides after 16 - context)")
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import numpy as np
    import torch

    from bench.world_model_quality import eval_chunks
    from pipelines.config import PipelineConfig
    from v2w_core import assets
    from v2w_core.data.clips import normalize_frames
    from v2w_core.diffusion.rollout import rollout
    from v2w_core.models.causalize import causalize
    from v2w_core.tracking import load_model

    torch.set_num_threads(args.threads)
    cfg = PipelineConfig.from_yaml(args.config, args.set)
    protocol = cfg.evaluate.protocol.model_copy(
        update={"context_frames": args.context, "horizon": args.horizon, "chunks_per_episode": 1}
    )
    _, _, chunks = eval_chunks(cfg, protocol, args.workers)
    chunks = chunks[: args.chunks]
    if not chunks:
        raise SystemExit(f"{args.config}: no held-out episode has {protocol.chunk_length} frames; lower --horizon")
    uri = args.model or cfg.base.pretrained_uri
    model = load_model(assets.resolve(uri))
    if not model.is_causal:
        causalize(model, cfg.causalize.causal_mode, cfg.causalize.extrapolation_window)
    model.eval()
    k, h = args.context, args.horizon
    frames = torch.stack([normalize_frames(torch.from_numpy(c.frames).permute(0, 3, 1, 2)).float() for c in chunks])
    context, truth = frames[:, :k], frames[:, k : k + h]
    actions = None
    if model.action_encoder is not None:
        actions = torch.from_numpy(np.stack([c.actions for c in chunks]))
    window = protocol.rollout.window
    slides_from = max(0, window - 1 - k)  # generated frames before the history exceeds the window

    # warm-up (first-call allocations and kernel selection would otherwise land on the first timed mode)
    for encoding in ("recompute", "incremental"):
        warm = protocol.rollout.model_copy(update={"history_encoding": encoding, "num_inference_steps": 2})
        rollout(model, context, actions, 2, warm, generator=torch.Generator().manual_seed(0))
    runs: dict[str, dict[str, Any]] = {}
    exact = {"history_noise_level": 0, "eta": 0.0}  # no draws after the initial noise: the modes' only
    for name, encoding, seed, extra in (  # difference is then the approximation itself
        ("recompute", "recompute", 0, {}), ("incremental", "incremental", 0, {}),
        ("recompute_seed1", "recompute", 1, {}),
        ("recompute_deterministic", "recompute", 0, exact), ("incremental_deterministic", "incremental", 0, exact),
    ):
        rcfg = protocol.rollout.model_copy(update={"history_encoding": encoding, **extra})
        t0 = time.perf_counter()
        out = rollout(model, context, actions, h, rcfg, generator=torch.Generator().manual_seed(seed)).float()
        seconds = time.perf_counter() - t0
        runs[name] = {"frames": out, "seconds_per_frame": seconds / h, "psnr_per_frame": _psnr_per_frame(out, truth)}
        log.info("%s: %.2f s per generated frame (batch %d), PSNR %.2f dB", name, seconds / h, len(chunks),
                 float(np.mean(runs[name]["psnr_per_frame"])))

    rec = runs["recompute"]["frames"]
    gap = _rel_l2(runs["incremental"]["frames"], rec)
    spread = _rel_l2(runs["recompute_seed1"]["frames"], rec)
    approx = _rel_l2(runs["incremental_deterministic"]["frames"], runs["recompute_deterministic"]["frames"])
    copy_last = _psnr_per_frame(context[:, -1:].expand_as(truth), truth)

    def mean(xs: list[float], lo: int, hi: int | None = None) -> float | None:
        part = xs[lo:hi]
        return round(float(np.mean(part)), 4) if part else None

    result = {
        "model": uri, "chunks": len(chunks), "context": k, "horizon": h, "window": window,
        "slides_from_frame": slides_from, "steps": protocol.rollout.num_inference_steps,
        "history_noise_level": protocol.rollout.history_noise_level, "actions": actions is not None,
        "threads": args.threads,
        "per_frame": {
            "psnr": {n: [round(v, 3) for v in r["psnr_per_frame"]] for n, r in runs.items()},
            "copy_last_psnr": [round(v, 3) for v in copy_last],
            "rel_l2_incremental_vs_recompute": [round(v, 4) for v in gap],
            "rel_l2_recompute_seed1_vs_recompute": [round(v, 4) for v in spread],
            "rel_l2_incremental_vs_recompute_deterministic": [round(v, 5) for v in approx],
        },
        "seconds_per_frame": {n: round(r["seconds_per_frame"], 3) for n, r in runs.items()},
    }
    recompute_seconds = min(runs["recompute"]["seconds_per_frame"], runs["recompute_seed1"]["seconds_per_frame"])
    headline = {
        "psnr_recompute": mean(runs["recompute"]["psnr_per_frame"], 0),
        "psnr_incremental": mean(runs["incremental"]["psnr_per_frame"], 0),
        "psnr_recompute_seed1": mean(runs["recompute_seed1"]["psnr_per_frame"], 0),
        "psnr_incremental_after_slide": mean(runs["incremental"]["psnr_per_frame"], slides_from),
        "psnr_recompute_after_slide": mean(runs["recompute"]["psnr_per_frame"], slides_from),
        "copy_last_psnr": mean(copy_last, 0),
        "rel_l2_gap_before_slide": mean(gap, 0, slides_from),
        "rel_l2_gap_after_slide": mean(gap, slides_from),
        "rel_l2_seed_spread_after_slide": mean(spread, slides_from),
        # clean history, η = 0: equal before the slide, so this is the approximation alone
        "rel_l2_deterministic_before_slide": mean(approx, 0, slides_from),
        "rel_l2_deterministic_after_slide": mean(approx, slides_from),
        "rel_l2_deterministic_last_frame": round(approx[-1], 4),
        # both recompute runs do the same work (another seed): the faster one, against timing noise
        "speedup": round(recompute_seconds / runs["incremental"]["seconds_per_frame"], 2),
        "seconds_per_frame_recompute": round(recompute_seconds, 3),
        "seconds_per_frame_incremental": result["seconds_per_frame"]["incremental"],
    }
    record = new_record("incremental_history")
    record.update(settings=vars(args) | {"out": str(args.out)}, result=result)
    record["headline"] = {**headline, "machine": machine_summary(record["machine"], f"{args.threads} threads")}
    append_record(args.out, record)
    print(f"{'':28}{'recompute':>12}{'incremental':>12}{'seed 1':>10}")
    print(f"{'PSNR dB (all frames)':28}{headline['psnr_recompute']:>12}{headline['psnr_incremental']:>12}"
          f"{headline['psnr_recompute_seed1']:>10}")
    print(f"{'PSNR dB (window sliding)':28}{headline['psnr_recompute_after_slide']:>12}"
          f"{headline['psnr_incremental_after_slide']:>12}")
    print(f"{'s / frame':28}{headline['seconds_per_frame_recompute']:>12}{headline['seconds_per_frame_incremental']:>12}")
    print(f"rel L2 incremental vs recompute after the slide {headline['rel_l2_gap_after_slide']} "
          f"(another seed: {headline['rel_l2_seed_spread_after_slide']}); copy-last PSNR {headline['copy_last_psnr']}")
    print(f"deterministic (clean history, eta 0): rel L2 {headline['rel_l2_deterministic_before_slide']} before the "
          f"slide, {headline['rel_l2_deterministic_after_slide']} after (last frame {headline['rel_l2_deterministic_last_frame']})")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
