"""The pipeline's stage functions: each takes its context and its upstream results, returns outputs.

Stage functions run inside Ray tasks (see ``pipelines/dag.py``); they write large outputs to object
storage under ``ctx.output_dir`` and return URIs and small numbers only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pipelines.dag import StageContext, StageResult
from v2w_core import storage

log = logging.getLogger(__name__)


def ingest_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Record episodes from a simulator source, or convert the user's data set, into WebDataset shards +
    a parquet manifest."""
    from v2w_core.data.manifest import MANIFEST_NAME

    cfg = ctx.config
    out = storage.join(ctx.output_dir, "data")
    if cfg.get("input"):
        from v2w_core.data.converters import convert
        from v2w_core.data.manifest import Manifest
        from v2w_core.data.shards import ShardWriterConfig

        convert(cfg["source"], cfg["input"], out, ShardWriterConfig.from_dict(cfg["writer"]),
                **cfg["source_options"])
        manifest = Manifest.read(storage.join(out, MANIFEST_NAME))
    else:
        manifest = _record(cfg, out)
    splits = manifest.table.column("split").to_pylist()
    return {
        "manifest": storage.join(out, MANIFEST_NAME),
        "episodes": len(manifest),
        "train_episodes": splits.count("train"),
        "eval_episodes": splits.count("eval"),
        "frames": int(sum(manifest.table.column("length").to_pylist())),
        "shards": len(manifest.shard_uris()),
    }


def _record(cfg: Mapping[str, Any], out: str):
    from v2w_core.data.ingest import IngestConfig, ingest

    return ingest(IngestConfig.from_dict({
        "source": cfg["source"], "episodes": cfg["episodes"], "seed": cfg["seed"], "out": out,
        "writer": cfg["writer"], "source_options": cfg["source_options"],
    }))


def clips_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Read the shards back through Ray Data as training clips and reconcile the counts.

    This is the round trip the training stage relies on: every listed episode is either read (and, in
    lossless mode, its content hash verified against the manifest) or reported bad by shard and key.
    """
    from v2w_core.data.clips import ClipConfig, build_clip_dataset

    config = ClipConfig.from_dict(dict(ctx.config))
    clips = build_clip_dataset(inputs["ingest"].outputs["manifest"], config)
    frames = 0
    shape: list[int] = []
    for batch in clips.dataset.iter_batches(batch_size=32, batch_format="numpy"):
        frames += int(batch["frames"].shape[0] * batch["frames"].shape[1])
        shape = list(batch["frames"].shape[1:])
    report = clips.report()
    log.info("clips: %s", report.summary())
    return {
        "episodes_expected": report.expected_episodes,
        "episodes_read": report.read,
        "episodes_bad": report.num_bad,
        "clips": report.clips,
        "clips_expected": report.expected_clips,
        "clip_frames": frames,
        "clip_shape": shape,
        "reconciles": report.reconciles,
        "verified_lossless": bool(config.verify),
    }


def encode_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Encode the training clips with the configured VAE once; write them as parquet latent clips."""
    from v2w_core.data.clips import ClipConfig, build_clip_dataset
    from v2w_core.data.latents import encode_clips, read_latent_clips, write_latent_clips

    cfg = ctx.config
    clip_cfg = ClipConfig.from_dict({**cfg["clips"], "shuffle": "none"})  # order is the reader's business
    clips = build_clip_dataset(inputs["ingest"].outputs["manifest"], clip_cfg)
    out = storage.join(ctx.output_dir, "latents")
    write_latent_clips(encode_clips(clips.dataset, cfg["vae_uri"], batch_size=cfg["batch_size"],
                                    actors=cfg["actors"], num_gpus=cfg["gpus_per_actor"],
                                    num_cpus=cfg["cpus_per_actor"]), out)
    report = clips.report()
    if report.clips == 0:
        raise ValueError(f"encode: no clips were read from {inputs['ingest'].outputs['manifest']} "
                         f"({report.summary()})")
    first = read_latent_clips(out).take(1)[0]["frames"]
    log.info("encode: %d clips -> %s, latent clip shape %s", report.clips, out, list(first.shape))
    return {"latents": out, "clips": report.clips, "latent_clip_shape": list(first.shape),
            "vae_uri": cfg["vae_uri"], "reconciles": report.reconciles}


def _latent_dataset(inputs: Mapping[str, StageResult], clips: Mapping[str, Any]) -> Any:
    """The encode stage's latent clips when the pipeline has one, else None (train reads the shards)."""
    if "encode" not in inputs:
        return None
    from v2w_core.data.latents import read_latent_clips

    return read_latent_clips(inputs["encode"].outputs["latents"], shuffle=clips.get("shuffle", "none"),
                             seed=int(clips.get("seed", 0)))


# --- model stages ------------------------------------------------------------------------------------

