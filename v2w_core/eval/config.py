"""Evaluation settings: which chunks, how they are rolled out, on what resources, which metric weights."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from v2w_core.config import StrictConfig
from v2w_core.diffusion.rollout import RolloutConfig
from v2w_core.eval.steering import SteeringConfig


class MetricWeights(StrictConfig):
    """Safetensors files (local or ``s3://``) of the metric networks; ``None`` = metric off (unavailable).

    ``"auto"`` (default): the published network converted into this machine's cache by
    ``python -m v2w_core.eval.weights convert`` (the install step runs it) — AlexNet-LPIPS, the FID
    Inception, the Kinetics-400 I3D. On a multi-node cluster, convert once to ``s3://…`` and name the files
    here. See :mod:`v2w_core.eval.features` for the accepted architectures.
    """

    lpips: str | None = "auto"
    fid: str | None = "auto"
    fvd: str | None = "auto"


class EvalConfig(StrictConfig):
    """One held-out evaluation protocol. Two evaluations are comparable only under the same protocol and
    split (:func:`v2w_core.eval.rollouts.split_fingerprint` hashes both)."""

    split: Literal["train", "eval"] = "eval"
    context_frames: int = Field(4, ge=1)
    horizon: int = Field(12, ge=1)
    max_episodes: int | None = Field(None, ge=1)
    chunks_per_episode: int = Field(1, ge=1)
    #: Frames between chunk starts within an episode; default: context + horizon (non-overlapping).
    chunk_stride: int | None = Field(None, ge=1)
    seed: int = 0
    rollout: RolloutConfig = RolloutConfig()
    #: None = as many actors as the cluster's free CPUs (or GPU fractions) allow, capped by the chunk count.
    num_actors: int | None = Field(None, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    #: Used only when the cluster has GPUs: several actors share one GPU.
    gpus_per_actor: float = Field(0.25, gt=0, le=8)
    #: torch intra-op threads per actor; 1 avoids oversubscription when actors share cores.
    torch_threads: int = Field(1, ge=1)
    #: torch threads of the metric networks (I3D, Inception, LPIPS), which run in the evaluate stage after
    #: the rollout actors finished; None = every core of the machine (a Ray task would otherwise get 1).
    metric_threads: int | None = Field(None, ge=1)
    controllability: bool = True
    #: The steering probe (:mod:`v2w_core.eval.steering`): per probe action held for ``horizon`` frames,
    #: does the view move as the recorded one does under that action? Costs probes × horizon frames a chunk.
    steering: SteeringConfig = SteeringConfig()
    #: Latent-space models: the VAE (diffusers from_pretrained dir, local or s3://) that encodes the context
    #: frames and decodes the rollout, so metrics and videos stay in pixel space.
    vae_uri: str | None = None
    metric_weights: MetricWeights = MetricWeights()
    num_videos: int = Field(3, ge=0)
    video_format: Literal["gif", "mp4"] = "gif"
    #: Nearest-neighbour upscaling of logged videos so 32-64 px frames are viewable in the UI.
    video_scale: int = Field(4, ge=1, le=16)

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.rollout.window < 2:
            raise ValueError("rollout.window must be >= 2")
        return self

    @property
    def chunk_length(self) -> int:
        return self.context_frames + self.horizon

    @property
    def stride(self) -> int:
        return self.chunk_stride or self.chunk_length
