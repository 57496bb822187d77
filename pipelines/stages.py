"""The pipeline's stage functions: each takes its context and its upstream results, returns outputs.

Stage functions run inside Ray tasks (see ``pipelines/dag.py``); they write large outputs to object
storage under ``ctx.output_dir`` and return URIs and small numbers only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pipelines.dag import StageContext, StageResult
from v2w_core import storage

log = logging.getLogger(__name__)


def ingest_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Record episodes from the configured source into WebDataset shards + a parquet manifest."""
    from v2w_core.data.ingest import IngestConfig, ingest
    from v2w_core.data.manifest import MANIFEST_NAME

    cfg = ctx.config
    out = storage.join(ctx.output_dir, "data")
    manifest = ingest(IngestConfig.from_dict({
        "source": cfg["source"], "episodes": cfg["episodes"], "seed": cfg["seed"], "out": out,
        "writer": cfg["writer"], "source_options": cfg["source_options"],
    }))
    splits = manifest.table.column("split").to_pylist()
    return {
        "manifest": storage.join(out, MANIFEST_NAME),
        "episodes": len(manifest),
        "train_episodes": splits.count("train"),
        "eval_episodes": splits.count("eval"),
        "frames": int(sum(manifest.table.column("length").to_pylist())),
        "shards": len(manifest.shard_uris()),
    }


def clips_stage(ctx: StageContext, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    """Read the shards back through Ray Data as training clips and reconcile the counts.

    This is the round trip the training stage relies on: every listed episode is either read (and, in
    lossless mode, its content hash verified against the manifest) or reported bad by shard and key.
    """
    from v2w_core.data.clips import ClipConfig, build_clip_dataset

    config = ClipConfig.from_dict(dict(ctx.config))
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
