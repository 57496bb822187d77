"""What every benchmark shares: the machine it ran on, one appended record per run, markdown tables.

``bench/results/NAME.json`` is a JSON list of records, one per run of ``bench/NAME.py``, appended by
:func:`append_record` and by nothing else (no hand edits: a note about a run goes in bench/README.md).
Every record has ``bench`` (NAME), ``time`` (UTC), ``machine`` (:func:`machine_info`) and ``headline``:
the run's key figures — the ones README.md and bench/README.md quote — plus ``headline["machine"]``, a
one-line summary of the machine (:func:`machine_summary`). Only the standard library is imported here:
the GPU benches run on boxes with little more than torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` is often just the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(packages: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """Host, CPU model, cores, memory, load average (1, 5, 15 min, now), Python, torch's version and — when
    the bench imported torch and a GPU is visible — the CUDA device's name; ``packages``: their installed
    versions (None when missing); ``extra`` keys (e.g. ``device=`` the device a GPU bench ran on) are added
    as given."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": _memory_gb(),
        "load_average": _load_average(),
    }
    torch = sys.modules.get("torch")  # not imported here: a bench that never needs torch stays without it
    if torch is None:
        try:
            info["torch"] = metadata.version("torch")
        except metadata.PackageNotFoundError:
            info["torch"] = None
    else:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(torch.cuda.current_device())
            info["cuda_devices"] = torch.cuda.device_count()
            info["cuda"] = torch.version.cuda
    if packages:
        versions: dict[str, str | None] = {}
        for pkg in packages:
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                versions[pkg] = None
        info["packages"] = versions
    info.update(extra)
    return info


def machine_summary(machine: Mapping[str, Any], *details: str, load: bool = False) -> str:
    """One line for ``headline["machine"]``: "AMD EPYC × 2 cores[, NVIDIA H100 80GB HBM3][, details]
    [, load 3.1]" (``load``: the 1-minute load average when the machine was recorded — on a shared box
    the wall-clock figures depend on it)."""
    parts = [f"{machine.get('cpu')} × {machine.get('cores')} cores"]
    if machine.get("cuda_device"):
        parts.append(str(machine["cuda_device"]))
    parts += details
    if load and machine.get("load_average"):
        parts.append(f"load {machine['load_average'][0]}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ records
def new_record(bench: str, **fields: Any) -> dict[str, Any]:
    """The common head of a record: bench name, UTC time, a run id (so a bench that rewrites its record
    as it goes replaces its own record, not another run's) and the machine, then ``fields``."""
    return {
        "bench": bench,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": uuid.uuid4().hex[:12],
        "machine": fields.pop("machine", None) or machine_info(),
        **fields,
    }


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results file: [] when it does not exist, a legacy single-object file (the format
    before records were appended) as a list holding that object."""
    path = Path(path)
    if not path.exists() or not path.read_text().strip():
        return []
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise TypeError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return data


def check_record(record: Mapping[str, Any]) -> None:
    """A record needs ``machine`` and a ``headline`` object that names the machine too."""
    if not record.get("machine"):
        raise ValueError("a benchmark record needs 'machine' (bench/_record.py: machine_info())")
    headline = record.get("headline")
    if not isinstance(headline, Mapping) or not headline:
        raise ValueError("a benchmark record needs a non-empty 'headline' object of its key figures")
    if not headline.get("machine"):
        raise ValueError("a benchmark record's headline needs 'machine' (bench/_record.py: machine_summary)")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    return str(obj)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on the results directory: two runs appending at once both keep their record."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def append_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Append ``record`` to the JSON list at ``path`` (created if missing; a legacy single-object file is
    first turned into a list holding it), or replace the record with the same ``run_id`` (a bench that
    rewrites its record after every row). Written atomically (temporary file + rename)."""
    check_record(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        records = load_records(path)
        run_id = record.get("run_id")
        for i, old in enumerate(records):
            if run_id is not None and isinstance(old, dict) and old.get("run_id") == run_id:
                records[i] = record
                break
        else:
            records.append(record)
        text = json.dumps(records, indent=1, default=_jsonable) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


# ------------------------------------------------------------------------------------------- tables
def _cell(value: Any, floatfmt: str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and floatfmt is not None:
        return "nan" if math.isnan(value) else format(value, floatfmt)
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    headers: Sequence[str] | None = None,
    floatfmt: str | None = ".1f",
) -> str:
    """A markdown table, one line per row: ``columns`` are the rows' keys (missing or None → "-"), floats
    formatted with ``floatfmt`` (None: as they are), ``headers`` default to the column keys."""
    head = list(headers or columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), floatfmt) for c in columns) + " |")
    return "\n".join(lines)


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    headers: Sequence[str] | None = None,
    floatfmt: str | None = ".1f",
) -> None:
    print(format_table(rows, columns, headers, floatfmt))
    sys.stdout.flush()


def rounded(value: float | None, digits: int = 1) -> float | None:
    """``round`` that lets None (a row that failed) through."""
    return None if value is None else round(float(value), digits)
