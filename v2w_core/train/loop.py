"""The per-worker training function run by ``ray.train.torch.TorchTrainer`` (one process per worker).

One loop serves both modes (DESIGN §1.2, §2.4):

* ``pretrain``: a fresh bidirectional world model from a preset, ordinary video-diffusion loss (one noise
  level per clip, no actions). This builds the base when no pretrained weights exist.
* ``finetune``: the Vid2World transfer: load a base (world-model directory, local or ``s3://``),
  causalize it, add the action encoder, train with diffusion forcing (a noise level per frame, actions
  aligned and dropped per frame with ``action_drop_prob``).

Each worker: builds the model, wraps it with ``deepspeed.initialize`` (ZeRO stage, precision, clipping,
accumulation, warm-up from :mod:`~v2w_core.train.deepspeed_config`), resumes from the newest *valid*
checkpoint if Ray hands one over, streams clips from its Ray Data shard, and every N optimizer steps
writes a DeepSpeed checkpoint that ``ray.train.report`` uploads into the run's storage. Rank 0 sends step
metrics to MLflow through a buffered logger and, at the end, exports the fp32 weights (gathered from
the ZeRO partitions) as a world-model safetensors directory.

Data position on resume: the checkpoint records (epoch, micro-batches consumed in that epoch); a resumed
worker re-opens that epoch and skips that many micro-batches. Ray Data's streaming split hands blocks to
workers dynamically, so the skipped clips are the same *number* but not necessarily the same clips as
before the failure (exact only for a deterministic, non-shuffled, single-block-per-worker dataset).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from v2w_core.train.config import ModelSection, TrainConfig
from v2w_core.train.deepspeed_config import (
    build_deepspeed_config,
    build_torch_optimizer,
    param_groups,
    setup_cpu_environment,
)

logger = logging.getLogger(__name__)

# Seconds the fault injection waits before killing the worker, so that the MLflow metrics of the steps
# before it are flushed. The resume step does not depend on it: ``_resume`` lists the run directory too.
_FAULT_SETTLE_S = 2.0


# ------------------------------------------------------------------------------------------- model
def model_config(cfg: TrainConfig) -> Any:
    """The WorldModelConfig of a pretraining run: the preset with ``model.overrides`` merged (validated)."""
    from v2w_core.models.presets import PRESETS
    from v2w_core.models.world_model import WorldModelConfig

    m = cfg.model
    if m.preset not in PRESETS:
        raise ValueError(f"model.preset {m.preset!r} unknown; choose one of {sorted(PRESETS)}")
    merged = PRESETS[m.preset]().model_dump()
    for key, value in m.overrides.items():  # one level deep, so {"base": {"block_out_channels": ...}} works
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    config = WorldModelConfig.from_dict(merged, source="model.overrides")
    from v2w_core.models.presets import input_rank_problem

    problem = input_rank_problem(config)
    if problem:
        raise ValueError(f"model.preset {m.preset!r} with model.overrides: {problem}")
    return config


def build_model(cfg: TrainConfig) -> Any:
    """The world model to train: a fresh preset (pretrain) or base → causalize → actions (finetune)."""
    from v2w_core.models.causalize import causalize
    from v2w_core.models.world_model import WorldModel

    m = cfg.model
    if cfg.mode == "pretrain":
        model = WorldModel(model_config(cfg))
    else:
        from v2w_core.tracking import load_model

        assert m.base_uri is not None
        model = load_model(m.base_uri)
        if not model.is_causal:
            causalize(model, m.causal_mode, m.extrapolation_window)
        elif model.config.causal_mode != m.causal_mode:
            logger.warning(
                "base is already causal (%s); model.causal_mode=%s ignored",
                model.config.causal_mode,
                m.causal_mode,
            )
        if model.action_encoder is None:
            model.set_action_space(m.action_space)
    if m.gradient_checkpointing:
        model.enable_gradient_checkpointing(m.gradient_checkpointing)
    if m.compile_blocks:
        compile_as_configured(model, m)
    return model


def compile_as_configured(model: Any, m: ModelSection) -> None:
    """The recipe's regional ``torch.compile`` (``model.compile_backend/compile_mode/compile_regions``)."""
    model.compile_blocks(m.compile_backend, m.compile_mode, m.compile_regions)


