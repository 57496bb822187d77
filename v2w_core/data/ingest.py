"""``v2w-ingest``: record episodes from a registered source into shards + manifest.

    v2w-ingest --source bouncing-shapes --episodes 200 --out s3://v2w/data/shapes --seed 0 \\
        [--lossless | --codec zstd] [--shard-size-mb 64] [--eval-fraction 0.1] [--source-opt episode_length=32]
    v2w-ingest --source lerobot --input /data/my_lerobot_v3 --out s3://v2w/data/robot [--source-opt camera=…]

With ``--input``, ``--source`` names a converter (lerobot, rlds, csgo) that streams the user's data set
into shards; otherwise it names a simulator source that records ``--episodes`` new episodes.

Running it again on the same ``--out`` appends (new shards, manifest rows with a later ``created_at``);
reusing a seed is refused because it would produce the same episode ids.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from tqdm import tqdm

from v2w_core import storage
from v2w_core.config import ConfigError, StrictConfig
from v2w_core.data.codec import CodecConfig
from v2w_core.data.errors import DataError
from v2w_core.data.manifest import MANIFEST_NAME, Manifest
from v2w_core.data.shards import ShardWriterConfig, write_episodes
from v2w_core.data.sources import UnknownSourceError, available_sources, get_source
from v2w_core.storage import StorageError

log = logging.getLogger(__name__)


class IngestConfig(StrictConfig):
    source: str
    episodes: int = Field(ge=1)
    out: str
    seed: int = Field(ge=0)
    writer: ShardWriterConfig = ShardWriterConfig()
    source_options: dict[str, Any] = Field(default_factory=dict)


def ingest(config: IngestConfig) -> Manifest:
    """Generate ``config.episodes`` episodes and append them to the data set at ``config.out``."""
    source = get_source(config.source, **config.source_options)
    episodes = source.episodes(config.episodes, seed=config.seed)
    progress = tqdm(episodes, total=config.episodes, desc=f"ingest {config.source}", unit="ep", disable=None)
    prefix = f"{config.source}-s{config.seed}".replace(".", "_")
    before = _count_existing(config.out)
    manifest = write_episodes(progress, config.out, config.writer, prefix=_unique(prefix))
    written = len(manifest) - before
    if written != config.episodes:
        raise DataError(f"source {config.source!r} produced {written} episodes, expected {config.episodes}")
    return manifest


def _count_existing(root: str) -> int:
    uri = storage.join(root, MANIFEST_NAME)
    return len(Manifest.read(uri)) if storage.exists(uri) else 0


def _unique(prefix: str) -> str:
    """Shard-name prefix unique per run, so a later append never overwrites an existing shard."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="v2w-ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help=f"registered source ({', '.join(available_sources())})")
    p.add_argument("--input", help="convert this data set (local path) with the converter named by --source")
    p.add_argument("--episodes", type=int, help="number of episodes to record (simulator sources)")
    p.add_argument("--out", required=True, help="data-set root: local directory or s3://bucket/prefix")
    p.add_argument(
        "--seed", type=int, help="run seed; episode i is a function of (seed, i) (simulator sources)"
    )
    p.add_argument("--lossless", action="store_true", help="lossless H.264 (bit-exact frames)")
    p.add_argument("--codec", choices=["h264", "h264-lossless", "zstd"], help="frame codec (default h264)")
    p.add_argument("--crf", type=int, default=CodecConfig().crf, help="x264 CRF for lossy h264")
    p.add_argument("--shard-size-mb", type=float, default=ShardWriterConfig().shard_size_mb)
    p.add_argument("--eval-fraction", type=float, default=ShardWriterConfig().eval_fraction)
    p.add_argument("--source-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="source option (value parsed as YAML), repeatable")  # fmt: skip
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    codec = args.codec or ("h264-lossless" if args.lossless else "h264")
    if args.lossless and codec == "h264":
        raise ConfigError("--lossless conflicts with --codec h264; use --codec h264-lossless or zstd")
    options: dict[str, Any] = {}
    for item in args.source_opt:
        if "=" not in item:
            raise ConfigError(f"--source-opt {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        options[key.strip()] = yaml.safe_load(raw)
    if args.episodes is None or args.seed is None:
        raise ConfigError("--episodes and --seed are required for a simulator source (or pass --input)")
    return IngestConfig.from_dict(
        {
            "source": args.source,
            "episodes": args.episodes,
            "out": args.out,
            "seed": args.seed,
            "writer": {
                "codec": {"name": codec, "crf": args.crf},
                "shard_size_mb": args.shard_size_mb,
                "eval_fraction": args.eval_fraction,
            },
            "source_options": options,
        },
        source="command line",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.input:
        return _convert(args)
    try:
        config = config_from_args(args)
        manifest = ingest(config)
    except (ConfigError, UnknownSourceError, DataError, StorageError) as err:
        log.error("%s", err)
        return 2
    new = manifest.table.slice(len(manifest) - config.episodes)
    splits = new.column("split").to_pylist()
    shards = sorted(set(new.column("shard").to_pylist()))
    mb = sum(new.column("sample_bytes").to_pylist()) / 2**20
    print(
        f"ingested {config.episodes} episodes of {config.source!r} (train {splits.count('train')}, "
        f"eval {splits.count('eval')}) into {len(shards)} shard(s), {mb:.1f} MiB, codec "
        f"{config.writer.codec.name}; {manifest.root}/manifest.parquet lists {len(manifest)} episodes"
    )
    return 0


def _check_input(uri: str) -> None:
    """``--input`` must exist; said before any converter turns the URI into a path (``s3://`` would
    become ``s3:/``) or fails deep inside with a traceback."""
    if storage.is_s3(uri):
        if not storage.exists(uri):
            raise ConfigError(f"--input {uri}: no such object or prefix (check the bucket and path)")
    elif not Path(uri).expanduser().exists():
        raise ConfigError(f"--input {uri}: no such file or directory")


def _convert(args: argparse.Namespace) -> int:
    """``--input``: stream a user's data set through a converter into shards + manifest."""
    from v2w_core.data.converters import UnknownConverterError, convert

    try:
        options = {}
        for item in args.source_opt:
            if "=" not in item:
                raise ConfigError(f"--source-opt {item!r} must look like key=value")
            key, raw = item.split("=", 1)
            options[key.strip()] = yaml.safe_load(raw)
        codec = args.codec or ("h264-lossless" if args.lossless else "h264")
        writer = ShardWriterConfig.from_dict(
            {
                "codec": {"name": codec, "crf": args.crf},
                "shard_size_mb": args.shard_size_mb,
                "eval_fraction": args.eval_fraction,
            }
        )
        _check_input(args.input)
        result = convert(args.source, args.input, args.out, writer, **options)
    except (ConfigError, UnknownConverterError, DataError, StorageError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    print(
        f"converted {result.written} episodes with {args.source!r} from {args.input} into {args.out} "
        f"({result.stats.summary()}); the manifest lists {result.manifest_len} episodes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
