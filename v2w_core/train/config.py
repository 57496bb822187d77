"""Typed training configuration (one :class:`TrainConfig` per run).

Everything a run needs is in here so that ``train(cfg)`` is reproducible from the params logged to
MLflow. The config is validated at load (unknown key, ZeRO stage 4, EMA with ZeRO-3 ... fail before any
cluster work). It deliberately imports neither Ray nor MLflow: the single-process benchmark builds
DeepSpeed configs from it on a machine that has only torch, diffusers and deepspeed.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, model_validator

from v2w_core.config import CausalMode, CheckpointGranularity, CompileRegions, StrictConfig

Mode = Literal["pretrain", "finetune"]
Precision = Literal["bf16", "fp16", "fp32"]


class ModelSection(StrictConfig):
    """Which network to train.

    ``pretrain`` builds a fresh bidirectional model from ``preset`` (+ ``overrides``) of
    :data:`v2w_core.models.presets.PRESETS`. ``finetune`` loads the base from ``base_uri`` (a world-model
    safetensors directory, local or ``s3://``), causalizes it with ``causal_mode`` and adds the action
    encoder for ``action_space`` (``{"type": "continuous"|"discrete"|"multi_hot", "dim": n}``).
    """

    preset: str = "tiny_unet3d"
    overrides: dict[str, Any] = Field(default_factory=dict)
    base_uri: str | None = None
    causal_mode: CausalMode = "extrapolative"
    extrapolation_window: int = Field(2, ge=1)
    action_space: dict[str, Any] | None = None
    # Activation checkpointing: false, true / "block" (per UNet block), "layer" (per layer inside the blocks:
    # the same recompute, a fraction of the memory; what fits batch 8 at paper size on an 80 GB card),
    # "selective" (per layer, GEMM/conv/attention outputs kept: little recompute, more memory).
    gradient_checkpointing: bool | CheckpointGranularity = False
    # torch.compile of each UNet block (WorldModel.compile_blocks): the eager step is bound by small
    # kernels (norm statistics, layout copies, pointwise glue) that fusion removes (issue 18).
    compile_blocks: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    # One graph per UNet block, or per layer inside the blocks ("layer": layers of one shape share a graph,
    # so a cold compile of the paper-size UNet3D is several times shorter; WorldModel.compile_blocks).
    compile_regions: CompileRegions = "block"


class DataSection(StrictConfig):
    """Where the clips come from: the Ray Data clip pipeline (:func:`v2w_core.data.clips.build_clip_dataset`).

    ``clips`` holds that pipeline's :class:`~v2w_core.data.clips.ClipConfig` keys (validated at preflight).
    Tests and pipeline stages may instead hand ``train`` a ready ``ray.data.Dataset`` with a ``frames``
    column (uint8 (F, H, W, 3) pixels, scaled to [-1, 1] on the worker, or float (F, C, H, W) latents) and,
    for fine-tuning, an ``actions`` column.
    """

    manifest_uri: str | None = None
    clips: dict[str, Any] = Field(default_factory=dict)
    prefetch_batches: int = Field(1, ge=0)


class OptimSection(StrictConfig):
    """AdamW with linear warm-up to ``lr``, then constant (DeepSpeed's WarmupLR) or a cosine decay to
    ``min_lr_ratio × lr`` at ``max_steps`` (WarmupCosineLR). Paper: lr 1e-5, constant, clip 0.5.

    ``action_lr_scale`` multiplies the learning rate of the action encoder only. The encoder is the one
    module a fine-tune adds from nothing (its output layer starts at zero), while every other weight only
    adapts a pretrained one: on a short run at the base's learning rate the actions barely move the
    predictions (measured: embeddings 0.14 apart against a timestep embedding of norm 2.7 after 60 steps).
    """

    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(0.5, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    action_lr_scale: float = Field(1.0, gt=0)
    # "torch": torch.optim.AdamW (fused on CUDA); no DeepSpeed op build needed, works on CPU.
    # "deepspeed": DeepSpeed's own (FusedAdam on GPU, DeepSpeedCPUAdam on CPU: JIT-builds an op).
    implementation: Literal["torch", "deepspeed"] = "torch"


class ScalingSection(StrictConfig):
    """Ray Train workers. On CPU each worker reserves a fraction of a core so Ray Data reads can run."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    # Ray placement of the workers' bundles: PACK fills a node first (fast collectives); SPREAD /
    # STRICT_SPREAD put workers on different nodes (STRICT_SPREAD needs at least num_workers nodes).
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class CheckpointSection(StrictConfig):
    """DeepSpeed checkpoints every ``every_n_steps`` into the run's storage; the newest ``keep`` are kept.

    ``keep`` ≥ 2 so that a corrupt newest checkpoint can fall back to the one before.
    """

    every_n_steps: int = Field(50, ge=1)
    keep: int = Field(3, ge=2)
    max_failures: int = Field(2, ge=0)


class TrackingSection(StrictConfig):
    """MLflow (rank 0 only). ``tracking_uri`` None → ``MLFLOW_TRACKING_URI``; ``enabled`` False → no MLflow."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "vid2world-train"
    run_name: str | None = None
    parent_run_id: str | None = None
    log_every_n_steps: int = Field(1, ge=1)
    tags: dict[str, str] = Field(default_factory=dict)
    # At the end of training, how long rank 0 waits for buffered metrics to reach a tracking server that
    # is down (the metrics of an outage arrive once it is back); then the rest is given up, with a warning.
    flush_timeout_s: float = Field(120.0, ge=0)


class EmaSection(StrictConfig):
    """Exponential moving average of the weights (kept in fp32 on every rank; ZeRO stage ≤ 2)."""

    enabled: bool = False
    decay: float = Field(0.999, gt=0, lt=1)


class FaultInjection(StrictConfig):
    """Test-only: make one worker fail once at ``at_step`` (only in an attempt that started from scratch).

    ``kind`` "exit" kills the worker process (``os._exit``) like a lost node; "raise" raises an error.
    """

    at_step: int | None = Field(None, ge=1)
    rank: int = Field(1, ge=0)
    kind: Literal["exit", "raise"] = "exit"


class TrainRecipe(StrictConfig):
    """How to train: every :class:`TrainConfig` key except the run's identity and place (``experiment``,
    ``mode``, ``storage_path``, ``output_uri``), which whoever starts the run fills in
    (:meth:`TrainConfig.from_recipe`). The pipeline's ``base.train`` and ``train.train`` sections are
    recipes: validated when the pipeline config loads, completed by their stage."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    ema: EmaSection = Field(default_factory=EmaSection)
    fault_injection: FaultInjection = Field(default_factory=FaultInjection)

    max_steps: int = Field(100, ge=1)
    micro_batch_per_worker: int = Field(2, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Precision = "fp32"
    action_drop_prob: float = Field(0.2, ge=0, le=1)
    # Diffusion forcing's noise levels: this fraction of clips get a low-noise history prefix (levels
    # ≤ history_prefix_max_t), the sampler's own regime; 0 = the paper's independent levels only
    # (v2w_core/diffusion/losses.py says why).
    history_prefix_prob: float = Field(0.0, ge=0, le=1)
    history_prefix_max_t: int = Field(50, ge=0, le=999)
    seed: int = 0
    log_every_n_steps: int = Field(1, ge=1)
    # Peak dense FLOP/s of one accelerator for MFU; None → looked up from the device name (GPU only).
    peak_flops: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_recipe(self) -> Self:
        if self.ema.enabled and self.zero_stage == 3:
            raise ValueError("ema.enabled is supported for zero_stage <= 2 (ZeRO-3 partitions the weights)")
        if self.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("precision fp16 needs a GPU (use bf16 or fp32 on CPU)")
        return self


class TrainConfig(TrainRecipe):
    """One training run. ``experiment`` names the run directory: re-running the same name resumes it."""

    experiment: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    mode: Mode = "pretrain"
    storage_path: str = Field(min_length=1)
    output_uri: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.mode == "finetune" and not self.model.base_uri:
            raise ValueError("mode 'finetune' needs model.base_uri (a world-model directory, local or s3://)")
        if self.mode == "finetune" and not self.model.action_space:
            raise ValueError("mode 'finetune' needs model.action_space, e.g. {type: continuous, dim: 2}")
        return self

    @classmethod
    def from_recipe(cls, recipe: TrainRecipe, *, source: str = "<recipe>", **run: Any) -> TrainConfig:
        """``recipe`` completed by the run's own keys (``experiment``, ``mode``, ``storage_path``, …, and any
        section that replaces the recipe's); validated, without a round trip through a dict."""
        return cls.from_dict({**dict(recipe), **run}, source=source)

    @property
    def global_batch(self) -> int:
        """Clips per optimizer step over all workers."""
        return self.micro_batch_per_worker * self.grad_accum_steps * self.scaling.num_workers

    @property
    def run_dir(self) -> str:
        """``storage_path/experiment``: where Ray Train keeps this run's checkpoints."""
        return self.storage_path.rstrip("/") + "/" + self.experiment

    @property
    def model_export_uri(self) -> str:
        return (self.output_uri or (self.run_dir + "/model")).rstrip("/")