def export_model(engine: Any, rank: int, dest_dir: Path) -> Path | None:
    """Gather the full fp32 weights (collective: every rank calls this) and save them on rank 0.

    ``deepspeed.utils.safe_get_full_fp32_param`` returns the fp32 master of a ZeRO-1/2/3 partitioned
    parameter (an all-gather/all-reduce over the data-parallel group); without ZeRO the module's own
    parameter is the master. The weights go into a fresh fp32 copy of the model (rebuilt from its config)
    that is saved with the models' safetensors writer.
    """
    import torch
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    full: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        value = safe_get_full_fp32_param(param)
        if rank == 0:
            full[name] = (value if value is not None else param.detach()).float().cpu().clone()
    if rank != 0:
        return None
    return save_state_dict_as_model(module.config, full, module, dest_dir)


def save_state_dict_as_model(config: Any, params: dict[str, Any], like: Any, dest_dir: Path) -> Path:
    """Rebuild an fp32 world model from ``config``, load ``params`` (+ ``like``'s buffers), save it."""
    import torch

    from v2w_core.models.io import save_world_model
    from v2w_core.models.world_model import WorldModel

    fresh = WorldModel(config).float()
    state = fresh.state_dict()
    buffers = {k: v for k, v in like.state_dict().items() if k not in params}
    missing = [k for k in state if k not in params and k not in buffers]
    if missing:
        raise RuntimeError(f"export: no value for {missing[:5]} ...")
    merged = {
        k: (params[k] if k in params else buffers[k]).to(
            torch.float32 if state[k].is_floating_point() else state[k].dtype
        )
        for k in state
    }
    fresh.load_state_dict(merged, strict=True)
    save_world_model(fresh, str(dest_dir))
    return dest_dir


