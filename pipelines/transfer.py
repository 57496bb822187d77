"""The transfer experiment (issue 17): does causalizing a pretrained video model beat training from scratch?

One experiment, defined by a config (``configs/transfer-*.yaml``) and the project's own functions, run two
ways with the same step functions:

* ``--local``: in-process on one host, no Ray or MLflow needed (a lent GPU box has torch + diffusers +
  pydantic + vizdoom). ``--parallel N`` runs N branches at once as subprocesses (a tiny model cannot fill a
  GPU alone). Resumable: ``--out DIR`` holds one directory per step / branch with a done marker written
  last; a stopped run (crash, ``--deadline-s``, a killed machine) resumes where it stopped, a half-trained
  branch from its newest checkpoint.
* without ``--local``: a fan-out DAG on a Ray cluster — one Ray task per variant × seed, an MLflow parent
  run with one nested run per branch (``ray job submit … -- python pipelines/transfer.py --config …``).
  ``--out`` must then be a path every node sees (one host, or a shared file system).

Steps (directories under ``--out``):

``record/``     simulator episodes (data seed ≠ the base's 1 and the demo's 0), split by episode into train
                and held-out (the manifest's hash rule); held-out chunks are never trained on.
``pretrain/``   optional: a bidirectional base by :mod:`pipelines.pretrain_base`'s recipe, when
                ``base.uri`` is null (else ``base.uri``, e.g. the shipped ``asset://tiny_unet3d_vizdoom``).
``probe/``      the fine-tuning steps, identical for every branch: fixed (``finetune.steps``) or fitted to
                ``finetune.time_budget_s`` from a measured probe (``parallel`` probes at once, so the step
                time is the one the branches will see), as :func:`pipelines.pretrain_base.steps_for_budget`.
``runs/<variant>-s<seed>/``  one branch: build (pretrained base → causalize by the variant's mode →
                action encoder, or the same architecture from a random init), fine-tune with diffusion
                forcing (:func:`~v2w_core.train.local.train_local`; action dropout only with AG), a
                quality-vs-steps curve on a few held-out chunks through its callback, then rollouts of all
                held-out chunks (causal action guidance only with AG) — PSNR/SSIM per horizon step,
                copy-last-frame, controllability (:func:`v2w_core.eval.compute_metrics`), a strip PNG.
``runs/untrained/``  the untrained causal base (extrapolative transfer, zero action encoder) as a baseline.
``export/`` (or ``--export DIR``)  what travels back from a lent GPU: ≤ 8 files ≤ ``export.max_file_mib``:
                ``results.json``, ``heldout.safetensors.gz`` (truth + untrained rollouts),
                ``rollouts-<variant>.safetensors.gz`` (uint8 rollouts of every seed; gzip: ≈ half).

FVD / FID / LPIPS need the published metric networks, which stay on the CPU host:
``python bench/transfer.py EXPORT_DIR`` (:mod:`pipelines.transfer_report`) computes them and
writes ``bench/results/transfer.json`` and ``docs/experiments/transfer.md``.

    python pipelines/transfer.py --config configs/transfer-tiny.yaml --local --out /tmp/transfer-tiny
    python pipelines/transfer.py --config configs/transfer-vizdoom.yaml --local --out /tmp/transfer \\
        --parallel 9 --deadline-s 500 --export $OUT/transfer
    python bench/transfer.py $OUT/transfer
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
from typing import Any, Literal

from pydantic import Field, model_validator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from v2w_core.config import CausalMode, ConfigError, StrictConfig

log = logging.getLogger("transfer")

#: The paper's ablation (RT-1, 30k steps, FVD, lower is better), best → worst.
PAPER_FVD: dict[str, float] = {
    "extrap_ag": 22.4, "masked_ag": 25.8, "extrapolative": 28.6, "masked": 29.4, "shift_ag": 29.9,
    "scratch_ag": 1768.8,
}  # fmt: skip
PAPER_ORDER: tuple[str, ...] = tuple(sorted(PAPER_FVD, key=PAPER_FVD.__getitem__))
UNTRAINED = "untrained"


# ------------------------------------------------------------------------------------------- config
class DataSection(StrictConfig):
    """Episodes recorded for fine-tuning and evaluation (``seed`` distinct from the base's and the demo's)."""

    source: str = "vizdoom"
    source_options: dict[str, Any] = Field(default_factory=lambda: {"episode_length": 64})
    seed: int = 2
    episodes: int = Field(400, ge=2)
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    clip_length: int = Field(16, ge=2)
    stride: int = Field(4, ge=1)
    #: recording processes; None = every core
    workers: int | None = Field(None, ge=1)


class PretrainSection(StrictConfig):
    """:mod:`pipelines.pretrain_base`'s recipe, used only when ``base.uri`` is null."""

    seed: int = 1
    episodes: int = Field(1000, ge=2)
    source_options: dict[str, Any] = Field(default_factory=lambda: {"episode_length": 64})
    clip_length: int = Field(16, ge=2)
    stride: int = Field(4, ge=1)
    steps: int = Field(2000, ge=0)
    #: with steps 0: as many steps as fit this many seconds (measured probe)
    time_budget_s: float | None = Field(None, gt=0)
    batch: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup: int = Field(200, ge=0)
    ema: float = Field(0.999, gt=0, lt=1)


class BaseSection(StrictConfig):
    #: a world-model directory (local, s3://, asset://); null = pretrain ``preset`` in the pretrain step
    uri: str | None = "asset://tiny_unet3d_vizdoom"
    preset: str = "tiny_unet3d"
    pretrain: PretrainSection = Field(default_factory=PretrainSection)


