"""Is the demo's world model a world model? Quality against trivial baselines, and quality vs steps.

Two parts, one JSON record (``bench/results/world_model_quality.json``, appended by this script only):

* ``demo`` (CPU, the product path): runs ``pipelines/full.py --local-stack --config <config>`` into a fresh
  ``run.root``, times it, and reads what its evaluate and register stages recorded: PSNR/SSIM of the
  registered model on held-out episodes, the copy-last-frame and untrained-causal-base baselines,
  controllability (recorded vs shuffled actions) and the registry's decision.
* ``curve`` (CPU or one GPU, no Ray): the same recipe as the config's train stage — same data (source,
  seed, episodes, split), base, causalization, batch, optimizer, schedule, EMA, steps — run in one
  process with :func:`v2w_core.train.local.train_local`, evaluated every ``--eval-every`` steps under the
  config's eval protocol: quality vs fine-tuning steps. ``--variant NAME:key=value,...`` adds recipes
  (keys of the train stage's TrainConfig, e.g. ``optim.lr=1e-3``, or ``clips.clip_length=8``,
  ``rollout.eta=0``) to compare at equal steps.

The ``headline`` (README figures) comes from the demo part when it ran, else from the curve's last point.

    python bench/world_model_quality.py --demo                      # CPU: the real demo, timed
    python bench/world_model_quality.py --curve --device cuda       # one GPU: quality vs steps
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._record import append_record, machine_summary, new_record

RESULTS = ROOT / "bench" / "results" / "world_model_quality.json"

log = logging.getLogger("world_model_quality")


# ----------------------------------------------------------------------------------------------- curve
def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for k in path:
        d = d.setdefault(k, {})
    d[last] = value


def _parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    import yaml

    name, _, body = text.partition(":")
    changes = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition("=")
        changes[key.strip()] = yaml.safe_load(raw)
    return name, changes


def _rollout_batch(model: Any, chunks: list[Any], protocol: Any, device: str, *, shuffled: bool = False,
                   probe: Any = None) -> Any:
    """All chunks as one batch (one generator): the curve evaluates often, and batch-1 rollouts
    (the eval stage's reproducible-per-chunk path) would dominate its time. Same seed for the
    recorded, the shuffled and every probe's run, so they differ only through the actions. ``probe``:
    a steering probe action held for ``protocol.steering.horizon`` frames instead of the recorded future."""
    import numpy as np
    import torch

    from v2w_core.data.clips import normalize_frames
    from v2w_core.diffusion.rollout import rollout
    from v2w_core.eval.rollouts import chunk_seed, shuffled_actions
    from v2w_core.eval.steering import held_actions

    k = protocol.context_frames
    horizon = protocol.horizon if probe is None else protocol.steering.horizon
    context = torch.stack([normalize_frames(torch.from_numpy(c.frames[:k]).permute(0, 3, 1, 2)).float()
                           for c in chunks]).to(device)
    if probe is not None:
        acts = [held_actions(c.actions, k, probe, horizon) for c in chunks]
    else:
        acts = [shuffled_actions(c.actions, k, chunk_seed(protocol.seed, c.chunk_id)) if shuffled else c.actions
                for c in chunks]
    actions = torch.from_numpy(np.stack(acts)).to(device)
    gen = torch.Generator(device="cpu").manual_seed(protocol.seed)
    with torch.no_grad():
        out = rollout(model, context, actions, horizon, protocol.rollout, generator=gen)
    return out.float().cpu()


def _score(model: Any, chunks: list[Any], protocol: Any, device: str) -> dict[str, Any]:
    """The eval stage's own metrics (:func:`v2w_core.eval.compute_metrics`: PSNR/SSIM, copy-last-frame,
    controllability, saturation) of batched rollouts, under the point's short keys."""
    from v2w_core.eval import compute_metrics
    from v2w_core.eval.rollouts import RolloutResult, steering_probes

    gen = _rollout_batch(model, chunks, protocol, device, shuffled=False).clamp(-1, 1).numpy()
    alt = None
    if protocol.controllability and model.action_encoder is not None:
        alt = _rollout_batch(model, chunks, protocol, device, shuffled=True).clamp(-1, 1).numpy()
    probes = steering_probes(model, protocol)
    steered = {name: _rollout_batch(model, chunks, protocol, device, probe=a).clamp(-1, 1).numpy()
               for name, a in probes.items()}
    results = [RolloutResult(c.chunk_id, c.episode_id, gen[i], None if alt is None else alt[i],
                             steered={name: v[i] for name, v in steered.items()}, probes=probes)
               for i, c in enumerate(chunks)]
    report = compute_metrics(chunks, results, protocol)
    m = report.metrics
    out: dict[str, Any] = {"psnr": m["psnr_mean"], "ssim": m["ssim_mean"],
                           "copy_last_psnr": m["copy_last_psnr_mean"], "copy_last_ssim": m["copy_last_ssim_mean"],
                           "saturated_frac": m["gen_saturated_frac"],
                           "psnr_per_step": [round(v, 3) for v in report.drift["psnr"]]}
    for key in ("ctrl_psnr_gain_db", "ctrl_rollout_diff", "fvd", "copy_last_fvd", "fid", "copy_last_fid",
                "motion_dx_corr", "motion_dx_abs", "motion_dx_truth_abs"):
        if key in m:
            out[key] = m[key]
    out.update({key: v for key, v in m.items() if key.startswith("steer_")})
    if "lpips_mean" in m:
        out["lpips"], out["copy_last_lpips"] = m["lpips_mean"], m["copy_last_lpips_mean"]
    return out


