"""The pipeline's stage functions: each takes its context and its upstream results, returns outputs.

Stage functions run inside Ray tasks (see ``pipelines/dag.py``); ``ctx.config`` is the stage's typed
config (``pipelines/config.py``: its section plus what it reads from others). They write large outputs to
object storage under ``ctx.output_dir`` and return URIs and small numbers only.

The model stages are thin adapters over functions of explicit arguments (:func:`finetune`,
:func:`evaluate_model`, :func:`register`) that scheduled retraining (``pipelines/retrain.py``) calls too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipelines.dag import StageContext, StageResult
from v2w_core import storage

if TYPE_CHECKING:
    from pipelines.config import (
        BaseStageConfig,
        CausalizeConfig,
        DataConfig,
        EncodeStageConfig,
        EvaluateStageConfig,
        RegisterStageConfig,
        TrainStageConfig,
    )
    from v2w_core.data.clips import ClipConfig
    from v2w_core.eval import EvalResult
    from v2w_core.train.config import TrainConfig, TrainRecipe

log = logging.getLogger(__name__)


def ingest_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Record episodes from a simulator source, or convert the user's data set, into WebDataset shards +
    a parquet manifest."""
    from v2w_core.data.manifest import MANIFEST_NAME

    cfg: DataConfig = ctx.config
    out = storage.join(ctx.output_dir, "data")
    if cfg.input:
        from v2w_core.data.converters import convert
        from v2w_core.data.manifest import Manifest

        convert(cfg.source, cfg.input, out, cfg.writer, **cfg.source_options)
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


def _record(cfg: DataConfig, out: str):
    from v2w_core.data.ingest import IngestConfig, ingest

    return ingest(IngestConfig(source=cfg.source, episodes=cfg.episodes, seed=cfg.seed, out=out,
                               writer=cfg.writer, source_options=cfg.source_options))


def clips_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Read the shards back through Ray Data as training clips and reconcile the counts.

    This is the round trip the training stage relies on: every listed episode is either read (and, in
    lossless mode, its content hash verified against the manifest) or reported bad by shard and key.
    """
    from v2w_core.data.clips import build_clip_dataset

    config: ClipConfig = ctx.config
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
    from v2w_core.data.clips import build_clip_dataset
    from v2w_core.data.latents import encode_clips, read_latent_clips, write_latent_clips

    cfg: EncodeStageConfig = ctx.config
    assert cfg.vae_uri is not None  # the encode stage exists only with latents.vae_uri set
    clip_cfg = cfg.clips.updated(shuffle="none")  # order is the reader's business
    clips = build_clip_dataset(inputs["ingest"].outputs["manifest"], clip_cfg)
    out = storage.join(ctx.output_dir, "latents")
    write_latent_clips(encode_clips(clips.dataset, cfg.vae_uri, batch_size=cfg.batch_size,
                                    actors=cfg.actors, num_gpus=cfg.gpus_per_actor,
                                    num_cpus=cfg.cpus_per_actor), out)
    report = clips.report()
    if report.clips == 0:
        raise ValueError(f"encode: no clips were read from {inputs['ingest'].outputs['manifest']} "
                         f"({report.summary()})")
    first = read_latent_clips(out).take(1)[0]["frames"]
    log.info("encode: %d clips -> %s, latent clip shape %s", report.clips, out, list(first.shape))
    return {"latents": out, "clips": report.clips, "latent_clip_shape": list(first.shape),
            "vae_uri": cfg.vae_uri, "reconciles": report.reconciles}


def _latent_dataset(inputs: Mapping[str, StageResult], clips: ClipConfig) -> Any:
    """The encode stage's latent clips when the pipeline has one, else None (train reads the shards)."""
    if "encode" not in inputs:
        return None
    from v2w_core.data.latents import read_latent_clips

    return read_latent_clips(inputs["encode"].outputs["latents"], shuffle=clips.shuffle, seed=clips.seed)


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


def train_config(recipe: TrainRecipe, *, experiment: str, mode: str, output_dir: str, manifest: str,
                 model: Mapping[str, Any], clips: ClipConfig, tracking: Mapping[str, Any] | None,
                 parent_run_id: str | None) -> TrainConfig:
    """A stage's training recipe completed for one run: its name, checkpoints under ``output_dir/runs``,
    the export at ``output_dir/model``, the model keys the pipeline decides (``model``), the data, and
    MLflow (nested under ``parent_run_id``; off without ``tracking``)."""
    from v2w_core.train.config import TrainConfig

    track = ({"tracking_uri": tracking["tracking_uri"], "parent_run_id": parent_run_id,
              "experiment": tracking["experiment_name"]} if tracking else {"enabled": False})  # fmt: skip
    return TrainConfig.from_recipe(
        recipe, source=f"pipeline run {experiment}", experiment=experiment, mode=mode,
        storage_path=storage.join(output_dir, "runs"), output_uri=storage.join(output_dir, "model"),
        model=recipe.model.updated(**model),
        data=recipe.data.updated(manifest_uri=manifest, clips=clips.model_dump(mode="json")),
        tracking=recipe.tracking.updated(**track),
    )  # fmt: skip


