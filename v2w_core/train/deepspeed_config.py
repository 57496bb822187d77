"""DeepSpeed configuration from a :class:`~v2w_core.train.config.TrainConfig`, and CPU setup.

Why a builder instead of a JSON file: the DeepSpeed dict must agree with the run config (micro batch per
worker, accumulation, clipping, precision, warm-up) and with the hardware (CPU runs use gloo and must not
ask for CUDA-only fused kernels). Deriving it in one place keeps them from drifting.

Facts about DeepSpeed on CPU that shape this module (DeepSpeed 0.19, ``DS_BUILD_OPS=0`` wheel):

* ``DS_ACCELERATOR=cpu`` must be set before ``deepspeed`` is imported (the accelerator is chosen once).
* Every ``deepspeed.initialize`` creates a ``TorchBackend`` that JIT-builds the ``deepspeed_shm_comm`` op
  (C++, ≈1 min on an idle core; 160 s on two contended cores measured here). The build is cached under
  ``~/.cache/torch_extensions`` (or ``TORCH_EXTENSIONS_DIR``) and reused by every later process: 15 s for a
  whole 2-process ZeRO-3 init + 5 steps afterwards. :func:`prebuild_cpu_ops` builds it once up front.
* DeepSpeed's own optimizers on CPU (``DeepSpeedCPUAdam``) are another JIT build; ``torch.optim.AdamW``
  works with ZeRO 1–3 under ``zero_allow_untested_optimizer`` and needs no build, so it is the default
  (and on CUDA it is the fused multi-tensor kernel, which is what the paper-scale step wants too).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from v2w_core.train.config import TrainConfig

logger = logging.getLogger(__name__)

# Large enough that DeepSpeed's own periodic prints never fire; we log our own step metrics.
_NEVER = 10**9


def setup_cpu_environment(use_gpu: bool) -> None:
    """Select DeepSpeed's CPU accelerator when not on GPU; must run before ``import deepspeed``."""
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cuda")


def build_deepspeed_config(cfg: TrainConfig, *, world_size: int | None = None) -> dict[str, Any]:
    """The ``config`` dict for ``deepspeed.initialize``.

    ``world_size`` (default: ``cfg.scaling.num_workers``) only fixes ``train_batch_size`` so DeepSpeed's
    own consistency check (micro × accum × world = global) runs against the real world size.
    """
    world = world_size if world_size is not None else cfg.scaling.num_workers
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        zero.update(
            {
                # Overlapping the gradient reduce with backward is the main lever of ZeRO-2 step time on GPU;
                # on CPU/gloo there is no second stream to overlap with, so it is pure overhead.
                "overlap_comm": cfg.scaling.use_gpu,
                "contiguous_gradients": True,
                "reduce_scatter": True,
                "reduce_bucket_size": 5e8 if cfg.scaling.use_gpu else 5e7,
            }
        )
    if cfg.zero_stage == 2:
        zero["allgather_bucket_size"] = 5e8 if cfg.scaling.use_gpu else 5e7
    if cfg.zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": 5e7,
                "stage3_param_persistence_threshold": 1e5,
                # The export gathers fp32 master weights itself (safe_get_full_fp32_param); no 16-bit copy.
                "stage3_gather_16bit_weights_on_model_save": False,
            }
        )

    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_per_worker,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.micro_batch_per_worker * cfg.grad_accum_steps * world,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {
            "enabled": cfg.precision == "bf16",
            # DeepSpeed's default scans every parameter's gradient for inf/NaN before each step: ~4 tiny
            # kernels per parameter (1488 params × 4 launches for the paper UNet), which made the ZeRO-2
            # step CPU-launch-bound on an H100. bf16 has fp32's range and needs no loss scaling; the
            # training loop checks the global gradient norm (computed for clipping anyway) instead.
            "check_grad_overflow": False,
        },
        "fp16": {
            "enabled": cfg.precision == "fp16",
            "loss_scale": 0,  # dynamic
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "scheduler": _scheduler(cfg),
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if cfg.precision == "bf16":
        # Accumulate gradients in fp32 across micro steps; bf16 accumulation loses small updates.
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    if cfg.optim.implementation == "deepspeed":
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": cfg.optim.lr,
                "betas": list(cfg.optim.betas),
                "eps": cfg.optim.eps,
                "weight_decay": cfg.optim.weight_decay,
            },
        }
    return ds


def _scheduler(cfg: TrainConfig) -> dict[str, Any]:
    """DeepSpeed's scheduler for ``optim.schedule``. WarmupCosineLR scales each param group's own lr, so
    the action encoder's ``action_lr_scale`` survives it; WarmupLR would set every group to one lr, so the
    constant schedule passes one peak per group."""
    o = cfg.optim
    warmup = max(o.warmup_steps, 1)
    if o.schedule == "cosine":
        return {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(cfg.max_steps, warmup + 1),
                "warmup_min_ratio": 0.0,
                "warmup_num_steps": warmup,
                "cos_min_ratio": o.min_lr_ratio,
                "warmup_type": "linear",
            },
        }
    two_groups = cfg.mode == "finetune" and o.action_lr_scale != 1.0  # see param_groups
    peaks = [o.lr, o.lr * o.action_lr_scale] if two_groups else o.lr
    return {
        "type": "WarmupLR",
        "params": {
            "warmup_min_lr": 0.0 if not isinstance(peaks, list) else [0.0, 0.0],
            "warmup_max_lr": peaks,
            "warmup_num_steps": warmup,
            "warmup_type": "linear",
        },
    }


def param_groups(model: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: everything at ``lr``, plus the action encoder at
    ``lr × action_lr_scale`` when that scale is not 1 (see OptimSection)."""
    params = [p for p in model.parameters() if p.requires_grad]
    encoder = getattr(model, "action_encoder", None)
    if cfg.optim.action_lr_scale == 1.0 or encoder is None:
        return [{"params": params, "lr": cfg.optim.lr}]
    new = {id(p) for p in encoder.parameters()}
    return [
        {"params": [p for p in params if id(p) not in new], "lr": cfg.optim.lr},
        {"params": [p for p in params if id(p) in new], "lr": cfg.optim.lr * cfg.optim.action_lr_scale},
    ]


def build_torch_optimizer(params: Any, cfg: TrainConfig, *, device_type: str) -> Any:
    """``torch.optim.AdamW`` (fused on CUDA) for DeepSpeed to wrap; None when DeepSpeed builds its own.

    ``params``: parameters or the groups of :func:`param_groups`."""
    if cfg.optim.implementation == "deepspeed":
        return None
    import torch

    kwargs: dict[str, Any] = {
        "lr": cfg.optim.lr,
        "betas": cfg.optim.betas,
        "eps": cfg.optim.eps,
        "weight_decay": cfg.optim.weight_decay,
    }
    if device_type == "cuda":
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(params, **kwargs)


def prebuild_cpu_ops() -> float:
    """Build (or load from cache) DeepSpeed's CPU shm-comm op in this process; returns seconds taken.

    Calling it once on the driver before launching workers makes the workers hit the cache instead of
    racing to compile the same op (they serialise on a file lock, but each waits the whole build).
    """
    import time

    setup_cpu_environment(use_gpu=False)
    from deepspeed.accelerator import get_accelerator

    start = time.perf_counter()
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        try:
            builder.load(verbose=False)
        except Exception as err:  # noqa: BLE001 - report any build failure, the caller decides
            logger.warning(
                "could not build DeepSpeed's CPU shm op (%s); deepspeed.initialize will fail too", err
            )
    return time.perf_counter() - start