class Ema:
    """fp32 exponential moving average of the module's parameters (ZeRO ≤ 2: parameters are replicated).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates (diffusers' EMAModel does
    the same). A fixed 0.999 from step 0 keeps 0.999^n of the *initial* weights: 21 % after 1,548 steps,
    which turned a base pretrained on an H200 into a sampler of noise.
    """

    def __init__(self, module: Any, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def update(self, module: Any) -> None:
        import torch

        decay = self.current_decay()
        self.num_updates += 1
        with torch.no_grad():
            for n, p in module.named_parameters():
                self.shadow[n].mul_(decay).add_(p.detach().float(), alpha=1 - decay)

    def state_dict(self) -> dict[str, Any]:
        import torch

        return {**self.shadow, "__num_updates__": torch.tensor(self.num_updates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, v in state.items():
            if n == "__num_updates__":
                self.num_updates = int(v)
            else:
                self.shadow[n].copy_(v)


# -------------------------------------------------------------------------------------------- data
def batch_to_tensors(batch: dict[str, Any], cfg: TrainConfig, device: Any) -> tuple[Any, Any]:
    """A Ray Data batch → (x0 (B, F, C, H, W) float32 in [-1, 1] for pixels, recorded actions or None).

    Pixel clips arrive as uint8 (B, F, H, W, C); latent clips as float (B, F, C, H, W).
    """
    import torch

    frames = batch["frames"]
    if not isinstance(frames, torch.Tensor):
        frames = torch.as_tensor(frames)
    frames = frames.to(device, non_blocking=True)
    if frames.dtype == torch.uint8:
        if frames.ndim != 5:
            raise ValueError(f"pixel clips must be (B, F, H, W, C) uint8, got {tuple(frames.shape)}")
        x0 = frames.permute(0, 1, 4, 2, 3).float().div_(127.5).sub_(1.0)
    else:
        x0 = frames.float()
    actions = None
    if cfg.mode == "finetune":
        if "actions" not in batch:
            raise KeyError("finetune mode needs an 'actions' column in the clip dataset")
        actions = batch["actions"]
        if not isinstance(actions, torch.Tensor):
            actions = torch.as_tensor(actions)
        actions = actions.to(device, non_blocking=True)
    return x0, actions


def _data_epochs(shard: Any, cfg: TrainConfig, start_epoch: int, skip: int, device: Any):
    """Yield (epoch, index-in-epoch, batch) forever, starting at ``start_epoch`` after ``skip`` micro-batches."""
    epoch = start_epoch
    while True:
        empty = True
        for i, batch in enumerate(
            shard.iter_torch_batches(
                batch_size=cfg.micro_batch_per_worker,
                drop_last=True,
                prefetch_batches=cfg.data.prefetch_batches,
            )
        ):
            empty = False
            if i < skip:
                continue
            yield epoch, i, batch
        if empty:
            raise RuntimeError(
                f"the train dataset shard yielded no full batch of {cfg.micro_batch_per_worker} clips; "
                "add data or lower micro_batch_per_worker"
            )
        epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------------------- helpers
def _optimizer_partition_numels(engine: Any) -> dict[str, int]:
    """Elements this rank holds in the optimizer: fp32 master partition and Adam state tensors."""
    import torch

    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO-3 swaps sub-groups in and out of `inner`
        master = sum(t.numel() for t in opt.fp32_partitioned_groups_flat)
    elif hasattr(opt, "single_partition_of_fp32_groups"):  # ZeRO-1/2
        master = sum(t.numel() for t in opt.single_partition_of_fp32_groups)
    else:
        master = sum(p.numel() for g in inner.param_groups for p in g["params"])
    state = sum(
        t.numel()
        for s in inner.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor) and t.ndim > 0
    )
    return {"optim_master_numel": int(master), "optim_state_numel": int(state)}


def _all_ranks(value: dict[str, Any], world: int) -> list[dict[str, Any]]:
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def _mean_across_ranks(x: float, device: Any) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _resume(
    cfg: TrainConfig, engine: Any, ema: Ema | None, world: int, rank: int, device: Any
) -> tuple[dict[str, Any], int]:
    """Load the newest checkpoint that passes verification on every rank; returns (client state, fallbacks)."""
    import ray.train
    import torch
    import torch.distributed as dist

    from v2w_core import storage
    from v2w_core.train import checkpoint as ck

    fs, run_path = storage.get_filesystem(cfg.run_dir)
    candidates = ck.resume_candidates(ray.train.get_checkpoint(), fs, run_path)
    fallbacks = 0
    for ref in candidates:
        local = Path(tempfile.mkdtemp(prefix=f"v2w-resume-r{rank}-"))
        problems: list[str]
        try:
            ref.download(local)
            problems = ck.verify_checkpoint_dir(local, world_size=world)
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint is a bad candidate, not a crash
            problems = [f"download failed: {err}"]
        ok = torch.tensor([0 if problems else 1], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item() == 1:
            client = ck.load_into_engine(engine, local)
            if ema is not None and "ema" in client:
                ema.load_state_dict(client["ema"])
            shutil.rmtree(local, ignore_errors=True)
            if rank == 0:
                logger.info("resumed from %s (step %s)", ref.path, client.get("step"))
            return client, fallbacks
        fallbacks += 1
        if rank == 0 or problems:
            logger.warning(
                "checkpoint %s is unusable (%s); falling back to the previous one",
                ref.path,
                "; ".join(problems) or "invalid on another rank",
            )
        shutil.rmtree(local, ignore_errors=True)
    if candidates:
        logger.warning("no usable checkpoint among %d candidates; starting from scratch", len(candidates))
    return {}, fallbacks


def _to(t: Any, device: Any) -> Any:
    return None if t is None else t.to(device)


def _inject_fault(cfg: TrainConfig, step: int, rank: int, fresh_start: bool) -> None:
    fi = cfg.fault_injection
    if fi.at_step is None or not fresh_start or step != fi.at_step or rank != fi.rank:
        return
    logger.warning("fault injection: rank %d fails at step %d (%s)", rank, step, fi.kind)
    time.sleep(_FAULT_SETTLE_S)
    if fi.kind == "exit":
        os._exit(17)
    raise RuntimeError(f"injected failure at step {step} on rank {rank}")


# -------------------------------------------------------------------------------------------- loop
def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point for ``TorchTrainer(train_loop_per_worker=...)``; ``loop_config`` carries the TrainConfig."""
    cfg = TrainConfig.model_validate(loop_config["train_config"])
    setup_cpu_environment(cfg.scaling.use_gpu)
    # DeepSpeed's ZeRO all-gather calls a torch API deprecated in 2.13: one FutureWarning per step (137 of
    # the demo's 347 lines). Nothing for the user to act on; the DeepSpeed pin decides when it goes.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.*deprecated", category=FutureWarning)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import deepspeed
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from v2w_core.diffusion.losses import bidirectional_pretrain_loss, diffusion_forcing_loss
    from v2w_core.diffusion.schedule import NoiseSchedule
    from v2w_core.train import checkpoint as ck
    from v2w_core.train.flops import count_flops, mfu, peak_flops_for

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if not cfg.scaling.use_gpu:
        # One intra-op thread per (fractional-CPU) worker: oversubscribing a small box slows everyone.
        torch.set_num_threads(max(1, math.floor(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # same initial weights on every rank

    model = build_model(cfg).to(device)
    model_numel = sum(p.numel() for p in model.parameters())
    groups = param_groups(model, cfg)
    optimizer = build_torch_optimizer(groups, cfg, device_type=device.type)
    ds_config = build_deepspeed_config(cfg, world_size=world)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=groups if optimizer is None else None,
        config=ds_config,
        dist_init_required=False,
    )
    ck.install_safe_loader(engine)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.precision]
    ema = Ema(engine.module, cfg.ema.decay) if cfg.ema.enabled else None

    client, fallbacks = _resume(cfg, engine, ema, world, rank, device)
    start_step = int(client.get("step", 0))
    fresh_start = not client
    epoch = int(client.get("epoch", 0))
    skip = int(client.get("batch_in_epoch", 0))
    samples_seen = int(client.get("samples_seen", 0))
    # Distinct noise per rank and per resumed attempt, reproducible from (seed, rank, step).
    torch.manual_seed(cfg.seed * 1_000_003 + rank * 7919 + start_step)

    tracker = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        from v2w_core.tracking import BufferedMlflowLogger, environment_info

        tracker = BufferedMlflowLogger(loop_config["tracking_uri"], loop_config["mlflow_run_id"])
        tracker.log_params({**environment_info(), "env.world_size": str(world)} if fresh_start else {})
        tracker.set_tags(
            {"v2w.resumed_from_step": str(start_step), "v2w.checkpoint_fallbacks": str(fallbacks)}
        )

    schedule = NoiseSchedule()

    def velocity(x: Any, t: Any, a: Any = None, mask: Any = None) -> Any:
        if a is not None and a.is_floating_point():
            a = a.to(compute_dtype)
        return engine(x.to(compute_dtype), t, a, mask)

    def micro_loss(x0: Any, actions: Any, generator: Any = None) -> tuple[Any, dict[str, float]]:
        if cfg.mode == "pretrain":
            return bidirectional_pretrain_loss(velocity, x0, schedule, generator=generator)
        return diffusion_forcing_loss(
            velocity, x0, actions, schedule, action_drop_prob=cfg.action_drop_prob,
            history_prefix_prob=cfg.history_prefix_prob, history_prefix_max_t=cfg.history_prefix_max_t,
            generator=generator,
        )

    def probe_loss(probe: dict[str, Any]) -> float:
        """Loss on a fixed batch with fixed noise, timesteps and action drops: a noise-free progress signal
        (the training loss jumps with the random timesteps). Collective under ZeRO-3: all ranks call it."""
        gen = torch.Generator(device=device).manual_seed(cfg.seed + 4242)
        with torch.no_grad():
            value = micro_loss(probe["x0"].to(device), _to(probe.get("actions"), device), gen)[0].item()
        return _mean_across_ranks(value, device)

    probe: dict[str, Any] | None = client.get("probe")

    peak = cfg.peak_flops or (
        peak_flops_for(torch.cuda.get_device_name(device), cfg.precision) if device.type == "cuda" else None
    )
    flops_per_micro: int | None = None
    partition_metrics: dict[str, float] = {}
    last_metrics: dict[str, float] = {}
    losses: list[float] = []
    step = start_step
    micro = 0
    t_step = time.perf_counter()
    shard = ray.train.get_dataset_shard("train")
    data = _data_epochs(shard, cfg, epoch, skip, device)
    if rank == 0:
        logger.info(
            "training %s: %d params, ZeRO-%d, %s, %d workers, steps %d→%d",
            cfg.mode,
            model_numel,
            cfg.zero_stage,
            cfg.precision,
            world,
            start_step,
            cfg.max_steps,
        )

    position = {"step": step, "epoch": epoch, "batch_in_epoch": skip, "samples_seen": samples_seen}
    tag_box = [f"{int(time.time()) % 10**8:08d}{os.getpid() % 1000:03d}"]
    torch.distributed.broadcast_object_list(tag_box, src=0)  # one tag per attempt, rank 0's
    attempt_tag = str(tag_box[0])

    def checkpoint_and_report(position: dict[str, int], metrics: dict[str, float]) -> None:
        local = ck.save_checkpoint(
            engine,
            step=position["step"],
            rank=rank,
            world_size=world,
            client_state={
                **position,
                "probe": probe,
                **({"ema": ema.state_dict()} if ema is not None else {}),
            },
            meta={**position, "experiment": cfg.experiment, "zero_stage": cfg.zero_stage},
        )
        report = {**metrics, **position, "start_step": start_step, "checkpoint_fallbacks": fallbacks}
        try:
            ray.train.report(
                report,
                checkpoint=ray.train.Checkpoint.from_directory(str(local)),
                checkpoint_dir_name=ck.step_dir_name(position["step"], attempt_tag),
            )
        finally:
            shutil.rmtree(local, ignore_errors=True)

    while step < cfg.max_steps:
        epoch, index, batch = next(data)
        x0, actions = batch_to_tensors(batch, cfg, device)
        if probe is None:
            # Rank 0's first batch on every rank, so the value does not depend on which rank restores it.
            box = [
                {
                    "x0": x0.cpu().clone(),
                    **({"actions": actions.cpu().clone()} if actions is not None else {}),
                }
            ]
            torch.distributed.broadcast_object_list(box, src=0)
            probe = box[0]
            probe["loss_start"] = probe_loss(probe)
        if flops_per_micro is None and device.type == "cuda":
            # Forward FLOPs × 3 (backward ≈ 2 × forward). A counted backward outside engine.backward
            # would fire ZeRO's gradient hooks, so only the forward is run under the counter.
            with torch.no_grad():
                flops_per_micro = 3 * count_flops(lambda x=x0, a=actions: micro_loss(x, a))
        loss, stats = micro_loss(x0, actions)
        engine.backward(loss)
        engine.step()
        micro += 1
        samples_seen += x0.shape[0] * world
        losses.append(stats["loss"])
        if micro % cfg.grad_accum_steps:
            continue

        step += 1
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            # bf16 runs skip DeepSpeed's per-parameter overflow scan (see deepspeed_config); stop here so
            # that FailureConfig restarts from the last good checkpoint instead of training on NaNs.
            raise FloatingPointError(f"non-finite gradient norm {float(grad_norm)} at step {step}")
        now = time.perf_counter()
        step_time, t_step = now - t_step, now
        if not partition_metrics:
            node_id = ray.get_runtime_context().get_node_id()
            per_rank = _all_ranks({**_optimizer_partition_numels(engine), "node": node_id}, world)
            rank_nodes = [d.pop("node") for d in per_rank]
            nodes = list(dict.fromkeys(rank_nodes))  # the Ray nodes the workers run on, first-seen order
            partition_metrics = {"model_numel": float(model_numel), "num_nodes": float(len(nodes))}
            for r, d in enumerate(per_rank):
                partition_metrics[f"node_index_rank{r}"] = float(nodes.index(rank_nodes[r]))
                for k, v in d.items():
                    partition_metrics[f"{k}_rank{r}"] = float(v)
        if ema is not None:
            ema.update(engine.module)
        _inject_fault(cfg, step, rank, fresh_start)

        if step % cfg.log_every_n_steps == 0 or step == cfg.max_steps:
            mean_loss = _mean_across_ranks(sum(losses) / len(losses), device)
            metrics = {
                "loss": mean_loss,
                "lr": float(engine.get_lr()[0]),
                "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "step_time_s": step_time,
                "samples_per_s": cfg.global_batch / step_time if step_time > 0 else float("nan"),
                "epoch": float(epoch),
            }
            if flops_per_micro is not None:
                u = mfu(flops_per_micro * cfg.grad_accum_steps * world, step_time, peak, world)
                if u is not None:
                    metrics["mfu"] = u
            if device.type == "cuda":
                metrics["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            last_metrics = metrics
            if tracker is not None:
                tracker.log_metrics(metrics, step)
            if rank == 0:
                logger.info("step %d/%d loss %.4g ETA %s (%s)", step, cfg.max_steps, metrics["loss"],
                            time.strftime("%H:%M:%S", time.gmtime(step_time * (cfg.max_steps - step))),
                            " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "loss"))
        losses.clear()

        position = {"step": step, "epoch": epoch, "batch_in_epoch": index + 1, "samples_seen": samples_seen}
        if step % cfg.checkpoint.every_n_steps == 0 and step < cfg.max_steps:
            checkpoint_and_report(position, {**last_metrics, **partition_metrics})
            t_step = time.perf_counter()  # checkpoint time is not step time

    if probe is not None:
        partition_metrics["probe_loss_start"] = float(probe["loss_start"])
        partition_metrics["probe_loss_end"] = probe_loss(probe)
    final = _finish(cfg, engine, ema, rank, loop_config, tracker)
    # Ray Train (v2) returns the metrics of the newest *checkpoint* report as the run's result, so the
    # final checkpoint is written after the export and carries the final metrics.
    checkpoint_and_report(position, {**last_metrics, **partition_metrics, **final, "done": 1.0})


def _finish(
    cfg: TrainConfig,
    engine: Any,
    ema: Ema | None,
    rank: int,
    loop_config: dict[str, Any],
    tracker: Any,
) -> dict[str, float]:
    """Export the final weights (and EMA weights) to storage and MLflow; returns metrics about it."""
    import pyarrow.fs as pafs

    from v2w_core import storage, tracking

    out = Path(tempfile.mkdtemp(prefix="v2w-export-"))
    exported = export_model(engine, rank, out / "model")
    artifact_ok = 0.0
    if rank == 0 and exported is not None:
        if ema is not None:
            save_state_dict_as_model(engine.module.config, dict(ema.shadow), engine.module, out / "model_ema")
        fs, path = storage.get_filesystem(cfg.model_export_uri)
        for name in ("model", "model_ema"):
            if (out / name).is_dir():
                dest = path if name == "model" else path + "_ema"
                with contextlib.suppress(Exception):
                    fs.delete_dir(dest)
                fs.create_dir(dest, recursive=True)
                pafs.copy_files(
                    str(out / name), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
                )
        logger.info("exported model to %s", cfg.model_export_uri)
        if tracker is not None:
            tracker.close(timeout_s=cfg.tracking.flush_timeout_s)
            ok = tracking.log_artifacts(
                loop_config["tracking_uri"], loop_config["mlflow_run_id"], str(out / "model"), "model"
            )
            artifact_ok = 1.0 if ok else 0.0
    shutil.rmtree(out, ignore_errors=True)
    return {
        "mlflow_artifact_logged": artifact_ok,
        "mlflow_dropped_metrics": float(tracker.dropped) if tracker is not None else 0.0,
        "mlflow_failures": float(tracker.failures) if tracker is not None else 0.0,
        "mlflow_unsent": float(tracker.pending()) if tracker is not None else 0.0,
    }