def base_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """A bidirectional base model: the user's pretrained diffusers weights, or pretrained here.

    With ``pretrained_uri`` set (a diffusers ``from_pretrained`` UNet directory or a saved world model,
    local or s3://) the stage only checks that it loads. Without it the stage pretrains the preset
    bidirectionally on action-free clips, so the Vid2World transfer really happens at small scale.
    """
    cfg: BaseStageConfig = ctx.config
    if cfg.pretrained_uri:
        from v2w_core.models.io import model_kind
        from v2w_core.tracking import load_model

        uri = cfg.pretrained_uri
        model = load_model(uri)
        return {"model": uri, "kind": model_kind(uri), "parameters": int(model.num_parameters()),
                "pretrained_here": False}
    from v2w_core.train.api import train

    tcfg = train_config(cfg.train, experiment=f"{ctx.name}-{ctx.fingerprint}", mode="pretrain",
                        output_dir=ctx.output_dir, manifest=inputs["ingest"].outputs["manifest"],
                        model={"preset": cfg.preset}, clips=cfg.clips, tracking=ctx.extra.get("tracking"),
                        parent_run_id=ctx.mlflow_run_id)
    result = train(tcfg, dataset=_latent_dataset(inputs, cfg.clips))
    return {"model": result.model_uri, "kind": "world_model", "pretrained_here": True,
            "final_loss": _final(result.metrics, "loss"), "train_run_id": result.run_id}


def causalize_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Base → causal world model with weight transfer + an action encoder for the data set's actions."""
    import torch

    from v2w_core.models.causalize import causalize
    from v2w_core.models.io import save_world_model
    from v2w_core.tracking import load_model

    cfg: CausalizeConfig = ctx.config
    model = load_model(inputs["base"].outputs["model"])
    if model.is_causal:
        raise ValueError(f"base {inputs['base'].outputs['model']} is already causal; give a bidirectional base")
    # How much the causal mask + weight transfer changes the base's prediction on a clip (diagnostic).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, model.config.data_channels, *model.config.sample_size, generator=gen)
    t = torch.full((1, 8), 500, dtype=torch.long)
    with torch.no_grad():
        before = model(x, t)
        causalize(model, cfg.causal_mode, cfg.extrapolation_window)
        after = model(x, t)
    space = manifest_action_space(inputs["ingest"].outputs["manifest"])
    model.set_action_space(space)
    out = storage.join(ctx.output_dir, "model")
    save_world_model(model, out)
    rel = float((after - before).norm() / before.norm().clamp_min(1e-12))
    return {"model": out, "causal_mode": cfg.causal_mode, "action_space": space,
            "relative_change_vs_base": rel}


def finetune(cfg: TrainStageConfig, *, experiment: str, output_dir: str, manifest: str,
             causal: Mapping[str, Any], tracking: Mapping[str, Any] | None, parent_run_id: str | None,
             dataset: Any = None) -> dict[str, Any]:
    """Vid2World fine-tuning of ``causal`` (the causalize stage's outputs: ``model``, ``causal_mode``,
    ``action_space``) on ``manifest``'s train split (or ``dataset``): the train stage, and retraining from
    the champion (``pipelines/retrain.py``). Returns the train stage's outputs."""
    from v2w_core.train.api import train

    tcfg = train_config(cfg.train, experiment=experiment, mode="finetune", output_dir=output_dir,
                        manifest=manifest, clips=cfg.clips, tracking=tracking, parent_run_id=parent_run_id,
                        model={"base_uri": causal["model"], "causal_mode": causal["causal_mode"],
                               "action_space": causal["action_space"]})
    result = train(tcfg, dataset=dataset)
    return {"model": result.model_uri, "checkpoint": result.checkpoint_uri, "train_run_id": result.run_id,
            "final_loss": _final(result.metrics, "loss"), "start_step": _final(result.metrics, "start_step"),
            "step": _final(result.metrics, "step")}


