"""DeepSpeed checkpoints in object storage: integrity manifests, safe loading, fallback on corruption.

Layout of one checkpoint (a Ray Train checkpoint directory ``<storage_path>/<experiment>/step_000000040_<attempt>``)::

    ds/mp_rank_00_model_states.pt, ds/zero_pp_rank_R_mp_rank_00_optim_states.pt, ...   DeepSpeed's files
    v2w-meta.json                 step, data position, world size (rank 0)
    v2w-manifest-rank00000.json   size + SHA-256 of every file rank 0 wrote, written last by rank 0
    v2w-manifest-rank00001.json   the same for rank 1, ...

Why manifests: every rank saves its own shard into a local temp dir and Ray Train uploads all ranks' dirs
into the same storage directory. A checkpoint whose upload was cut short, or whose object was truncated
or replaced later, must not be loaded half-way (DeepSpeed would fail deep inside ``torch.load``, or worse,
load a mix). A checkpoint is valid only if the manifest of every rank is present and every file it lists
has the recorded size and hash. On resume the newest valid checkpoint is used; skipped ones are logged
as warnings.

Why a safe loader: DeepSpeed's ``TorchCheckpointEngine.load`` calls ``torch.load(weights_only=False)``,
i.e. unpickles arbitrary objects from storage. :class:`SafeTorchCheckpointEngine` replaces it with
``weights_only=True`` and an allow-list of the few plain DeepSpeed data classes its files contain
(``ZeroStageEnum``, the loss scalers, ZeRO-2's ``fragment_address``), so a tampered checkpoint cannot run code on the workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DS_TAG = "ds"
META_NAME = "v2w-meta.json"
MANIFEST_PREFIX = "v2w-manifest-rank"
_STEP_DIR = re.compile(r"^step_(\d{9})(?:_[0-9a-z]+)?$")
_HASH_CHUNK = 4 << 20


def step_dir_name(step: int, attempt: str = "") -> str:
    """Checkpoint directory name: zero-padded step (name order is step order) and the attempt's tag.

    The tag keeps a step re-done after a fallback (same step, new attempt) from landing in the directory
    of the checkpoint it replaces: Ray's retention would later delete that older registration's path,
    i.e. the new files.
    """
    return f"step_{step:09d}_{attempt}" if attempt else f"step_{step:09d}"


def parse_step_dir(name: str) -> int | None:
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def manifest_name(rank: int) -> str:
    return f"{MANIFEST_PREFIX}{rank:05d}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files_under(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(MANIFEST_PREFIX)
    )


# --------------------------------------------------------------------------------------------- writing
def write_meta(local_dir: str | Path, meta: dict[str, Any]) -> None:
    Path(local_dir, META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True))


def write_manifest(local_dir: str | Path, *, rank: int, world_size: int, step: int) -> Path:
    """Hash every file this rank wrote into ``local_dir``; the manifest itself is written last (atomically)."""
    root = Path(local_dir)
    files = {
        rel: {"size": (root / rel).stat().st_size, "sha256": _sha256(root / rel)}
        for rel in _files_under(root)
    }
    manifest = {"rank": rank, "world_size": world_size, "step": step, "files": files}
    final = root / manifest_name(rank)
    tmp = final.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, final)
    return final


def save_checkpoint(
    engine: Any,
    *,
    step: int,
    rank: int,
    world_size: int,
    client_state: dict[str, Any],
    meta: dict[str, Any],
    parent: str | None = None,
) -> Path:
    """DeepSpeed ``save_checkpoint`` (collective) into a fresh local temp dir, then meta + this rank's manifest.

    Returns the directory to hand to ``ray.train.Checkpoint.from_directory``. The caller deletes it after
    the report (Ray copies it to storage synchronously).
    """
    local = Path(tempfile.mkdtemp(prefix=f"v2w-ckpt-{step}-r{rank}-", dir=parent))
    engine.save_checkpoint(str(local), tag=DS_TAG, client_state=client_state, save_latest=False)
    if rank == 0:
        write_meta(local, {**meta, "step": step, "world_size": world_size})
    write_manifest(local, rank=rank, world_size=world_size, step=step)
    return local


# ------------------------------------------------------------------------------------------ verifying
def verify_checkpoint_dir(local_dir: str | Path, *, world_size: int | None = None) -> list[str]:
    """Problems that make this checkpoint unusable (empty list = valid).

    Checks: a meta file, one manifest per rank of the world that saved it, every listed file present with
    its size and SHA-256; and that the saving world size equals ``world_size`` (ZeRO partitions are per
    rank; DeepSpeed cannot re-partition them here).
    """
    root = Path(local_dir)
    problems: list[str] = []
    meta_path = root / META_NAME
    if not meta_path.is_file():
        return [f"{META_NAME} missing"]
    try:
        meta = json.loads(meta_path.read_text())
        saved_world = int(meta["world_size"])
    except (ValueError, KeyError, TypeError) as err:
        return [f"{META_NAME} unreadable: {err}"]
    if world_size is not None and saved_world != world_size:
        problems.append(
            f"saved by {saved_world} workers, resuming with {world_size} (ZeRO shards do not match)"
        )
    for rank in range(saved_world):
        path = root / manifest_name(rank)
        if not path.is_file():
            problems.append(f"manifest of rank {rank} missing (upload incomplete?)")
            continue
        try:
            files = json.loads(path.read_text())["files"]
        except (ValueError, KeyError) as err:
            problems.append(f"manifest of rank {rank} unreadable: {err}")
            continue
        for rel, want in files.items():
            f = root / rel
            if not f.is_file():
                problems.append(f"{rel} missing")
            elif f.stat().st_size != want["size"]:
                problems.append(f"{rel} has {f.stat().st_size} bytes, manifest says {want['size']}")
            elif _sha256(f) != want["sha256"]:
                problems.append(f"{rel} SHA-256 mismatch")
    return problems


def read_meta(local_dir: str | Path) -> dict[str, Any]:
    return json.loads(Path(local_dir, META_NAME).read_text())


# ------------------------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint directory in (object) storage."""

    step: int
    path: str  # path inside ``filesystem``
    filesystem: Any  # pyarrow.fs.FileSystem

    def download(self, dest: str | Path) -> Path:
        """Copy the whole checkpoint to a local directory (every rank needs every ZeRO shard to load)."""
        import pyarrow.fs as pafs

        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        pafs.copy_files(
            self.path,
            str(dest),
            source_filesystem=self.filesystem,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        return dest


def list_checkpoints(filesystem: Any, run_path: str) -> list[CheckpointRef]:
    """All ``step_*`` checkpoint dirs of a run, newest first."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(run_path.rstrip("/"), allow_not_found=True, recursive=False)
    refs = []
    for info in filesystem.get_file_info(selector):
        if info.type != pafs.FileType.Directory:
            continue
        step = parse_step_dir(info.base_name)
        if step is not None:
            refs.append(CheckpointRef(step=step, path=info.path, filesystem=filesystem))
    return sorted(refs, key=lambda r: (r.step, r.path), reverse=True)


def resume_candidates(latest: Any, filesystem: Any = None, run_path: str | None = None) -> list[CheckpointRef]:
    """Every ``step_*`` checkpoint of the run, newest first: Ray's latest registration and its siblings.

    ``latest`` is a ``ray.train.Checkpoint`` (``.path`` inside ``.filesystem``) or None. ``filesystem`` and
    ``run_path`` name the run directory to list as well. Why both: a worker that dies right after
    ``ray.train.report`` leaves a complete checkpoint in storage that the controller never registered (it
    registers a report when it next polls the worker, and a dead worker's queued reports are lost), so
    Ray alone would resume from an older step or from scratch. Integrity manifests, not registration,
    decide whether a candidate is usable (``verify_checkpoint_dir``).
    """
    refs: dict[str, CheckpointRef] = {}
    parent = None
    if latest is not None:
        path = latest.path.rstrip("/")
        parent, _, name = path.rpartition("/")
        step = parse_step_dir(name)
        refs[path] = CheckpointRef(step=step if step is not None else 1 << 62, path=path, filesystem=latest.filesystem)
        for r in list_checkpoints(latest.filesystem, parent):
            refs.setdefault(r.path.rstrip("/"), r)
    # usually Ray's registration lives in the run directory itself: one listing (one S3 LIST) is enough
    if filesystem is not None and run_path and run_path.rstrip("/") != parent:
        for r in list_checkpoints(filesystem, run_path):
            refs.setdefault(r.path.rstrip("/"), r)
    return sorted(refs.values(), key=lambda r: (r.step, r.path), reverse=True)


# ----------------------------------------------------------------------------------------- safe load
def _safe_globals() -> list[Any]:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def make_safe_checkpoint_engine(config_params: Any) -> Any:
    """A DeepSpeed checkpoint engine that loads with ``torch.load(weights_only=True)`` (see module doc)."""
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeTorchCheckpointEngine(config_params)


def install_safe_loader(engine: Any) -> None:
    """Swap the engine's checkpoint engine for the weights-only one (only the plain torch engine is swapped)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = getattr(engine, "checkpoint_engine", None)
    if type(current) is TorchCheckpointEngine:
        engine.checkpoint_engine = make_safe_checkpoint_engine(engine._config)
    else:
        logger.warning("checkpoint engine %s left as is; its loader may unpickle", type(current).__name__)


def load_into_engine(engine: Any, local_dir: str | Path, *, load_optimizer: bool = True) -> dict[str, Any]:
    """Load a verified checkpoint dir into an initialized engine; returns DeepSpeed's client state."""
    path, client_state = engine.load_checkpoint(
        str(local_dir),
        tag=DS_TAG,
        load_optimizer_states=load_optimizer,
        load_lr_scheduler_states=load_optimizer,
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {local_dir}")
    return client_state or {}
