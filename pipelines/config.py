"""The pipeline's configuration: one validated section per stage (``configs/*.yaml`` + ``--set``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, PlainSerializer, model_serializer

from v2w_core.config import CausalMode, StrictConfig
from v2w_core.data.clips import ClipConfig
from v2w_core.data.shards import ShardWriterConfig
from v2w_core.diffusion.rollout import RolloutConfig
from v2w_core.eval.config import EvalConfig
from v2w_core.train.config import TrainRecipe


def _as_written(recipe: TrainRecipe) -> dict[str, Any]:
    """A training recipe as the config file wrote it (keys left at their defaults omitted): what its stage's
    fingerprint, completion record and MLflow params hold, so a default changed in code re-runs nothing."""
    return recipe.model_dump(mode="json", exclude_unset=True)


#: A pipeline section's training recipe: TrainConfig keys without the run's identity and place, which the
#: stage fills in (:meth:`v2w_core.train.config.TrainConfig.from_recipe`). Validated when the config loads.
TrainSection = Annotated[TrainRecipe, PlainSerializer(_as_written, return_type=dict)]


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
    #: The pretraining run's recipe (max_steps, optim, scaling, …).
    train: TrainSection = TrainRecipe()
    num_cpus: float = Field(default=0.1, ge=0)


class CausalizeConfig(StrictConfig):
    causal_mode: CausalMode = "extrapolative"
    extrapolation_window: int = Field(default=2, ge=1)


class FinetuneConfig(StrictConfig):
    """The train stage: the recipe of the Vid2World fine-tuning run (the stage fills in the causal base, its
    causal mode and the data set's action space)."""

    train: TrainSection = TrainRecipe()
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


# --- what each stage receives: its section, plus what it reads from others ------------------------------
# Each is built from the validated sections (no dict round trip) and dumps to the same JSON as the section
# it extends plus the added keys: that JSON is the stage's fingerprint (pipelines/dag.py).


class EncodeStageConfig(LatentsConfig):
    """The encode stage: ``latents`` + the clips it encodes."""

    clips: ClipConfig


class BaseStageConfig(BaseConfig):
    """The base stage: ``base`` + the clips it pretrains on."""

    clips: ClipConfig


class TrainStageConfig(FinetuneConfig):
    """The train stage: ``train`` + the clips it fine-tunes on."""

    clips: ClipConfig


class _WithVae(StrictConfig):
    """A stage config that also needs the VAE of a latent-space pipeline: ``vae_uri`` is left out of the
    serialized config (so of the stage's fingerprint) when there is none, so pixel pipelines' recorded
    stages still match."""

    vae_uri: str | None = None

    @model_serializer(mode="wrap")
    def _omit_no_vae(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("vae_uri") is None:
            data.pop("vae_uri", None)
        return data


class EvaluateStageConfig(_WithVae, EvaluateConfig):
    """The evaluate stage: ``evaluate`` + the VAE of a latent-space pipeline."""

    @property
    def eval_protocol(self) -> EvalConfig:
        """The protocol the models are evaluated under: its ``vae_uri`` is the pipeline's (``latents.vae_uri``;
        None for a pixel-space pipeline)."""
        return self.protocol.updated(vae_uri=self.vae_uri)


class RegisterStageConfig(_WithVae, RegisterConfig):
    """The register stage: ``registry`` + the rollout settings the model was evaluated with, which its
    registered pyfunc samples with, + the VAE a latent-space model's frames are decoded with (tagged on
    the version, so ``v2w-play`` can show its frames)."""

    rollout: RolloutConfig


@dataclass(frozen=True)
class StageConfigs:
    """Every stage's config, derived from one :class:`PipelineConfig` by :func:`stage_configs`."""

    ingest: DataConfig
    clips: ClipConfig
    encode: EncodeStageConfig | None
    base: BaseStageConfig
    causalize: CausalizeConfig
    train: TrainStageConfig
    evaluate: EvaluateStageConfig
    register: RegisterStageConfig


def stage_configs(cfg: PipelineConfig) -> StageConfigs:
    """Each stage's typed config: its own section plus what it reads from others, so changing one section
    re-runs that stage and what depends on it, nothing before it."""
    vae = cfg.latents.vae_uri
    return StageConfigs(
        ingest=cfg.data,
        clips=cfg.clips,
        encode=EncodeStageConfig(**dict(cfg.latents), clips=cfg.clips) if vae else None,
        base=BaseStageConfig(**dict(cfg.base), clips=cfg.clips),
        causalize=cfg.causalize,
        train=TrainStageConfig(**dict(cfg.train), clips=cfg.clips),
        evaluate=EvaluateStageConfig(**dict(cfg.evaluate), vae_uri=vae),
        register=RegisterStageConfig(**dict(cfg.registry), rollout=cfg.evaluate.protocol.rollout,
                                     vae_uri=vae),
    )