def _save_strip(model: Any, chunks: list[Any], protocol: Any, device: str, path: Path, rows: int = 3) -> None:
    """The README's picture: truth / model / model under shuffled actions for the first chunks."""
    from PIL import Image

    from v2w_core.eval.videos import rollout_strip

    picked = chunks[:rows]
    gen = _rollout_batch(model, picked, protocol, device, shuffled=False).clamp(-1, 1).numpy()
    alt = _rollout_batch(model, picked, protocol, device, shuffled=True).clamp(-1, 1).numpy()
    strip = rollout_strip([(c.chunk_id, c.frames, g, a) for c, g, a in zip(picked, gen, alt, strict=True)],
                          protocol.context_frames, scale=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path)


def eval_chunks(cfg: Any, protocol: Any, workers: int) -> tuple[list[Any], list[Any], list[Any]]:
    """The config's episodes (recorded in process), its train split, and the held-out chunks of
    ``protocol`` — the eval stage's chunks, without the object store."""
    from v2w_core.data.inmemory import record_episodes, split_episodes
    from v2w_core.eval.rollouts import chunks_from_episodes

    t0 = time.perf_counter()
    episodes = record_episodes(cfg.data.source, cfg.data.source_options, seed=cfg.data.seed,
                               indices=range(cfg.data.episodes), workers=workers)
    train_eps, eval_eps = split_episodes(episodes, cfg.data.writer.eval_fraction)
    chunks = chunks_from_episodes([e for e in eval_eps if e.length >= protocol.chunk_length], protocol)
    if protocol.max_episodes is not None:
        keep = sorted({c.episode_id for c in chunks})[: protocol.max_episodes]
        chunks = [c for c in chunks if c.episode_id in keep]
    log.info("data: %d train / %d eval episodes, %d eval chunks (%.0f s)", len(train_eps), len(eval_eps),
             len(chunks), time.perf_counter() - t0)
    return episodes, train_eps, chunks


