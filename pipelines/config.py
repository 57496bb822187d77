"""The pipeline's configuration: one validated section per stage (``configs/*.yaml`` + ``--set``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from v2w_core.config import CausalMode, StrictConfig
from v2w_core.data.clips import ClipConfig
from v2w_core.data.shards import ShardWriterConfig
from v2w_core.eval.config import EvalConfig


class RunConfig(StrictConfig):
    name: str = "tiny"
    #: Where every stage writes its outputs and its completion records (local dir or s3://).
    root: str = "s3://v2w/pipelines/tiny"
    #: MLflow experiment; the tracking server comes from MLFLOW_TRACKING_URI. Empty = no tracking.
    experiment: str = "vid2world"
    tracking: bool = True


class DataConfig(StrictConfig):
    """The ingest stage: which source, how many episodes, how they are stored."""

    source: str = "vizdoom"
    #: Convert this data set (local path) with the converter ``source`` (lerobot, rlds, csgo) instead of
    #: recording ``episodes`` new episodes from a simulator.
    input: str | None = None
    episodes: int = Field(default=24, ge=1)
    seed: int = Field(default=0, ge=0)
    source_options: dict[str, Any] = Field(default_factory=dict)
    writer: ShardWriterConfig = ShardWriterConfig()
    num_cpus: float = Field(default=1.0, gt=0)


class LatentsConfig(StrictConfig):
    """The optional encode stage: with ``vae_uri`` set, clips are VAE-encoded once and every model stage
    works in latent space (the base preset or pretrained UNet must take the VAE's latent channels)."""

    #: A diffusers AutoencoderKL ``from_pretrained`` directory (local or s3://), e.g. the base's ``vae``.
    vae_uri: str | None = None
    batch_size: int = Field(default=8, ge=1)
    actors: int = Field(default=1, ge=1)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    #: Each actor also runs the clip decoding fused into it; Ray Data's read tasks need 1 CPU beside it, so
    #: on a tiny cluster (2 CPUs) use 0.5 here and for clips.decode_num_cpus or the stage waits forever.
    cpus_per_actor: float = Field(default=1.0, gt=0)


class BaseConfig(StrictConfig):
    """The base stage: load the user's pretrained weights, or pretrain ``preset`` bidirectionally here."""

    pretrained_uri: str | None = None
    preset: str = "tiny_unet3d"
    #: TrainConfig keys for the pretraining run (max_steps, optim, scaling, …); validated by TrainConfig.
    train: dict[str, Any] = Field(default_factory=dict)
    num_cpus: float = Field(default=0.1, ge=0)


class CausalizeConfig(StrictConfig):
    causal_mode: CausalMode = "extrapolative"
    extrapolation_window: int = Field(default=2, ge=1)


class FinetuneConfig(StrictConfig):
    """The train stage: TrainConfig keys for the Vid2World fine-tuning run."""

    train: dict[str, Any] = Field(default_factory=dict)
    num_cpus: float = Field(default=0.1, ge=0)


class EvaluateConfig(StrictConfig):
    """The evaluate stage: the eval protocol, and whether to score the untrained causal model too."""

    protocol: EvalConfig = EvalConfig()
    #: Also evaluate the causalized base before fine-tuning (the baseline the trained model must beat).
    baseline: bool = True
    num_cpus: float = Field(default=0.25, ge=0)


class RegisterConfig(StrictConfig):
    model_name: str = Field(default="vid2world-tiny", min_length=1)


class PipelineConfig(StrictConfig):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    clips: ClipConfig = ClipConfig()
    latents: LatentsConfig = LatentsConfig()
    base: BaseConfig = BaseConfig()
    causalize: CausalizeConfig = CausalizeConfig()
    train: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegisterConfig = RegisterConfig()

    @model_validator(mode="after")
    def _check_train_sections(self) -> PipelineConfig:
        """Validate the embedded TrainConfig sections now, not an hour into the pipeline."""
        from v2w_core.train.config import TrainConfig

        for name, section, extra in (("base.train", self.base.train, {"mode": "pretrain"}),
                                     ("train.train", self.train.train,
                                      {"mode": "finetune", "model": {"base_uri": "x", "action_space":
                                                                     {"type": "continuous", "dim": 1}}})):
            data = {**section, "experiment": "check", "storage_path": "/tmp/check", **extra}
            if "model" in section:
                data["model"] = {**extra.get("model", {}), **section["model"]}
            try:
                TrainConfig.model_validate(data)
            except ValidationError as err:
                first = err.errors()[0]
                key = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"{name}.{key}: {first['msg']}") from None
        return self
