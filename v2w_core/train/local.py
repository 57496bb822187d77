"""Single-process training on one host, without Ray or DeepSpeed: the same model, losses and optimizer
settings as the Ray Train loop (:mod:`v2w_core.train.loop`), fed from clips held in memory.

Why a second loop: GPU hosts lent for experiments have torch but no Ray (too large to carry), and a tiny
model on one GPU gains nothing from data-parallel workers. What must agree with the distributed loop is
shared, not copied: :func:`~v2w_core.train.loop.build_model` (preset, or base → causalize → actions),
the losses of :mod:`v2w_core.diffusion.losses`, :func:`~v2w_core.train.deepspeed_config.param_groups` and
the warm-up/cosine schedule of :class:`~v2w_core.train.config.OptimSection`. Not shared (documented
differences): no ZeRO partitioning, no Ray checkpoints (``checkpoint_dir`` holds a local resumable state
written with safetensors + JSON), bf16 autocast on CUDA instead of DeepSpeed's bf16 engine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from v2w_core.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class ClipArrays:
    """Training clips in memory: frames uint8 (N, F, H, W, 3), actions (N, F, ...) or None (pretraining).

    Actions are the *recorded* ones (``actions[:, t]`` taken at frame t); the loss aligns them.
    """

    frames: np.ndarray
    actions: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim != 5 or self.frames.dtype != np.uint8 or self.frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (N, F, H, W, 3), got {self.frames.dtype} {self.frames.shape}")
        if self.actions is not None and self.actions.shape[:2] != self.frames.shape[:2]:
            raise ValueError(
                f"actions {self.actions.shape} must have the clips' (N, F) = {self.frames.shape[:2]}"
            )

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def random_batches(
    clips: ClipArrays, batch_size: int, device: torch.device, *, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Endless shuffled epochs of (x0 (B, F, 3, H, W) in [-1, 1], recorded actions or None)."""
    if len(clips) < batch_size:
        raise ValueError(f"{len(clips)} clips cannot fill one batch of {batch_size}")
    frames = torch.from_numpy(clips.frames)
    actions = None if clips.actions is None else torch.from_numpy(clips.actions)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(clips))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = torch.from_numpy(order[i : i + batch_size])
            x0 = frames[idx].to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(127.5).sub_(1.0)
            a = None if actions is None else actions[idx].to(device)
            yield x0, a


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of each group's peak lr at optimizer step ``step`` (0-based): DeepSpeed's WarmupLR /
    WarmupCosineLR (linear warm-up, then constant or cosine down to ``min_lr_ratio``)."""
    o = cfg.optim
    warmup = max(o.warmup_steps, 1)
    if step < warmup:
        return (step + 1) / warmup
    if o.schedule == "constant":
        return 1.0
    total = max(cfg.max_steps, warmup + 1)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class LocalRun:
    """The result of :func:`train_local`: the trained model (EMA weights copied in when enabled)."""

    model: Any
    step: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _save_state(path: Path, model: Any, optimizer: torch.optim.Optimizer, ema: Any, step: int,
                losses: list[float]) -> None:
    """A resumable state without pickles: weights, EMA and Adam moments as safetensors, the rest as JSON."""
    from safetensors.torch import save_file

    from v2w_core.models.io import save_world_model

    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_world_model(model, str(tmp / "model"))
    tensors: dict[str, torch.Tensor] = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor):
                    tensors[f"adam/{names[id(p)]}/{k}"] = v.detach().float().cpu().contiguous().reshape(-1)
    for n, v in (ema.state_dict() if ema is not None else {}).items():
        tensors[f"ema/{n}"] = v.detach().cpu().contiguous()
    save_file(tensors, str(tmp / "optim.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "losses": losses}))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def _load_state(path: Path, model: Any, optimizer: torch.optim.Optimizer, ema: Any) -> tuple[int, list[float]]:
    from safetensors.torch import load_file

    from v2w_core.tracking import load_model

    saved = load_model(str(path / "model"))
    model.load_state_dict(saved.state_dict())
    tensors = load_file(str(path / "optim.safetensors"))
    device = next(model.parameters()).device
    for n, p in model.named_parameters():
        st: dict[str, Any] = {}
        for k in ("step", "exp_avg", "exp_avg_sq"):
            key = f"adam/{n}/{k}"
            if key in tensors:
                v = tensors[key].to(device)
                st[k] = v.reshape(()) if k == "step" else v.reshape(p.shape)
        if st:
            optimizer.state[p] = st
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
    state = json.loads((path / "state.json").read_text())
    return int(state["step"]), list(state["losses"])


def train_local(
    cfg: TrainConfig,
    clips: ClipArrays,
    *,
    device: str | torch.device = "cpu",
    model: Any = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    callback: Callable[[int, Any], None] | None = None,
    callback_every: int = 0,
    log_every: int = 50,
    time_budget_s: float | None = None,
) -> LocalRun:
    """Train ``cfg.max_steps`` optimizer steps of ``cfg.micro_batch_per_worker`` clips in this process.

    ``model`` defaults to :func:`~v2w_core.train.loop.build_model` (``cfg.mode`` decides pretrain or
    finetune). ``callback(step, model)`` runs every ``callback_every`` steps on the EMA weights when EMA
    is on (quality-vs-steps curves); with ``checkpoint_dir`` the run resumes from, and saves to, it.
    ``time_budget_s`` ends the run early (state saved when checkpointing) once training used that long:
    lent GPU time is finite, and a resumed run continues where this one stopped.
    """
    from v2w_core.diffusion.losses import bidirectional_pretrain_loss, diffusion_forcing_loss
    from v2w_core.diffusion.schedule import NoiseSchedule
    from v2w_core.train.deepspeed_config import param_groups
    from v2w_core.train.loop import Ema, build_model, compile_as_configured

    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = build_model(cfg)  # compiles the blocks when cfg.model.compile_blocks
    elif cfg.model.compile_blocks:  # a model the caller built: the same switch
        compile_as_configured(model, cfg.model)
    model = model.to(device).train()
    if cfg.mode == "finetune" and clips.actions is None:
        raise ValueError("finetune mode needs clips with actions")
    groups = param_groups(model, cfg)
    for g in groups:
        g["initial_lr"] = g["lr"]
    o = cfg.optim
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                  **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    ema = Ema(model, cfg.ema.decay) if cfg.ema.enabled else None
    schedule = NoiseSchedule()
    autocast = cfg.precision == "bf16" and device.type == "cuda"

    step, losses = 0, []
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None and (ckpt / "state.json").exists():
        step, losses = _load_state(ckpt, model, optimizer, ema)
        logger.info("resumed local run from %s at step %d", ckpt, step)
    data = random_batches(clips, cfg.micro_batch_per_worker, device, seed=cfg.seed * 7919 + step)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)

    def velocity(x: torch.Tensor, t: torch.Tensor, a: Any = None, mask: Any = None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return model(x, t, a, mask).float()

    def with_ema(fn: Callable[[], None]) -> None:
        if ema is None:
            return fn()
        live = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(ema.shadow[n])
        try:
            model.eval()
            fn()
        finally:
            model.train()
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(live[n])

    t0, window = time.perf_counter(), []
    while step < cfg.max_steps:
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(step, cfg)
        total = 0.0
        for _ in range(cfg.grad_accum_steps):
            x0, actions = next(data)
            if cfg.mode == "pretrain":
                loss, _ = bidirectional_pretrain_loss(velocity, x0, schedule, generator=gen)
            else:
                loss, _ = diffusion_forcing_loss(velocity, x0, actions, schedule,
                                                 action_drop_prob=cfg.action_drop_prob,
                                                 history_prefix_prob=cfg.history_prefix_prob,
                                                 history_prefix_max_t=cfg.history_prefix_max_t, generator=gen)
            (loss / cfg.grad_accum_steps).backward()
            total += float(loss.detach()) / cfg.grad_accum_steps
        if o.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            if not torch.isfinite(norm):
                raise FloatingPointError(f"non-finite gradient norm at step {step + 1}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(total)
        window.append(total)
        if ema is not None:
            ema.update(model)
        if log_every and step % log_every == 0:
            logger.info("step %d/%d loss %.4f lr %.3g (%.1f s)", step, cfg.max_steps, sum(window) / len(window),
                        optimizer.param_groups[0]["lr"], time.perf_counter() - t0)
            window = []
        if callback is not None and callback_every and (step % callback_every == 0 or step == cfg.max_steps):
            with _eager_blocks(model, cfg):  # callbacks evaluate (streaming rollouts): the eager path
                with_ema(lambda s=step: callback(s, model))
        out_of_time = time_budget_s is not None and time.perf_counter() - t0 > time_budget_s
        if ckpt is not None and ((checkpoint_every and step % checkpoint_every == 0) or out_of_time):
            _save_state(ckpt, model, optimizer, ema, step, losses)
        if out_of_time:
            logger.warning("time budget of %.0f s used: stopping at step %d of %d", time_budget_s, step,
                           cfg.max_steps)
            break
    if ema is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(ema.shadow[n])
    if cfg.model.compile_blocks:
        model.compile_blocks(None)  # the caller gets the eager model (it evaluates, streams, saves)
    return LocalRun(model=model.eval(), step=step, losses=losses, seconds=time.perf_counter() - t0)


@contextlib.contextmanager
def _eager_blocks(model: Any, cfg: TrainConfig) -> Iterator[None]:
    """Run the body with the blocks' eager forwards when training compiled them, then compile again
    (``torch.compile`` finds its cached graphs for the same modules)."""
    from v2w_core.train.loop import compile_as_configured

    if not cfg.model.compile_blocks:
        yield
        return
    model.compile_blocks(None)
    try:
        yield
    finally:
        compile_as_configured(model, cfg.model)


__all__ = ["ClipArrays", "LocalRun", "lr_factor", "random_batches", "train_local"]