def run_curve(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipelines.config import PipelineConfig
    from v2w_core import assets
    from v2w_core.data.inmemory import episode_clips
    from v2w_core.eval.config import EvalConfig
    from v2w_core.models.causalize import causalize
    from v2w_core.tracking import load_model
    from v2w_core.train.config import TrainConfig
    from v2w_core.train.local import ClipArrays, train_local

    cfg = PipelineConfig.from_yaml(args.config, args.set)
    base_uri = assets.resolve(args.base or cfg.base.pretrained_uri or "")
    protocol = cfg.evaluate.protocol
    t0 = time.perf_counter()
    episodes, train_eps, chunks = eval_chunks(cfg, protocol, args.workers)
    space = {"type": episodes[0].action_space.type, "dim": episodes[0].action_space.dim}

    def fresh_causal() -> Any:
        model = load_model(base_uri)
        causalize(model, cfg.causalize.causal_mode, cfg.causalize.extrapolation_window)
        model.set_action_space(space)
        return model

    untrained = _score(fresh_causal().to(args.device).eval(), chunks, protocol, args.device)
    variants = [("config", {})] + [_parse_variant(v) for v in args.variant]
    copy_last = {"psnr": untrained["copy_last_psnr"], "ssim": untrained["copy_last_ssim"]}  # same chunks
    out: dict[str, Any] = {"copy_last": copy_last, "untrained": untrained, "variants": {}}
    for name, changes in variants:
        section = cfg.train.train.model_dump(mode="json", exclude_unset=True)  # the recipe as written
        clip_cfg = cfg.clips.model_dump()
        proto = json.loads(protocol.model_dump_json())
        for key, value in changes.items():
            if key.startswith("clips."):
                clip_cfg[key[6:]] = value
            elif key.startswith(("rollout.", "protocol.")):
                _set(proto, key.split(".", 1)[1] if key.startswith("protocol.") else key, value)
            else:
                _set(section, key, value)
        workers = section.get("scaling", {}).get("num_workers", 2)
        batch = section.get("micro_batch_per_worker", 2) * workers  # the global batch of the pipeline run
        section.update({"experiment": f"curve-{name}", "mode": "finetune", "storage_path": "/tmp/curve",
                        "micro_batch_per_worker": batch, "scaling": {"num_workers": 1},
                        "model": {"base_uri": base_uri, "action_space": space}})
        if args.steps and "max_steps" not in changes:
            section["max_steps"] = args.steps
        tcfg = TrainConfig.from_dict(section, source=f"variant {name}")
        vprotocol = EvalConfig.model_validate(proto)
        frames, actions = episode_clips(train_eps, clip_cfg["clip_length"], clip_cfg["stride"])
        points: list[dict[str, Any]] = []

        def evaluate(step: int, model: Any, points: list = points, vprotocol: Any = vprotocol,
                     name: str = name) -> None:
            t = time.perf_counter()
            score = _score(model, chunks, vprotocol, args.device)
            points.append({"step": step, **score})
            log.info("[%s] step %d: psnr %.2f ssim %.3f ctrl %.2f dB steer gain %.2f %s sat %.3f (%.0f s)",
                     name, step, score["psnr"], score["ssim"], score.get("ctrl_psnr_gain_db", float("nan")),
                     score.get("steer_dx_gain", float("nan")), _by_probe(score, "steer_dx_"),
                     score["saturated_frac"], time.perf_counter() - t)

        torch.manual_seed(tcfg.seed)
        run = train_local(tcfg, ClipArrays(frames, actions), device=args.device, model=fresh_causal(),
                          callback=evaluate, callback_every=args.eval_every or tcfg.max_steps,
                          log_every=max(tcfg.max_steps // 10, 1))
        if args.strip and name == "config":
            _save_strip(run.model, chunks, vprotocol, args.device, Path(args.strip))
        out["variants"][name] = {"changes": changes, "steps": run.step, "train_seconds": run.seconds,
                                 "clips": len(frames), "global_batch": batch, "curve": points}
    out["seconds"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------------ demo
def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """The product path: the whole pipeline on the local stack, into a fresh run root, timed."""
    from infra.stack import StackConfig
    from pipelines.config import PipelineConfig
    from v2w_core import storage

    stamp = int(time.time())
    overrides = [*args.set, f"run.root=s3://v2w/bench/quality-{stamp}", f"run.name=quality-{stamp}"]
    cfg = PipelineConfig.from_yaml(args.config, overrides)
    cmd = [sys.executable, "pipelines/full.py", "--local-stack", "--config", args.config]
    for item in overrides:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "infra.stack", "start"], cwd=ROOT, check=True)
    proc = subprocess.run(cmd, cwd=ROOT, check=False)
    minutes = (time.perf_counter() - t0) / 60
    if proc.returncode:
        raise SystemExit(f"demo pipeline failed (exit {proc.returncode})")
    for key, value in StackConfig.from_env().client_env().items():
        os.environ.setdefault(key, value)
    records: dict[str, Any] = {}
    for stage in ("evaluate", "register", "train"):
        found = [json.loads(storage.read_bytes(u)) for u in storage.list_files(storage.join(cfg.run.root, "stages", stage))
                 if u.endswith(".json")]
        records[stage] = next((r["outputs"] for r in found if "outputs" in r), {})  # the stage's completion record
    ev = records["evaluate"]
    return {"pipeline_minutes": minutes, "root": cfg.run.root, "horizon": cfg.evaluate.protocol.horizon,
            "metrics": ev.get("metrics", {}), "baseline_metrics": ev.get("baseline_metrics", {}),
            "register": records["register"], "train": records["train"]}


# ------------------------------------------------------------------------------------------------ main
def _by_probe(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Per steering probe: ``steer_dx_<probe>`` (or ``steer_dx_truth_<probe>``) as {probe: px}."""
    skip = ("steer_dx_truth_", "steer_dx_gain") if prefix == "steer_dx_" else ()
    return {k[len(prefix):]: round(v, 2) for k, v in metrics.items() if k.startswith(prefix) and not k.startswith(skip)}


def headline(record: dict[str, Any]) -> dict[str, Any]:
    demo, curve = record.get("demo"), record.get("curve")
    if demo:
        m = demo["metrics"]
        return {"psnr": m.get("psnr_mean"), "ssim": m.get("ssim_mean"),
                "copy_last_psnr": m.get("copy_last_psnr_mean"), "copy_last_ssim": m.get("copy_last_ssim_mean"),
                "untrained_psnr": demo["baseline_metrics"].get("psnr_mean"),
                "ctrl_psnr_gain_db": m.get("ctrl_psnr_gain_db"), "horizon": demo["horizon"],
                "motion_dx_corr": m.get("motion_dx_corr"), "motion_dx_abs": m.get("motion_dx_abs"),
                "motion_dx_truth_abs": m.get("motion_dx_truth_abs"),
                "untrained_motion_dx_abs": demo["baseline_metrics"].get("motion_dx_abs"),
                "steer_dx_gain": m.get("steer_dx_gain"), "steer_dx": _by_probe(m, "steer_dx_"),
                "steer_dx_truth": _by_probe(m, "steer_dx_truth_"),
                "fvd": m.get("fvd"), "copy_last_fvd": m.get("copy_last_fvd"),
                "untrained_fvd": demo["baseline_metrics"].get("fvd"),
                "fid": m.get("fid"), "copy_last_fid": m.get("copy_last_fid"),
                "lpips": m.get("lpips_mean"), "copy_last_lpips": m.get("copy_last_lpips_mean"),
                "demo_minutes": round(demo["pipeline_minutes"] + record.get("install_minutes", 0.0), 2),
                "decision": demo["register"].get("decision"), "machine": machine_summary(record["machine"])}
    last = curve["variants"]["config"]["curve"][-1]
    return {"psnr": last["psnr"], "ssim": last["ssim"], "copy_last_psnr": curve["copy_last"]["psnr"],
            "copy_last_ssim": curve["copy_last"]["ssim"], "untrained_psnr": curve["untrained"]["psnr"],
            "ctrl_psnr_gain_db": last.get("ctrl_psnr_gain_db"), "horizon": record["horizon"],
            "motion_dx_corr": last.get("motion_dx_corr"), "motion_dx_abs": last.get("motion_dx_abs"),
            "motion_dx_truth_abs": last.get("motion_dx_truth_abs"),
            "steer_dx_gain": last.get("steer_dx_gain"), "steer_dx": _by_probe(last, "steer_dx_"),
            "steer_dx_truth": _by_probe(last, "steer_dx_truth_"),
            "fvd": last.get("fvd"), "copy_last_fvd": last.get("copy_last_fvd"), "fid": last.get("fid"),
            "lpips": last.get("lpips"), "demo_minutes": None, "source": "curve (one process)",
            "machine": machine_summary(record["machine"])}


def print_table(record: dict[str, Any]) -> None:
    h = record["headline"]
    print(f"{'metric':<22}{'value':>12}")
    for k, v in h.items():
        if k != "machine":
            print(f"{k:<22}{(f'{v:.3f}' if isinstance(v, float) else str(v)):>12}")
    for name, var in (record.get("curve") or {}).get("variants", {}).items():
        print(f"\ncurve {name} {var['changes']}")
        print(f"{'step':>6}{'psnr':>8}{'ssim':>8}{'ctrl dB':>9}{'sat':>7}")
        for p in var["curve"]:
            print(f"{p['step']:>6}{p['psnr']:>8.2f}{p['ssim']:>8.3f}{p.get('ctrl_psnr_gain_db', math.nan):>9.2f}"
                  f"{p['saturated_frac']:>7.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--set", action="append", default=[], help="pipeline config override key=value")
    p.add_argument("--demo", action="store_true", help="run the real pipeline (CPU, local stack)")
    p.add_argument("--install-minutes", type=float, default=0.0,
                   help="environment install time of a fresh clone, added to demo_minutes")
    p.add_argument("--curve", action="store_true", help="quality vs fine-tuning steps in one process")
    p.add_argument("--base", default=None, help="base model URI (default: base.pretrained_uri)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the config's)")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--variant", action="append", default=[])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--strip", default=None, help="save a PNG strip of the config recipe's rollouts here")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if not (args.demo or args.curve):
        p.error("choose --demo and/or --curve")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipelines.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(args.config, args.set)
    record = new_record("world_model_quality", config=args.config, overrides=args.set,
                        horizon=cfg.evaluate.protocol.horizon, install_minutes=args.install_minutes)
    if args.demo:
        record["demo"] = run_demo(args)
    if args.curve:
        record["curve"] = run_curve(args)
    record["headline"] = headline(record)
    print_table(record)
    append_record(args.out, record)
    print(f"\nappended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