def manifest_action_space(manifest_uri: str) -> dict[str, Any]:
    """The action space every episode of the data set shares (the model's action encoder is built for it)."""
    from v2w_core.data.manifest import Manifest

    rows = Manifest.read(manifest_uri).rows()
    spaces = {(r["action_type"], int(r["action_dim"])) for r in rows}
    if len(spaces) != 1:
        raise ValueError(f"{manifest_uri}: episodes mix action spaces {sorted(spaces)}; train one per data set")
    kind, dim = spaces.pop()
    return {"type": kind, "dim": dim}


def _train_config(ctx: StageContext, section: Mapping[str, Any], *, mode: str, manifest: str,
                  model: dict[str, Any], clips: Mapping[str, Any], tracking: Mapping[str, Any] | None):
    from v2w_core.train.config import TrainConfig

    data = dict(section)
    data.update({
        "experiment": f"{ctx.name}-{ctx.fingerprint}",
        "mode": mode,
        "storage_path": storage.join(ctx.output_dir, "runs"),
        "output_uri": storage.join(ctx.output_dir, "model"),
        "model": {**section.get("model", {}), **model},
        "data": {**section.get("data", {}), "manifest_uri": manifest, "clips": dict(clips)},
    })
    track = dict(section.get("tracking", {}))
    if tracking:
        track.update({"tracking_uri": tracking["tracking_uri"], "parent_run_id": ctx.mlflow_run_id,
                      "experiment": tracking["experiment_name"]})
    else:
        track["enabled"] = False
    data["tracking"] = track
    return TrainConfig.from_dict(data, source=f"pipeline stage {ctx.name}")


def base_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """A bidirectional base model: the user's pretrained diffusers weights, or pretrained here.

    With ``pretrained_uri`` set (a diffusers ``from_pretrained`` UNet directory or a saved world model,
    local or s3://) the stage only checks that it loads. Without it the stage pretrains the preset
    bidirectionally on action-free clips, so the Vid2World transfer really happens at small scale.
    """
    cfg = ctx.config
    if cfg.get("pretrained_uri"):
        from v2w_core.tracking import load_model, model_kind

        uri = cfg["pretrained_uri"]
        model = load_model(uri)
        return {"model": uri, "kind": model_kind(uri), "parameters": int(model.num_parameters()),
                "pretrained_here": False}
    from v2w_core.train.api import train

    manifest = inputs["ingest"].outputs["manifest"]
    tcfg = _train_config(ctx, cfg["train"], mode="pretrain", manifest=manifest,
                         model={"preset": cfg["preset"]}, clips=cfg["clips"], tracking=ctx.extra.get("tracking"))
    result = train(tcfg, dataset=_latent_dataset(inputs, cfg["clips"]))
    return {"model": result.model_uri, "kind": "world_model", "pretrained_here": True,
            "final_loss": _final(result.metrics, "loss"), "train_run_id": result.run_id}


def causalize_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Base → causal world model with weight transfer + an action encoder for the data set's actions."""
    import torch

    from v2w_core.models.causalize import causalize
    from v2w_core.models.io import save_world_model
    from v2w_core.tracking import load_model

    cfg = ctx.config
    model = load_model(inputs["base"].outputs["model"])
    if model.is_causal:
        raise ValueError(f"base {inputs['base'].outputs['model']} is already causal; give a bidirectional base")
    # How much the causal mask + weight transfer changes the base's prediction on a clip (diagnostic).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, model.config.data_channels, *model.config.sample_size, generator=gen)
    t = torch.full((1, 8), 500, dtype=torch.long)
    with torch.no_grad():
        before = model(x, t)
        causalize(model, cfg["causal_mode"], cfg["extrapolation_window"])
        after = model(x, t)
    space = manifest_action_space(inputs["ingest"].outputs["manifest"])
    model.set_action_space(space)
    out = storage.join(ctx.output_dir, "model")
    save_world_model(model, out)
    rel = float((after - before).norm() / before.norm().clamp_min(1e-12))
    return {"model": out, "causal_mode": cfg["causal_mode"], "action_space": space,
            "relative_change_vs_base": rel}