class FinetuneSection(StrictConfig):
    """The recipe every branch shares (only the variant's mode, AG and init differ)."""

    #: optimizer steps of every branch; 0 = fitted to ``time_budget_s`` by the probe step
    steps: int = Field(0, ge=0)
    #: wall seconds of the whole fine-tune phase (all branches, in waves of ``--parallel``), evaluation included
    time_budget_s: float = Field(300.0, gt=0)
    min_steps: int = Field(10, ge=1)
    #: the probe's two short runs (their time difference is the steady-state step time)
    probe_steps: tuple[int, int] = (10, 40)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    batch: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    action_lr_scale: float = Field(10.0, gt=0)
    grad_clip: float = Field(1.0, ge=0)
    ema_decay: float = Field(0.995, gt=0, lt=1)
    #: action dropout of the AG variants (the others train with 0)
    action_drop_prob: float = Field(0.2, gt=0, le=1)
    extrapolation_window: int = Field(2, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    checkpoint_every: int = Field(250, ge=1)


class Variant(StrictConfig):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    causal_mode: CausalMode
    #: action dropout in training + causal action guidance at sampling
    ag: bool
    init: Literal["pretrained", "scratch"] = "pretrained"


def default_variants() -> list[Variant]:
    return [
        Variant(name="shift_ag", causal_mode="shift", ag=True),
        Variant(name="masked", causal_mode="masked", ag=False),
        Variant(name="extrapolative", causal_mode="extrapolative", ag=False),
        Variant(name="masked_ag", causal_mode="masked", ag=True),
        Variant(name="extrap_ag", causal_mode="extrapolative", ag=True),
        # random init, so the transfer mode only fixes the (causal) architecture
        Variant(name="scratch_ag", causal_mode="extrapolative", ag=True, init="scratch"),
    ]


class EvalSection(StrictConfig):
    """Held-out chunks (``max_episodes`` × ``chunks_per_episode``, ``context_frames + horizon`` frames; 16 is
    FVD's clip) and the sampler. AG variants sample with ``guidance_scale``, the others without guidance."""

    context_frames: int = Field(8, ge=1)
    horizon: int = Field(8, ge=1)
    max_episodes: int = Field(24, ge=1)
    chunks_per_episode: int = Field(2, ge=1)
    chunk_stride: int | None = Field(24, ge=1)
    seed: int = 0
    num_inference_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(2.5, gt=0)
    guidance_rescale: float = Field(0.7, ge=0, le=1)
    history_noise_level: int = Field(20, ge=0)
    #: quality-vs-steps points after step 0 (evenly spaced), on the first ``curve_chunks`` chunks
    curve_points: int = Field(4, ge=1)
    curve_chunks: int = Field(8, ge=1)
    #: chunks drawn in the strip (truth / recorded actions / shuffled actions)
    strip_chunks: int = Field(3, ge=1)
    #: rollouts per batch
    batch: int = Field(64, ge=1)


class RaySection(StrictConfig):
    experiment: str = "vid2world-transfer"
    tracking: bool = True
    cpus_per_branch: float = Field(1.0, gt=0)
    gpus_per_branch: float = Field(0.0, ge=0)


class ExportSection(StrictConfig):
    """The lent GPU's return limits (device README): ≤ 8 files, each ≤ 16 MiB, ≤ 64 MiB together."""

    max_file_mib: float = Field(16.0, gt=0)
    max_total_mib: float = Field(64.0, gt=0)


class TransferConfig(StrictConfig):
    name: str = Field("transfer", pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataSection = Field(default_factory=DataSection)
    base: BaseSection = Field(default_factory=BaseSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    variants: list[Variant] = Field(default_factory=default_variants, min_length=1)
    evaluate: EvalSection = Field(default_factory=EvalSection)
    ray: RaySection = Field(default_factory=RaySection)
    export: ExportSection = Field(default_factory=ExportSection)

    @model_validator(mode="after")
    def _check(self) -> TransferConfig:
        if not 0 < self.finetune.probe_steps[0] < self.finetune.probe_steps[1]:
            raise ValueError(f"finetune.probe_steps must be (short, long), 0 < short < long: {self.finetune.probe_steps}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or UNTRAINED in names:
            raise ValueError(f"variant names must be unique and not {UNTRAINED!r}: {names}")
        if len(self.variants) + 2 > 8:
            raise ValueError("at most 6 variants: the export holds one file per variant + 2 (8 files)")
        e = self.evaluate
        need = e.context_frames + e.horizon
        length = int(self.data.source_options.get("episode_length", 64))
        if length < need or self.data.clip_length > length:
            raise ValueError(f"episode_length {length} is shorter than a chunk ({need}) or a clip")
        mib = self.export_sizes_mib()
        worst = max(mib.values())
        if worst > self.export.max_file_mib:
            raise ValueError(
                f"export files would exceed {self.export.max_file_mib} MiB ({mib}); lower "
                "evaluate.max_episodes / chunks_per_episode / horizon or the number of seeds")
        return self

    def frame_bytes(self) -> int:
        o = self.data.source_options
        return int(o.get("height", 64)) * int(o.get("width", 64)) * 3

    def max_chunks(self) -> int:
        return self.evaluate.max_episodes * self.evaluate.chunks_per_episode

    def export_sizes_mib(self) -> dict[str, float]:
        """Upper bounds of the export's array files: a variant file holds every seed's rollouts of every
        held-out chunk and, for the strips only, its shuffled-action rollouts of the first strip_chunks."""
        e, fb, n = self.evaluate, self.frame_bytes(), self.max_chunks()
        strip = e.strip_chunks * e.horizon * fb
        return {
            "heldout": (n * (e.context_frames + e.horizon) * fb + n * e.horizon * fb) / 2**20,
            "variant": len(self.finetune.seeds) * (n * e.horizon * fb + strip) / 2**20,
        }

    def branches(self) -> list[tuple[Variant, int]]:
        """Seed-major: every variant of seed 0 first, so a cut-short run has whole seeds."""
        return [(v, s) for s in self.finetune.seeds for v in self.variants]


def load_config(path: str | Path, overrides: list[str] | None = None) -> TransferConfig:
    return TransferConfig.from_yaml(path, overrides)


def branch_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


# -------------------------------------------------------------------------------------------- files
def _write_json(path: Path, data: Any) -> None:
    """Atomically (a done marker must never be half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default))
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _save_arrays(path: Path, arrays: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """safetensors; gzip-compressed when ``path`` ends in ``.gz`` (the export: uint8 game frames shrink to
    about half, which is what lets 18 runs' rollouts fit the lent GPU's 64 MiB return limit)."""
    import gzip

    import numpy as np
    from safetensors.numpy import save

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                metadata={"json": json.dumps(meta or {}, default=_json_default)})
    tmp.write_bytes(gzip.compress(data, compresslevel=6) if path.suffix == ".gz" else data)
    tmp.replace(path)


def load_arrays(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, metadata) of a safetensors file written by this module (``.gz``: gzip-compressed)."""
    import gzip

    from safetensors.numpy import load

    data = Path(path).read_bytes()
    if Path(path).suffix == ".gz":
        data = gzip.decompress(data)
    # the safetensors layout: u64 little-endian header length, then the JSON header with __metadata__
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta = json.loads((header.get("__metadata__") or {}).get("json", "{}"))
    return load(data), meta


def export_file(export: Path, stem: str) -> Path:
    """An export's array file: compressed (``stem.safetensors.gz``) or, from older runs, plain."""
    gz = export / f"{stem}.safetensors.gz"
    return gz if gz.exists() else export / f"{stem}.safetensors"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    import platform

    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


# ------------------------------------------------------------------------------------------- record
class _Episode:
    """What :func:`~v2w_core.data.inmemory.episode_clips` needs of an episode."""

    def __init__(self, episode_id: str, frames: Any, actions: Any) -> None:
        self.episode_id, self.frames, self.actions = episode_id, frames, actions

    @property
    def length(self) -> int:
        return int(self.frames.shape[0])


def eval_protocol(cfg: TransferConfig, *, ag: bool = False, controllability: bool = True) -> Any:
    """The project's :class:`~v2w_core.eval.config.EvalConfig` for this experiment (metric networks off:
    FVD/FID/LPIPS are the report step's)."""
    from v2w_core.eval.config import EvalConfig

    e = cfg.evaluate
    return EvalConfig.from_dict({
        "split": "eval", "context_frames": e.context_frames, "horizon": e.horizon,
        "max_episodes": e.max_episodes, "chunks_per_episode": e.chunks_per_episode,
        "chunk_stride": e.chunk_stride, "seed": e.seed, "controllability": controllability,
        "rollout": {"num_inference_steps": e.num_inference_steps, "history_noise_level": e.history_noise_level,
                    "guidance_scale": e.guidance_scale if ag else None, "guidance_rescale": e.guidance_rescale},
        "metric_weights": {"lpips": None, "fid": None, "fvd": None},
    }, source="transfer evaluate")


def step_record(cfg: TransferConfig, out: Path) -> dict[str, Any]:
    """Record, split by episode, cut the held-out chunks; ``record/done.json`` last."""
    import numpy as np

    from v2w_core.data.inmemory import record_episodes, split_episodes
    from v2w_core.eval.rollouts import chunks_from_episodes

    done = out / "record" / "done.json"
    if done.exists():
        return _read_json(done)
    d = cfg.data
    t0 = time.perf_counter()
    episodes = record_episodes(d.source, d.source_options, seed=d.seed, indices=range(d.episodes),
                               workers=d.workers or os.cpu_count() or 1)
    train, held = split_episodes(episodes, d.eval_fraction)
    protocol = eval_protocol(cfg)
    held = sorted((e for e in held if e.length >= protocol.chunk_length), key=lambda e: e.episode_id)
    held = held[: cfg.evaluate.max_episodes]
    chunks = chunks_from_episodes(held, protocol)
    if len(chunks) < 2:
        raise RuntimeError(f"only {len(chunks)} held-out chunks: record more episodes or raise data.eval_fraction")
    space = episodes[0].action_space
    lengths = np.array([e.length for e in train], dtype=np.int64)
    _save_arrays(out / "record" / "train.safetensors",
                 {"frames": np.concatenate([e.frames for e in train]),
                  "actions": np.concatenate([np.asarray(e.actions, dtype=np.float32) for e in train]),
                  "lengths": lengths},
                 {"episode_ids": [e.episode_id for e in train]})
    _save_arrays(out / "record" / "heldout.safetensors",
                 {"frames": np.stack([c.frames for c in chunks]),
                  "actions": np.stack([np.asarray(c.actions, dtype=np.float32) for c in chunks])},
                 {"chunk_ids": [c.chunk_id for c in chunks], "episode_ids": [c.episode_id for c in chunks],
                  "starts": [c.start for c in chunks]})
    info = {
        "source": d.source, "options": d.source_options, "seed": d.seed, "episodes": len(episodes),
        "train_episodes": len(train), "heldout_episodes": len({c.episode_id for c in chunks}),
        "heldout_chunks": len(chunks), "eval_fraction": d.eval_fraction,
        "action_space": {"type": space.type, "dim": space.dim},
        "heldout_ids": sorted({c.episode_id for c in chunks}),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_json(done, info)
    log.info("record: %d train / %d held-out episodes, %d held-out chunks (%.0f s)", len(train),
             info["heldout_episodes"], len(chunks), info["seconds"])
    return info


def load_train(out: Path) -> list[_Episode]:
    arrays, meta = load_arrays(out / "record" / "train.safetensors")
    bounds = [0, *__import__("numpy").cumsum(arrays["lengths"]).tolist()]
    return [_Episode(eid, arrays["frames"][a:b], arrays["actions"][a:b])
            for eid, a, b in zip(meta["episode_ids"], bounds[:-1], bounds[1:], strict=True)]


def load_heldout(path: Path) -> list[Any]:
    """The held-out chunks as :class:`~v2w_core.eval.rollouts.EvalChunk` (record/ or an export's file)."""
    from v2w_core.eval.rollouts import EvalChunk

    arrays, meta = load_arrays(path)
    return [EvalChunk(cid, eid, int(s), arrays["frames"][i], arrays["actions"][i])
            for i, (cid, eid, s) in enumerate(zip(meta["chunk_ids"], meta["episode_ids"], meta["starts"],
                                                  strict=True))]


# ----------------------------------------------------------------------------------------- pretrain
def base_uri(cfg: TransferConfig, out: Path) -> str:
    from v2w_core import assets

    if cfg.base.uri:
        return assets.resolve(cfg.base.uri) if assets.is_asset(cfg.base.uri) else cfg.base.uri
    return str(out / "pretrain" / "model")


def step_pretrain(cfg: TransferConfig, out: Path, device: str) -> dict[str, Any] | None:
    """A bidirectional base by pipelines/pretrain_base.py's recipe (its functions), when base.uri is null."""
    if cfg.base.uri:
        return None
    done = out / "pretrain" / "done.json"
    if done.exists():
        return _read_json(done)
    from pipelines.pretrain_base import save_samples, steps_for_budget
    from v2w_core.data.inmemory import episode_clips, record_episodes
    from v2w_core.models.io import save_world_model
    from v2w_core.train.config import TrainConfig
    from v2w_core.train.local import ClipArrays, train_local

    p = cfg.base.pretrain
    if p.seed == cfg.data.seed:
        raise ConfigError("base.pretrain.seed must differ from data.seed: the held-out episodes must be unseen")
    t0 = time.perf_counter()
    episodes = record_episodes(cfg.data.source, p.source_options, seed=p.seed, indices=range(p.episodes),
                               workers=cfg.data.workers or os.cpu_count() or 1)
    frames, _ = episode_clips(episodes, p.clip_length, p.stride, with_actions=False)
    del episodes
    tcfg = TrainConfig.from_dict({
        "experiment": "transfer-pretrain", "mode": "pretrain", "storage_path": str(out / "pretrain"),
        "model": {"preset": cfg.base.preset},
        "optim": {"lr": p.lr, "warmup_steps": p.warmup, "schedule": "cosine", "min_lr_ratio": 0.05, "grad_clip": 1.0},
        "ema": {"enabled": True, "decay": p.ema}, "max_steps": p.steps or 1, "micro_batch_per_worker": p.batch,
        "precision": "bf16" if device.startswith("cuda") else "fp32", "tracking": {"enabled": False},
    }, source="base.pretrain")
    clips = ClipArrays(frames)
    if p.steps == 0:
        if p.time_budget_s is None:
            raise ConfigError("base.pretrain.steps 0 needs base.pretrain.time_budget_s")
        tcfg = tcfg.model_copy(update={"max_steps": steps_for_budget(tcfg, clips, device, p.time_budget_s)})
    run = train_local(tcfg, clips, device=device, checkpoint_dir=out / "pretrain" / "ckpt", checkpoint_every=500,
                      log_every=100)
    model = run.model.float().cpu()
    save_world_model(model, str(out / "pretrain" / "model"))
    save_samples(model, out / "pretrain" / "samples.png")
    info = {"seed": p.seed, "episodes": p.episodes, "clips": len(frames), "steps": run.step,
            "loss_last_100": sum(run.losses[-100:]) / max(len(run.losses[-100:]), 1),
            "seconds": round(time.perf_counter() - t0, 1)}
    _write_json(done, info)
    return info


# ------------------------------------------------------------------------------------------- models
def build_variant_model(cfg: TransferConfig, variant: Variant, seed: int, base: str, space: dict[str, Any]) -> Any:
    """The world model a branch starts from: the pretrained base causalized by the variant's mode (weight
    transfer) + a zero-initialised action encoder, or — ``init: scratch`` — the same architecture
    (the base's config), randomly initialised, causalized the same way."""
    import torch

    from v2w_core.models.causalize import causalize
    from v2w_core.models.world_model import WorldModel
    from v2w_core.tracking import load_model

    torch.manual_seed(seed)
    model = load_model(base)
    if model.is_causal:
        raise ValueError(f"base {base} is already causal: the experiment needs a bidirectional base")
    if variant.init == "scratch":
        torch.manual_seed(seed)
        model = WorldModel(model.config)
    causalize(model, variant.causal_mode, cfg.finetune.extrapolation_window)
    model.set_action_space(space)
    return model


def train_config(cfg: TransferConfig, variant: Variant, seed: int, steps: int, base: str,
                 space: dict[str, Any], device: str) -> Any:
    from v2w_core.train.config import TrainConfig

    f = cfg.finetune
    precision = f.precision if f.precision != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    return TrainConfig.from_dict({
        "experiment": branch_name(variant.name, seed), "mode": "finetune", "storage_path": "unused",
        "model": {"base_uri": base, "causal_mode": variant.causal_mode,
                  "extrapolation_window": f.extrapolation_window, "action_space": space},
        "optim": {"lr": f.lr, "warmup_steps": f.warmup_steps, "schedule": f.schedule, "min_lr_ratio": f.min_lr_ratio,
                  "action_lr_scale": f.action_lr_scale, "grad_clip": f.grad_clip},
        "ema": {"enabled": True, "decay": f.ema_decay}, "max_steps": steps, "micro_batch_per_worker": f.batch,
        "action_drop_prob": f.action_drop_prob if variant.ag else 0.0, "precision": precision, "seed": seed,
        "tracking": {"enabled": False}, "scaling": {"num_workers": 1},
    }, source=f"variant {variant.name}")


# ------------------------------------------------------------------------------------------ rollouts
def rollout_uint8(model: Any, chunks: list[Any], cfg: TransferConfig, *, ag: bool, device: str,
                  shuffled: bool = False) -> Any:
    """All chunks rolled out in batches → uint8 (B, N, H, W, 3). The noise depends only on the eval seed and
    the batch index, so every model (and the shuffled-action run) sees the same noise."""
    import numpy as np
    import torch

    from v2w_core.data.clips import normalize_frames
    from v2w_core.diffusion.rollout import rollout
    from v2w_core.eval.rollouts import chunk_seed, shuffled_actions

    protocol = eval_protocol(cfg, ag=ag and model.action_encoder is not None)
    k, bs = protocol.context_frames, cfg.evaluate.batch
    outs = []
    for i in range(0, len(chunks), bs):
        part = chunks[i : i + bs]
        context = torch.stack([normalize_frames(torch.from_numpy(np.array(c.frames[:k])).permute(0, 3, 1, 2)).float()
                               for c in part]).to(device)
        actions = None
        if model.action_encoder is not None:
            acts = [shuffled_actions(c.actions, k, chunk_seed(protocol.seed, c.chunk_id)) if shuffled else c.actions
                    for c in part]
            actions = torch.from_numpy(np.stack(acts).astype(np.float32)).to(device)
        gen = torch.Generator(device="cpu").manual_seed(protocol.seed * 1_000_003 + i // bs)
        with torch.no_grad():
            x = rollout(model, context, actions, protocol.horizon, protocol.rollout, generator=gen)
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
        outs.append(x.cpu().numpy())
    return np.concatenate(outs)


def score(chunks: list[Any], gen: Any, cfg: TransferConfig, shuffled: Any = None) -> Any:
    """:func:`v2w_core.eval.compute_metrics` of uint8 rollouts (PSNR/SSIM per step, copy-last-frame,
    controllability, output health); the metric networks are off here."""
    from v2w_core.eval import compute_metrics
    from v2w_core.eval.features import Unavailable
    from v2w_core.eval.rollouts import RolloutResult

    off = Unavailable("computed by the report step (pipelines/transfer_report.py) on the metric-weights host")
    results = [RolloutResult(c.chunk_id, c.episode_id, gen[i].transpose(0, 3, 1, 2),
                             None if shuffled is None else shuffled[i].transpose(0, 3, 1, 2))
               for i, c in enumerate(chunks)]
    protocol = eval_protocol(cfg, controllability=shuffled is not None)
    return compute_metrics(chunks, results, protocol, {"lpips": off, "fid": off, "fvd": off})


def save_strip(path: Path, chunks: list[Any], gen: Any, alt: Any, context_frames: int) -> None:
    import numpy as np
    from PIL import Image

    from v2w_core.eval.videos import rollout_strip

    def model_space(x: Any) -> Any:
        return x.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1

    rows = [(c.chunk_id, c.frames, model_space(g), None if a is None else model_space(a))
            for c, g, a in zip(chunks, gen, alt if alt is not None else [None] * len(gen), strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rollout_strip(rows, context_frames, scale=2)).save(path)


# -------------------------------------------------------------------------------------------- probe
def _probe_worker(cfg: TransferConfig, out: Path, device: str, started: float) -> dict[str, Any]:
    """One probe: start-up, steady step time (10 vs 40 steps) and one curve evaluation of the representative
    branch (the first AG variant from the pretrained base)."""
    from v2w_core.train.local import ClipArrays, train_local

    ready = _branch_inputs(cfg, out)
    variant = next((v for v in cfg.variants if v.ag and v.init == "pretrained"), cfg.variants[0])
    clips = ClipArrays(*ready["clips"])
    startup = time.time() - started
    seconds = []
    model = None
    short, long_ = cfg.finetune.probe_steps
    for n in (short, long_):
        tcfg = train_config(cfg, variant, 0, n, ready["base"], ready["space"], device)
        model = build_variant_model(cfg, variant, 0, ready["base"], ready["space"])
        seconds.append(train_local(tcfg, clips, device=device, model=model, log_every=0).seconds)
    t = time.perf_counter()
    rollout_uint8(model, ready["chunks"][: cfg.evaluate.curve_chunks], cfg, ag=variant.ag, device=device)
    curve_eval = time.perf_counter() - t
    return {"startup_s": startup, "per_step_s": max((seconds[1] - seconds[0]) / max(long_ - short, 1), 1e-4),
            "curve_eval_s": curve_eval, "probe_seconds": seconds}


def step_probe(cfg: TransferConfig, out: Path, device: str, parallel: int, config_path: Path) -> dict[str, Any]:
    """The fine-tuning steps every branch runs: ``finetune.steps``, or fitted to ``finetune.time_budget_s``."""
    done = out / "probe" / "done.json"
    if done.exists():
        return _read_json(done)
    f, e = cfg.finetune, cfg.evaluate
    n = len(cfg.branches())
    info: dict[str, Any] = {"parallel": parallel, "branches": n, "waves": math.ceil(n / parallel)}
    if f.steps:
        info.update({"steps": f.steps, "fitted": False})
    else:
        if parallel > 1:
            probes = run_workers([{"kind": "probe", "index": i} for i in range(parallel)], out, config_path,
                                 parallel, device, deadline=None)
        else:
            probes = [_probe_worker(cfg, out, device, time.time())]
        probes = [p for p in probes if p]
        if not probes:
            raise RuntimeError("every probe failed; see probe/*.log")
        per_step = max(p["per_step_s"] for p in probes)
        curve = max(p["curve_eval_s"] for p in probes)
        startup = max(p["startup_s"] for p in probes)
        n_chunks = _read_json(out / "record" / "done.json")["heldout_chunks"]
        final = curve * 2 * max(n_chunks / min(e.curve_chunks, n_chunks), 1.0)  # recorded + shuffled actions
        per_branch = f.time_budget_s / info["waves"]
        overhead = startup + (e.curve_points + 1) * curve + final
        steps = max(f.min_steps, int(0.9 * (per_branch - overhead) / per_step))
        info.update({"steps": steps, "fitted": True, "per_step_s": per_step, "curve_eval_s": curve,
                     "startup_s": startup, "final_eval_s_estimate": final, "per_branch_s": per_branch,
                     "probes": probes})
        log.info("probe: %.1f ms/step with %d at once, %.1f s per curve eval, %.0f s start-up -> %d steps "
                 "(%d waves of %.0f s)", per_step * 1e3, parallel, curve, startup, steps, info["waves"], per_branch)
    _write_json(done, info)
    return info


# ------------------------------------------------------------------------------------------- branch
def _branch_inputs(cfg: TransferConfig, out: Path) -> dict[str, Any]:
    from v2w_core.data.inmemory import episode_clips

    rec = _read_json(out / "record" / "done.json")
    frames, actions = episode_clips(load_train(out), cfg.data.clip_length, cfg.data.stride)
    return {"clips": (frames, actions), "chunks": load_heldout(out / "record" / "heldout.safetensors"),
            "space": rec["action_space"], "base": base_uri(cfg, out)}


class OutOfTime(RuntimeError):
    """A branch stopped by the deadline: its state is saved, a rerun resumes it."""


def run_branch(cfg: TransferConfig, out: Path, variant: Variant, seed: int, steps: int, *, device: str,
               deadline: float | None = None, tracking: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune one variant × seed (resumable), then evaluate it; ``result.json`` is its done marker."""
    import numpy as np
    import torch

    from v2w_core.train.local import ClipArrays, train_local

    rd = out / "runs" / branch_name(variant.name, seed)
    done = rd / "result.json"
    if done.exists():
        return _read_json(done)
    rd.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ready = _branch_inputs(cfg, out)
    chunks, e = ready["chunks"], cfg.evaluate
    curve_chunks = chunks[: e.curve_chunks]
    tcfg = train_config(cfg, variant, seed, steps, ready["base"], ready["space"], device)
    model = build_variant_model(cfg, variant, seed, ready["base"], ready["space"])
    run_id = _start_branch_tracking(tracking, variant, seed, tcfg) if tracking else None

    ckpt = rd / "ckpt"
    resumed = _read_json(ckpt / "state.json")["step"] if (ckpt / "state.json").exists() else 0
    curve_file = rd / "curve.jsonl"
    points = [json.loads(x) for x in curve_file.read_text().splitlines()] if curve_file.exists() else []
    points = [p for p in points if p["step"] <= resumed]  # points after the checkpoint are recomputed
    curve_file.write_text("".join(json.dumps(p) + "\n" for p in points))

    def evaluate(step: int, m: Any) -> None:
        t = time.perf_counter()
        gen = rollout_uint8(m, curve_chunks, cfg, ag=variant.ag, device=device)
        r = score(curve_chunks, gen, cfg)
        point = {"step": step, "psnr": r.metrics["psnr_mean"], "ssim": r.metrics["ssim_mean"],
                 "seconds": round(time.perf_counter() - t, 2)}
        points.append(point)
        with curve_file.open("a") as fh:
            fh.write(json.dumps(point) + "\n")
        if run_id:
            _log_metrics(tracking, run_id, {"curve_psnr": point["psnr"], "curve_ssim": point["ssim"]}, step)
        log.info("[%s] step %d: curve psnr %.2f ssim %.3f", rd.name, step, point["psnr"], point["ssim"])

    if not points:  # step 0: the branch's starting point (for scratch: a random network)
        model.to(device).eval()
        evaluate(0, model)
    every = max(math.ceil(steps / e.curve_points), 1)
    budget = None
    if deadline is not None:
        reserve = 2 * max((p["seconds"] for p in points), default=1.0) * max(len(chunks) / len(curve_chunks), 1.0)
        budget = deadline - time.time() - reserve
        if budget <= 0:
            raise OutOfTime(f"{rd.name}: no time left before the deadline")
    run = train_local(tcfg, ClipArrays(*ready["clips"]), device=device, model=model, checkpoint_dir=ckpt,
                      checkpoint_every=cfg.finetune.checkpoint_every, callback=evaluate, callback_every=every,
                      log_every=max(steps // 10, 1), time_budget_s=budget)
    if run.step < steps:
        raise OutOfTime(f"{rd.name}: stopped at step {run.step} of {steps} by the deadline (state saved)")
    model = run.model
    t = time.perf_counter()
    gen = rollout_uint8(model, chunks, cfg, ag=variant.ag, device=device)
    alt = rollout_uint8(model, chunks, cfg, ag=variant.ag, device=device, shuffled=True)
    report = score(chunks, gen, cfg, alt)
    eval_s = time.perf_counter() - t
    k = e.strip_chunks
    _save_arrays(rd / "rollouts.safetensors", {"gen": gen, "shuffled": alt[:k]},
                 {"chunk_ids": [c.chunk_id for c in chunks]})
    save_strip(rd / "strip.png", chunks[:k], gen[:k], alt[:k], e.context_frames)
    losses = run.losses
    result = {
        "variant": variant.name, "seed": seed, "causal_mode": variant.causal_mode, "ag": variant.ag,
        "init": variant.init, "steps": run.step, "planned_steps": steps, "resumed_from": resumed,
        "action_drop_prob": tcfg.action_drop_prob,
        "guidance_scale": e.guidance_scale if variant.ag else None,
        "metrics": report.metrics, "drift": report.drift, "curve": points,
        "loss_first_50": float(np.mean(losses[:50])) if losses else None,
        "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
        "train_seconds": round(run.seconds, 1), "eval_seconds": round(eval_s, 1),
        "seconds": round(time.perf_counter() - t_start, 1), "device": device_name(device),
        "weights_sha": _weights_digest(model),
    }
    if run_id:
        _finish_branch_tracking(tracking, run_id, result, rd)
    _write_json(done, result)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def _weights_digest(model: Any) -> str:
    """A short digest of the trained weights (tests: variants differ)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def step_untrained(cfg: TransferConfig, out: Path, device: str) -> dict[str, Any]:
    """The untrained causal base (extrapolative transfer, zero action encoder), rolled out like the runs."""
    rd = out / "runs" / UNTRAINED
    done = rd / "result.json"
    if done.exists():
        return _read_json(done)
    rec = _read_json(out / "record" / "done.json")
    chunks = load_heldout(out / "record" / "heldout.safetensors")
    v = Variant(name=UNTRAINED, causal_mode="extrapolative", ag=False)
    model = build_variant_model(cfg, v, 0, base_uri(cfg, out), rec["action_space"]).to(device).eval()
    gen = rollout_uint8(model, chunks, cfg, ag=False, device=device)
    report = score(chunks, gen, cfg)
    _save_arrays(rd / "rollouts.safetensors", {"gen": gen}, {"chunk_ids": [c.chunk_id for c in chunks]})
    result = {"variant": UNTRAINED, "metrics": report.metrics, "drift": report.drift}
    _write_json(done, result)
    return result


# ------------------------------------------------------------------------------------------- export
def step_pack(cfg: TransferConfig, out: Path, export: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """≤ 8 files ≤ ``export.max_file_mib`` each, flat in ``export``: what a lent GPU sends back."""
    export.mkdir(parents=True, exist_ok=True)
    rec = _read_json(out / "record" / "done.json")
    results: dict[str, Any] = {}
    for variant, seed in cfg.branches():
        f = out / "runs" / branch_name(variant.name, seed) / "result.json"
        if f.exists():
            results[branch_name(variant.name, seed)] = _read_json(f)
    untrained_f = out / "runs" / UNTRAINED / "result.json"
    heldout, meta = load_arrays(out / "record" / "heldout.safetensors")
    arrays = dict(heldout)
    if untrained_f.exists():
        arrays["untrained"] = load_arrays(out / "runs" / UNTRAINED / "rollouts.safetensors")[0]["gen"]
    _save_arrays(export / "heldout.safetensors.gz", arrays, meta)
    files = ["heldout.safetensors.gz"]
    for variant in cfg.variants:
        per: dict[str, Any] = {}
        for seed in cfg.finetune.seeds:
            f = out / "runs" / branch_name(variant.name, seed) / "rollouts.safetensors"
            if branch_name(variant.name, seed) in results and f.exists():
                a = load_arrays(f)[0]
                per[f"gen/s{seed}"], per[f"shuffled/s{seed}"] = a["gen"], a["shuffled"]
        if per:
            _save_arrays(export / f"rollouts-{variant.name}.safetensors.gz", per,
                         {"variant": variant.model_dump(), "chunk_ids": meta["chunk_ids"]})
            files.append(f"rollouts-{variant.name}.safetensors.gz")
    summary = {
        "config": json.loads(cfg.model_dump_json()), "record": rec,
        "probe": _read_json(out / "probe" / "done.json") if (out / "probe" / "done.json").exists() else None,
        "pretrain": _read_json(out / "pretrain" / "done.json") if (out / "pretrain" / "done.json").exists() else None,
        "runs": results, "untrained": _read_json(untrained_f) if untrained_f.exists() else None,
        "missing": [branch_name(v.name, s) for v, s in cfg.branches() if branch_name(v.name, s) not in results],
        **extra,
    }
    _write_json(export / "results.json", summary)
    files.append("results.json")
    limit = cfg.export.max_file_mib * 2**20
    sizes = {f: (export / f).stat().st_size for f in files}
    too_big = {f: s for f, s in sizes.items() if s > limit}
    if too_big or len(files) > 8:
        raise RuntimeError(f"export breaks the return limits (≤ 8 files ≤ {cfg.export.max_file_mib} MiB): {sizes}")
    total = sum(sizes.values())
    log.info("export: %s (%.1f MiB) in %s", ", ".join(files), total / 2**20, export)
    if total > cfg.export.max_total_mib * 2**20:
        # the per-file bounds are checked when the config loads; the total depends on how well the frames
        # compress, so it can only be checked here. Nothing is lost: the run directory keeps everything.
        log.error("export is %.1f MiB, over the %.0f MiB that one call returns: bring it back in two calls "
                  "(--pack-only, then copy part of the files to the output folder each time)",
                  total / 2**20, cfg.export.max_total_mib)
    return summary


# --------------------------------------------------------------------------------------- local runner
def run_workers(tasks: list[dict[str, Any]], out: Path, config_path: Path, parallel: int, device: str,
                deadline: float | None) -> list[dict[str, Any] | None]:
    """Run ``tasks`` as subprocesses of this script, ``parallel`` at a time; each writes its result JSON.
    Returns the results in order (None for a task that failed or ran out of time; its log says why)."""
    pending = list(enumerate(tasks))
    running: dict[int, tuple[subprocess.Popen, Path, Any]] = {}
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), V2W_TRANSFER_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    while pending or running:
        while pending and len(running) < parallel:
            i, task = pending.pop(0)
            if deadline is not None and time.time() > deadline:
                log.warning("deadline passed: %s not started", task.get("name") or task["kind"])
                continue
            tag = task.get("name") or f"{task['kind']}-{task.get('index', i)}"
            logdir = out / ("probe" if task["kind"] == "probe" else "logs")
            logdir.mkdir(parents=True, exist_ok=True)
            result_path = logdir / f"{tag}.result.json"
            result_path.unlink(missing_ok=True)
            task = {**task, "result": str(result_path), "deadline": deadline, "started": time.time()}
            fh = (logdir / f"{tag}.log").open("a")
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--config", str(config_path),
                                     "--out", str(out), "--device", device, "--worker", json.dumps(task)],
                                    stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
            running[i] = (proc, result_path, fh)
            log.info("started %s (pid %d)", tag, proc.pid)
        time.sleep(0.5)
        for i, (proc, result_path, fh) in list(running.items()):
            if proc.poll() is None:
                continue
            fh.close()
            del running[i]
            if proc.returncode == 0 and result_path.exists():
                results[i] = _read_json(result_path)
            else:
                log.warning("%s exited %s; see %s", result_path.name, proc.returncode,
                            result_path.with_name(result_path.name.replace(".result.json", ".log")))
    return results


def worker_main(cfg: TransferConfig, out: Path, device: str, task: dict[str, Any]) -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("V2W_TRANSFER_THREADS", "1")))
    if task["kind"] == "probe":
        result = _probe_worker(cfg, out, device, task["started"])
    else:
        variant = next(v for v in cfg.variants if v.name == task["variant"])
        try:
            result = run_branch(cfg, out, variant, task["seed"], task["steps"], device=device,
                                deadline=task.get("deadline"))
        except OutOfTime as err:
            log.warning("%s", err)
            return 3
    _write_json(Path(task["result"]), result)
    return 0


def run_local(cfg: TransferConfig, out: Path, *, config_path: Path, device: str = "auto", parallel: int = 1,
              deadline_s: float | None = None, export: Path | None = None) -> dict[str, Any]:
    """The whole experiment on this host; every step skipped when its done marker exists."""
    t0 = time.time()
    deadline = t0 + deadline_s if deadline_s else None
    device = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    resolved = out / "config.json"  # what the workers read: the config with every --set applied
    _write_json(resolved, json.loads(cfg.model_dump_json()))
    timings: dict[str, float] = {}
    failures: list[str] = []
    try:
        for name, fn in (("record", lambda: step_record(cfg, out)),
                         ("pretrain", lambda: step_pretrain(cfg, out, device)),
                         ("probe", lambda: step_probe(cfg, out, device, parallel, resolved)),
                         ("untrained", lambda: step_untrained(cfg, out, device))):
            t = time.time()
            fn()
            timings[name] = round(time.time() - t, 1)
        steps = _read_json(out / "probe" / "done.json")["steps"]
        t = time.time()
        todo = [(v, s) for v, s in cfg.branches()
                if not (out / "runs" / branch_name(v.name, s) / "result.json").exists()]
        if parallel > 1:
            tasks = [{"kind": "branch", "name": branch_name(v.name, s), "variant": v.name, "seed": s, "steps": steps}
                     for v, s in todo]
            for task, res in zip(tasks, run_workers(tasks, out, resolved, parallel, device, deadline), strict=True):
                if res is None:
                    failures.append(task["name"])
        else:
            for v, s in todo:
                try:
                    run_branch(cfg, out, v, s, steps, device=device, deadline=deadline)
                except OutOfTime as err:
                    log.warning("%s", err)
                    failures.append(branch_name(v.name, s))
        timings["branches"] = round(time.time() - t, 1)
    finally:
        if export is not None and (out / "record" / "done.json").exists():
            step_pack(cfg, out, export, {
                "device": device_name(device), "gpu_seconds": round(time.time() - t0, 1), "timings": timings,
                "parallel": parallel, "failures": failures, "command": " ".join(sys.argv),
                "git_commit": _git_commit(),
            })
    log.info("done in %.0f s (%s)%s", time.time() - t0, timings, f"; not finished: {failures}" if failures else "")
    return {"timings": timings, "failures": failures, "seconds": time.time() - t0}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=ROOT).stdout.strip()
    except Exception:  # noqa: BLE001 - provenance is best effort (no git on a lent box)
        return os.environ.get("V2W_GIT_COMMIT", "unknown")


# ----------------------------------------------------------------------------------------- Ray runner
def _start_branch_tracking(tracking: dict[str, Any], variant: Variant, seed: int, tcfg: Any) -> str:
    from v2w_core.tracking.runs import flatten_params, start_run

    return start_run(tracking["tracking_uri"], tracking["experiment"], run_name=branch_name(variant.name, seed),
                     parent_run_id=tracking["parent_run_id"],
                     params={k: v[:500] for k, v in flatten_params(json.loads(tcfg.model_dump_json())).items()},
                     tags={"v2w.transfer.variant": variant.name, "v2w.transfer.seed": str(seed),
                           "v2w.transfer.ag": str(variant.ag), "v2w.transfer.init": variant.init})


def _log_metrics(tracking: dict[str, Any], run_id: str, metrics: dict[str, float], step: int) -> None:
    from v2w_core.tracking import client

    c = client(tracking["tracking_uri"])
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
            c.log_metric(run_id, k, float(v), step=step)


def _finish_branch_tracking(tracking: dict[str, Any], run_id: str, result: dict[str, Any], rd: Path) -> None:
    from v2w_core.tracking import client
    from v2w_core.tracking.runs import end_run

    _log_metrics(tracking, run_id, {**result["metrics"], "steps": result["steps"],
                                    "train_seconds": result["train_seconds"]}, result["steps"])
    c = client(tracking["tracking_uri"])
    c.log_artifact(run_id, str(rd / "strip.png"))
    end_run(tracking["tracking_uri"], run_id)


def _ray_step(kind: str, config_json: dict[str, Any], out: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """One Ray task: a step of the experiment on whatever node Ray chose (``out`` is shared)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TransferConfig.from_dict(config_json, source="transfer config")
    device = resolve_device("auto")
    o = Path(out)
    if kind == "record":
        return step_record(cfg, o)
    if kind == "pretrain":
        return step_pretrain(cfg, o, device)
    if kind == "probe":
        return step_probe(cfg, o, device, 1, o / "config.json")
    if kind == "untrained":
        return step_untrained(cfg, o, device)
    variant = next(v for v in cfg.variants if v.name == args["variant"])
    return run_branch(cfg, o, variant, args["seed"], args["steps"], device=device, tracking=args.get("tracking"))


def run_ray(cfg: TransferConfig, out: Path, *, address: str | None = None,
            tracking_uri: str | None = None) -> dict[str, Any]:
    """The same steps as a fan-out DAG of Ray tasks (one per variant × seed) with MLflow runs."""
    import ray

    from v2w_core.storage import STORAGE_LOCATION_ENV_VARS

    t0 = time.time()
    if not ray.is_initialized():
        names = (*STORAGE_LOCATION_ENV_VARS, "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
        env = {k: os.environ[k] for k in names if os.environ.get(k)}
        if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
            ray.init()
        else:
            ray.init(address=address or os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": env})
    out.mkdir(parents=True, exist_ok=True)
    cfg_json = json.loads(cfg.model_dump_json())
    _write_json(out / "config.json", cfg_json)
    tracking = None
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if cfg.ray.tracking and uri:
        from v2w_core.tracking.runs import start_pipeline_run

        exp_id, parent = start_pipeline_run(uri, cfg.ray.experiment, run_name=f"transfer:{cfg.name}",
                                            tags={"v2w.pipeline": f"transfer:{cfg.name}"})
        tracking = {"tracking_uri": uri, "experiment": cfg.ray.experiment, "experiment_id": exp_id,
                    "parent_run_id": parent}
    r = cfg.ray
    gpu = {"num_gpus": r.gpus_per_branch} if r.gpus_per_branch else {}
    step = ray.remote(_ray_step)
    status = "FAILED"
    try:
        ray.get(step.options(num_cpus=r.cpus_per_branch).remote("record", cfg_json, str(out), {}))
        ray.get(step.options(num_cpus=r.cpus_per_branch, **gpu).remote("pretrain", cfg_json, str(out), {}))
        probe = ray.get(step.options(num_cpus=r.cpus_per_branch, **gpu).remote("probe", cfg_json, str(out), {}))
        untrained = step.options(num_cpus=r.cpus_per_branch, **gpu).remote("untrained", cfg_json, str(out), {})
        refs = {branch_name(v.name, s): step.options(num_cpus=r.cpus_per_branch, **gpu).remote(
                    "branch", cfg_json, str(out), {"variant": v.name, "seed": s, "steps": probe["steps"],
                                                   "tracking": tracking})
                for v, s in cfg.branches()}  # fmt: skip
        ray.get(untrained)
        results = dict(zip(refs, ray.get(list(refs.values())), strict=True))
        summary = step_pack(cfg, out, out / "export", {"device": "ray cluster", "gpu_seconds": None,
                                                       "command": " ".join(sys.argv), "git_commit": _git_commit()})
        if tracking:
            from v2w_core.tracking import client

            c = client(uri)
            for name, res in results.items():
                c.log_metric(tracking["parent_run_id"], f"{name}.psnr_mean", float(res["metrics"]["psnr_mean"]))
            c.log_metric(tracking["parent_run_id"], "finetune_steps", float(probe["steps"]))
        status = "FINISHED"
        return {"results": results, "summary": summary, "tracking": tracking, "seconds": time.time() - t0}
    finally:
        if tracking:
            from v2w_core.tracking.runs import end_run

            end_run(uri, tracking["parent_run_id"], status)


# ------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="experiment config (configs/transfer-*.yaml)")
    p.add_argument("--set", action="append", default=[], help="override key=value (dotted)")
    p.add_argument("--out", help="experiment directory (resumable)")
    p.add_argument("--local", action="store_true", help="run in-process on this host (no Ray, no MLflow)")
    p.add_argument("--parallel", type=int, default=1, help="--local: branches at once, as subprocesses")
    p.add_argument("--device", default="auto")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="--local: stop starting/training branches after this many seconds, then export")
    p.add_argument("--export", default=None, help="--local: write the ≤ 8 return files here (default: OUT/export)")
    p.add_argument("--pack-only", action="store_true",
                   help="--local: only write the export from what is done (after a run was killed)")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.config or not args.out:
        raise SystemExit("transfer: --config and --out are required (the report step is bench/transfer.py EXPORT_DIR)")
    out = Path(args.out)
    if args.worker:  # a subprocess of --local --parallel: the parent's resolved config
        cfg = TransferConfig.from_dict(_read_json(Path(args.config)), source=args.config)
        return worker_main(cfg, out, resolve_device(args.device), json.loads(args.worker))
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as err:
        raise SystemExit(f"transfer: {err}") from None
    export = Path(args.export) if args.export else out / "export"
    if args.local and args.pack_only:
        step_pack(cfg, out, export, {"device": None, "gpu_seconds": None, "command": " ".join(sys.argv),
                                     "git_commit": _git_commit(), "note": "packed after the run stopped"})
        return 0
    if args.local:
        res = run_local(cfg, out, config_path=Path(args.config), device=args.device, parallel=max(1, args.parallel),
                        deadline_s=args.deadline_s, export=export)
        return 1 if res["failures"] else 0
    run_ray(cfg, out, address=args.ray_address)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
