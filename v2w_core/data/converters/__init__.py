"""Converters: data users already have (LeRobot v3, RLDS/Open-X TFRecords, DIAMOND CS:GO hdf5) -> episodes.

A converter is built with ``get_converter(name, input, **options)`` and yields :class:`Episode` objects
from ``episodes()`` one at a time (streaming: memory is constant in the number of episodes), so it can be
fed straight to :func:`v2w_core.data.shards.write_episodes`. Bad input records are named (file + record)
and either fail the run or are skipped and counted, by ``on_error``; ``converter.stats`` reconciles
``records == converted + bad`` at the end. :func:`convert` does all of that in one call, and this
module is also a command line::

    python -m v2w_core.data.converters lerobot --input /data/pusht --out s3://v2w/data/pusht \\
        [--opt camera=observation.image] [--opt frame_skip=2] [--opt on_error=skip] [--codec zstd]

Converters register lazily (name -> module) so that importing this package imports neither h5py nor
PyAV-heavy code until a converter is requested.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml

from v2w_core.config import ConfigError
from v2w_core.data.converters._common import (
    BadRecord,
    BadRecordError,
    ConversionStats,
    Converter,
    ConvertOptions,
)

log = logging.getLogger(__name__)

ConverterFactory = Callable[..., Converter]
F = TypeVar("F", bound=ConverterFactory)

_REGISTRY: dict[str, ConverterFactory] = {}
_LAZY: dict[str, str] = {
    "lerobot": "v2w_core.data.converters.lerobot",
    "rlds": "v2w_core.data.converters.rlds",
    "csgo": "v2w_core.data.converters.csgo",
}


class UnknownConverterError(KeyError):
    """No converter is registered under the requested name; the message lists the available ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_converter(name: str) -> Callable[[F], F]:
    """Class decorator: ``factory(input, **options)`` must return a :class:`Converter`."""

    def decorator(factory: F) -> F:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"converter {name!r} is already registered by {existing!r}")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_converters() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def get_converter(name: str, input: str, **options: Any) -> Converter:
    """Build converter ``name`` reading ``input`` (unknown options are errors naming the key)."""
    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
    factory = _REGISTRY.get(name)
    if factory is None:
        raise UnknownConverterError(
            f"unknown converter {name!r}; available: {', '.join(available_converters())}"
        )
    return factory(input, **options)


@dataclass
class ConvertResult:
    stats: ConversionStats
    manifest_len: int
    written: int


def convert(name: str, input: str, out: str, writer: Any = None, **options: Any) -> ConvertResult:
    """Convert ``input`` with converter ``name`` into shards + manifest under ``out``.

    ``writer`` is a :class:`v2w_core.data.shards.ShardWriterConfig` (default codec etc.). Raises
    :class:`~v2w_core.data.errors.DataError` if the counts do not reconcile (a record lost between the
    reader and the manifest), which would otherwise be invisible.
    """
    from v2w_core import storage
    from v2w_core.data.manifest import MANIFEST_NAME, Manifest
    from v2w_core.data.shards import write_episodes

    converter = get_converter(name, input, **options)
    uri = storage.join(out, MANIFEST_NAME)
    before = len(Manifest.read(uri)) if storage.exists(uri) else 0
    manifest = write_episodes(converter.episodes(), out, writer, prefix=None)
    written = len(manifest) - before
    stats = converter.stats
    if not stats.reconciles or written != stats.converted:
        from v2w_core.data.errors import DataError

        raise DataError(f"{name}: counts do not reconcile: {stats.summary()}; manifest gained {written}")
    return ConvertResult(stats=stats, manifest_len=len(manifest), written=written)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m v2w_core.data.converters", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("converter", help=f"one of {', '.join(available_converters())}")
    p.add_argument("--input", required=True, help="input file or directory (local path)")
    p.add_argument("--out", required=True, help="data-set root: local directory or s3://bucket/prefix")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="converter option (value parsed as YAML), repeatable")  # fmt: skip
    p.add_argument("--codec", choices=["h264", "h264-lossless", "zstd"], default="h264")
    p.add_argument("--shard-size-mb", type=float, default=256.0)
    p.add_argument("--eval-fraction", type=float, default=0.05)
    p.add_argument("--log-level", default="INFO")
    return p


def parse_options(items: list[str], flag: str = "--opt") -> dict[str, Any]:
    """``key=value`` command-line options, values parsed as YAML (``3`` → 3, ``true`` → True)."""
    options: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        options[key.strip()] = yaml.safe_load(raw)
    return options


def main(argv: list[str] | None = None) -> int:
    from v2w_core.data.errors import DataError
    from v2w_core.data.shards import ShardWriterConfig
    from v2w_core.storage import StorageError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        writer = ShardWriterConfig.from_dict(
            {
                "codec": {"name": args.codec},
                "shard_size_mb": args.shard_size_mb,
                "eval_fraction": args.eval_fraction,
            }
        )
        result = convert(args.converter, args.input, args.out, writer, **parse_options(args.opt))
    except (ConfigError, UnknownConverterError, DataError, StorageError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    print(f"{args.converter}: {result.stats.summary()}; manifest lists {result.manifest_len} episodes")
    return 0


__all__ = [
    "BadRecord",
    "BadRecordError",
    "ConversionStats",
    "ConvertOptions",
    "ConvertResult",
    "Converter",
    "UnknownConverterError",
    "available_converters",
    "convert",
    "get_converter",
    "register_converter",
]