def train_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Vid2World fine-tuning: diffusion forcing + per-frame action drop on the causal model."""
    from v2w_core.train.api import train

    cfg = ctx.config
    causal = inputs["causalize"].outputs
    tcfg = _train_config(ctx, cfg["train"], mode="finetune", manifest=inputs["ingest"].outputs["manifest"],
                         model={"base_uri": causal["model"], "causal_mode": causal["causal_mode"],
                                "action_space": causal["action_space"]},
                         clips=cfg["clips"], tracking=ctx.extra.get("tracking"))
    result = train(tcfg, dataset=_latent_dataset(inputs, cfg["clips"]))
    return {"model": result.model_uri, "checkpoint": result.checkpoint_uri, "train_run_id": result.run_id,
            "final_loss": _final(result.metrics, "loss"), "start_step": _final(result.metrics, "start_step"),
            "step": _final(result.metrics, "step")}


def _final(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


# --- evaluation and registry ---------------------------------------------------------------------------

def evaluate_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Parallel held-out rollouts of the fine-tuned model + metrics, beside its baselines on the same split.

    The copy-last-frame baseline is part of every evaluation (``copy_last_*``); with ``baseline`` on, the
    untrained causal base is evaluated first ("eval:baseline") and its metrics and drift curves join the
    trained model's run ("eval:trained") as ``untrained_*``.
    """
    from v2w_core.eval import EvalConfig, evaluate

    cfg = ctx.config
    protocol = EvalConfig.from_dict({**cfg["protocol"], "vae_uri": cfg.get("vae_uri")}, source="evaluate.protocol")
    manifest = freeze_eval_split(inputs["ingest"].outputs["manifest"], protocol.split)
    tracking = ctx.extra.get("tracking") or {}
    common = {"tracking_uri": tracking.get("tracking_uri"), "parent_run_id": ctx.mlflow_run_id,
              "experiment": tracking.get("experiment_name", "vid2world")}
    if not tracking:
        common["tracking_uri"] = None
    base = None
    if cfg["baseline"]:
        # The untrained action encoder outputs exactly zero: its shuffled-action rollouts would equal the
        # recorded ones, so the baseline skips them (a third of the stage's rollouts on the demo).
        base_protocol = protocol.model_copy(update={"controllability": False})
        base = evaluate(inputs["causalize"].outputs["model"], manifest, base_protocol, run_name="eval:baseline",
                        tags={"v2w.baseline": "untrained-causal-base"}, **common)
    result = evaluate(inputs["train"].outputs["model"], manifest, protocol, run_name="eval:trained",
                      baseline=base, **common)
    out: dict[str, Any] = {"model": result.model_uri, "eval_run_id": result.run_id, "split_id": result.split_id,
                           "eval_manifest": manifest,
                           "metrics": result.metrics, "unavailable": result.unavailable,
                           "artifacts": result.artifacts, "degenerate": result.degenerate}
    m = result.metrics
    if "psnr_mean" in m and "copy_last_psnr_mean" in m:
        out["psnr_gain_over_copy_last_db"] = m["psnr_mean"] - m["copy_last_psnr_mean"]
    if base is not None:
        out["baseline_metrics"] = base.metrics
        out["baseline_run_id"] = base.run_id
        if "psnr_mean" in m and "psnr_mean" in base.metrics:
            out["psnr_gain_over_baseline_db"] = m["psnr_mean"] - base.metrics["psnr_mean"]
    return out


def register_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Register the model; alias ``champion`` moves only if it beats the copy-last-frame baseline and the
    champion on the same eval split. A degenerate model or one that does not beat copy-last is registered
    but rejected (tag ``v2w.rejected``, no alias): it is never champion."""
    from v2w_core.diffusion.rollout import RolloutConfig
    from v2w_core.tracking import REJECTED, register_and_promote, tag_data_lineage

    ev = inputs["evaluate"].outputs
    # The sampler settings the evaluate stage rolled the model out with (evaluate.protocol.rollout): the
    # registered pyfunc must sample the way its metrics were measured, not with RolloutConfig's defaults.
    rollout = RolloutConfig.from_dict(ctx.config["rollout"], source="evaluate.protocol.rollout")
    tracking = ctx.extra.get("tracking") or {}
    if not tracking:
        raise RuntimeError("the register stage needs MLflow: set run.tracking=true and MLFLOW_TRACKING_URI")
    promo = register_and_promote(ev["model"], ctx.config["model_name"], metrics=ev["metrics"],
                                 split_id=ev["split_id"], tracking_uri=tracking["tracking_uri"],
                                 run_id=ev["eval_run_id"], experiment=tracking["experiment_name"],
                                 rollout_config=rollout)
    tag_data_lineage(tracking["tracking_uri"], promo.name, promo.version, model_uri=ev["model"],
                     manifest_uri=inputs["ingest"].outputs["manifest"],
                     # records written before the eval split was frozen lack it: freeze it now
                     eval_manifest_uri=ev.get("eval_manifest") or freeze_eval_split(inputs["ingest"].outputs["manifest"]))
    if promo.decision == REJECTED:
        log.warning("register: %s v%s rejected: %s", promo.name, promo.version, promo.reason)
    return {"name": promo.name, "version": promo.version, "decision": promo.decision,
            "metric": promo.metric, "value": promo.value, "champion_version": promo.champion_version,
            "copy_last_value": promo.copy_last_value, "reason": promo.reason}


def freeze_eval_split(manifest_uri: str, split: str = "eval") -> str:
    """Snapshot the held-out split of a manifest that may still grow; returns the snapshot's URI.

    Evaluation and every later comparison (the register stage, scheduled retraining) must use the same
    episodes, while ingestion keeps appending new ones, some to the eval split. The snapshot holds that
    split's rows only, sits next to the manifest (so relative shard paths resolve) and is named by its
    content, so freezing the same split twice gives the same file.
    """
    import hashlib

    from v2w_core.data.manifest import Manifest

    held_out = Manifest.read(manifest_uri).select(split=split)
    rows = sorted(zip(held_out.episode_ids(), held_out.table.column("content_hash").to_pylist(), strict=True))
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
    uri = storage.join(held_out.root, f"manifest-{split}-{digest}.parquet")
    if not storage.exists(uri):
        held_out.write(uri)
    return uri
