"""Episode data: schema, codecs, WebDataset shards, parquet manifest, sources and ingestion.

Import the submodules directly (``from v2w_core.data.shards import decode_sample``); this package
re-exports the most used names. Ray is not imported here: the Ray Data pipeline lives in its own module.
"""

from v2w_core.data.codec import CodecConfig, decode_frames, encode_frames
from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.errors import (
    CorruptSampleError,
    DataError,
    EpisodeError,
    ManifestError,
    ShardError,
    VideoDecodeError,
)
from v2w_core.data.manifest import MANIFEST_NAME, Manifest, append_to_manifest, assign_split
from v2w_core.data.shards import (
    ReadStats,
    ShardWriter,
    ShardWriterConfig,
    decode_sample,
    iter_episodes,
    read_shard,
    write_episodes,
)

__all__ = [
    "MANIFEST_NAME",
    "ActionSpace",
    "CodecConfig",
    "CorruptSampleError",
    "DataError",
    "Episode",
    "EpisodeError",
    "Manifest",
    "ManifestError",
    "ReadStats",
    "ShardError",
    "ShardWriter",
    "ShardWriterConfig",
    "VideoDecodeError",
    "append_to_manifest",
    "assign_split",
    "decode_frames",
    "decode_sample",
    "encode_frames",
    "iter_episodes",
    "read_shard",
    "write_episodes",
]