def train_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Vid2World fine-tuning: diffusion forcing + per-frame action drop on the causal model."""
    cfg: TrainStageConfig = ctx.config
    return finetune(cfg, experiment=f"{ctx.name}-{ctx.fingerprint}", output_dir=ctx.output_dir,
                    manifest=inputs["ingest"].outputs["manifest"], causal=inputs["causalize"].outputs,
                    tracking=ctx.extra.get("tracking"), parent_run_id=ctx.mlflow_run_id,
                    dataset=_latent_dataset(inputs, cfg.clips))


def _final(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


# --- evaluation and registry ---------------------------------------------------------------------------

def evaluate_model(cfg: EvaluateStageConfig, model: str, eval_manifest: str, *,
                   tracking: Mapping[str, Any] | None, parent_run_id: str | None,
                   baseline_model: str | None = None, run_name: str = "eval:trained") -> dict[str, Any]:
    """Evaluate ``model`` on the frozen held-out split ``eval_manifest`` under ``cfg``'s protocol and log
    the result as an eval run nested under ``parent_run_id`` (with ``tracking``); returns the evaluate
    stage's outputs. With ``baseline_model`` (the untrained causal base) that model is evaluated first
    ("eval:baseline") and its metrics and drift curves join the model's as ``untrained_*``."""
    from v2w_core.eval import evaluate

    protocol = cfg.eval_protocol

    def logged(result: EvalResult, name: str, tags: dict[str, str] | None = None,
               baseline_run_id: str | None = None) -> str | None:
        if not tracking:
            return None
        from v2w_core.tracking import log_evaluation

        return log_evaluation(tracking["tracking_uri"], tracking["experiment_name"], result,
                              parent_run_id=parent_run_id, run_name=name, tags=tags,
                              baseline_run_id=baseline_run_id)

    base = base_run_id = None
    if baseline_model is not None:
        # The untrained action encoder outputs exactly zero: its shuffled-action and steering-probe rollouts
        # would equal the recorded ones, so the baseline skips them (a third of the stage's rollouts on the demo).
        blind = protocol.updated(controllability=False, steering=protocol.steering.updated(enabled=False))
        base = evaluate(baseline_model, eval_manifest, blind)
        base_run_id = logged(base, "eval:baseline", {"v2w.baseline": "untrained-causal-base"})
    result = evaluate(model, eval_manifest, protocol, baseline=base)
    run_id = logged(result, run_name, baseline_run_id=base_run_id)
    out: dict[str, Any] = {"model": result.model_uri, "eval_run_id": run_id, "split_id": result.split_id,
                           "eval_manifest": eval_manifest,
                           "metrics": result.metrics, "unavailable": result.unavailable,
                           "artifacts": result.artifacts, "degenerate": result.degenerate}
    m = result.metrics
    if "psnr_mean" in m and "copy_last_psnr_mean" in m:
        out["psnr_gain_over_copy_last_db"] = m["psnr_mean"] - m["copy_last_psnr_mean"]
    if base is not None:
        out["baseline_metrics"] = base.metrics
        out["baseline_run_id"] = base_run_id
        if "psnr_mean" in m and "psnr_mean" in base.metrics:
            out["psnr_gain_over_baseline_db"] = m["psnr_mean"] - base.metrics["psnr_mean"]
    return out


def evaluate_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Parallel held-out rollouts of the fine-tuned model + metrics, beside its baselines on the same split.

    The copy-last-frame baseline is part of every evaluation (``copy_last_*``); with ``baseline`` on, the
    untrained causal base is evaluated first ("eval:baseline") and its metrics and drift curves join the
    trained model's run ("eval:trained") as ``untrained_*``.
    """
    cfg: EvaluateStageConfig = ctx.config
    manifest = freeze_eval_split(inputs["ingest"].outputs["manifest"], cfg.protocol.split)
    return evaluate_model(cfg, inputs["train"].outputs["model"], manifest, tracking=ctx.extra.get("tracking"),
                          parent_run_id=ctx.mlflow_run_id,
                          baseline_model=inputs["causalize"].outputs["model"] if cfg.baseline else None)


def register(cfg: RegisterStageConfig, evaluation: Mapping[str, Any], manifest: str, *,
             tracking: Mapping[str, Any] | None) -> dict[str, Any]:
    """Register the evaluated model (``evaluation``: the evaluate stage's outputs) trained on ``manifest``,
    with the rollout settings it was evaluated with, and promote it if it wins; returns the register stage's
    outputs."""
    from v2w_core.tracking import REJECTED, register_and_promote, tag_data_lineage

    if not tracking:
        raise RuntimeError("the register stage needs MLflow: set run.tracking=true and MLFLOW_TRACKING_URI")
    ev = evaluation
    # cfg.rollout is the evaluate stage's protocol.rollout: the registered pyfunc must sample the way its
    # metrics were measured, not with RolloutConfig's defaults.
    promo = register_and_promote(ev["model"], cfg.model_name, metrics=ev["metrics"],
                                 split_id=ev["split_id"], tracking_uri=tracking["tracking_uri"],
                                 run_id=ev["eval_run_id"], experiment=tracking["experiment_name"],
                                 rollout_config=cfg.rollout)
    tag_data_lineage(tracking["tracking_uri"], promo.name, promo.version, model_uri=ev["model"],
                     manifest_uri=manifest,
                     # records written before the eval split was frozen lack it: freeze it now
                     eval_manifest_uri=ev.get("eval_manifest") or freeze_eval_split(manifest),
                     vae_uri=cfg.vae_uri)
    if promo.decision == REJECTED:
        log.warning("register: %s v%s rejected: %s", promo.name, promo.version, promo.reason)
    return {"name": promo.name, "version": promo.version, "decision": promo.decision,
            "metric": promo.metric, "value": promo.value, "champion_version": promo.champion_version,
            "copy_last_value": promo.copy_last_value, "reason": promo.reason}


def register_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Register the model; alias ``champion`` moves only if it beats the copy-last-frame baseline and the
    champion on the same eval split. A degenerate model or one that does not beat copy-last is registered
    but rejected (tag ``v2w.rejected``, no alias): it is never champion."""
    return register(ctx.config, inputs["evaluate"].outputs, inputs["ingest"].outputs["manifest"],
                    tracking=ctx.extra.get("tracking"))


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
