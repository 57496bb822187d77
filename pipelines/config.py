"""The pipeline's configuration: one validated section per stage (``configs/*.yaml`` + ``--set``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from v2w_core.config import StrictConfig
from v2w_core.data.clips import ClipConfig
from v2w_core.data.shards import ShardWriterConfig


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
    episodes: int = Field(default=24, ge=1)
    seed: int = Field(default=0, ge=0)
    source_options: dict[str, Any] = Field(default_factory=dict)
    writer: ShardWriterConfig = ShardWriterConfig()
    num_cpus: float = Field(default=1.0, gt=0)


class PipelineConfig(StrictConfig):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    clips: ClipConfig = ClipConfig()
