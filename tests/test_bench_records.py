"""Benchmark records: every bench/*.py appends one record per run through bench/_record.py, with a
``headline`` and the ``machine``; every live results file is a list of such records."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _record
from bench._record import append_record, check_record, format_table, load_records, machine_info, new_record

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))

#: Records written before bench/_record.py existed (one per file, the first): no ``headline``. Their
#: numbers are the ones bench/README.md quotes; they were wrapped in a list unchanged. Nothing may join.
LEGACY_FIRST_RECORDS = {"data_throughput", "eval_throughput", "ingest", "rollout", "rollout_profile"}


def _rec(**kw):
    headline = {"a": 1, "machine": "c × 1 cores"}
    return {"bench": "x", "machine": {"cpu": "c", "cores": 1}, "headline": headline, **kw}


# ------------------------------------------------------------------------------------- the scripts
def test_there_are_bench_scripts():
    assert len(SCRIPTS) >= 9, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_appends_a_record_with_headline(script: Path):
    src = script.read_text()
    tree = ast.parse(src)
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "bench._record"
        for alias in node.names
    }
    assert "append_record" in imported, f"{script.name}: write results with bench._record.append_record"
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    names = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None) for n in calls}
    assert "append_record" in names
    assert "new_record" in names or "machine_info" in names, f"{script.name} must record the machine"
    assert '"headline"' in src or "'headline'" in src, f"{script.name} must set record['headline']"
    # no other way to a results file: json.dump to a handle, or write_text (train_step's child row to
    # its parent, in a temporary file, is the one exception)
    assert "json.dump(" not in src
    for node in calls:
        if isinstance(node.func, ast.Attribute) and node.func.attr == "write_text":
            assert "child_out" in ast.unparse(node.func.value), f"{script.name}: {ast.unparse(node)}"
    # no machine-info code of its own
    assert "/proc/cpuinfo" not in src and "platform.node()" not in src, f"{script.name}: use machine_info()"
    assert f"results/{script.stem}.json" in src or f'"{script.stem}.json"' in src


#: The benches with a run of a few seconds on a CPU (tiny model, 2 DDIM steps, 3 context frames).
TINY_RUNS = {
    "action_signal": "--episodes 2 --option episode_length=8",
    "rollout": "--context 3 --steps 2 --frames 1 --batches 1 --repeats 1",
    "rollout_gpu": "--preset tiny --device cpu --families unet3d --modes full,stream,stream_incremental --batches 1 --steps 2 "
    "--context 3",
    "rollout_profile": "--preset tiny --device cpu --variants channels_last --batches 1 "
    "--batch-variant channels_last --iters 1 --steps 2 --context 3",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_tiny_run_appends_one_record(name: str, tmp_path: Path):
    out = tmp_path / f"{name}.json"
    out.write_text(json.dumps({"bench": name, "legacy": True}))  # an old single-object file
    cmd = [sys.executable, str(BENCH / f"{name}.py"), *TINY_RUNS[name].split(), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    records = json.loads(out.read_text())
    assert isinstance(records, list) and len(records) == 2, records  # legacy kept first, one record per run
    assert records[0] == {"bench": name, "legacy": True}
    check_record(records[1])
    assert records[1]["bench"] == name
    assert records[1]["machine"]["cores"] and records[1]["machine"]["cpu"]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


# ------------------------------------------------------------------------------- the results files
def test_results_are_lists_of_records_with_headline_and_machine():
    files = sorted(RESULTS.glob("*.json"))
    assert files
    scripts = {p.stem for p in SCRIPTS}
    for path in files:
        assert path.stem in scripts, f"{path.name}: no bench/{path.stem}.py writes it (historical/?)"
        records = json.loads(path.read_text())
        assert isinstance(records, list), f"{path.name}: not a list of records"
        for i, rec in enumerate(records):
            assert rec.get("machine"), f"{path.name}[{i}]: no machine"
            assert (rec.get("bench") or rec.get("benchmark")) == path.stem, f"{path.name}[{i}]"
            if "headline" not in rec:
                assert path.stem in LEGACY_FIRST_RECORDS and i == 0 and "run_id" not in rec, (
                    f"{path.name}[{i}]: no headline"
                )
                continue
            check_record(rec)


def test_historical_results_are_documented():
    readme = (RESULTS / "historical" / "README.md").read_text()
    for path in (RESULTS / "historical").glob("*.json"):
        assert f"`{path.name}`" in readme, path.name


# ---------------------------------------------------------------------------------- bench/_record
def test_append_creates_converts_and_appends(tmp_path: Path):
    path = tmp_path / "sub" / "x.json"
    append_record(path, _rec(n=1))
    assert [r["n"] for r in json.loads(path.read_text())] == [1]
    append_record(path, _rec(n=2))
    assert [r["n"] for r in load_records(path)] == [1, 2]

    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"benchmark": "x", "results": [1]}, indent=2))
    append_record(legacy, _rec(n=3))
    records = json.loads(legacy.read_text())
    assert records[0] == {"benchmark": "x", "results": [1]} and records[1]["n"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy.json", "sub"]


def test_same_run_id_replaces_its_own_record(tmp_path: Path):
    path = tmp_path / "x.json"
    append_record(path, _rec(run_id="other", n=0))
    append_record(path, _rec(run_id="r1", n=1))
    append_record(path, _rec(run_id="r1", n=2))  # the same run, one more row
    assert [(r["run_id"], r["n"]) for r in load_records(path)] == [("other", 0), ("r1", 2)]


@pytest.mark.parametrize(
    "bad",
    [
        {"bench": "x", "headline": {"a": 1, "machine": "m"}},
        {"bench": "x", "machine": {"cpu": "c"}},
        {"bench": "x", "machine": {"cpu": "c"}, "headline": {}},
        {"bench": "x", "machine": {"cpu": "c"}, "headline": {"a": 1}},
    ],
)
def test_a_record_needs_headline_and_machine(tmp_path: Path, bad: dict):
    with pytest.raises(ValueError, match="headline|machine"):
        append_record(tmp_path / "x.json", bad)
    assert not (tmp_path / "x.json").exists()


def test_numpy_values_are_written_as_numbers(tmp_path: Path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "x.json"
    append_record(path, _rec(v=np.float32(1.5), i=np.int64(3), p=tmp_path))
    rec = load_records(path)[0]
    assert rec["v"] == 1.5 and rec["i"] == 3 and rec["p"] == str(tmp_path)


def test_machine_info_and_new_record():
    m = machine_info(("numpy", "no-such-package-v2w"), device="cpu")
    for key in ("host", "cpu", "cores", "memory_gb", "load_average", "python", "torch"):
        assert key in m, key
    assert m["packages"]["no-such-package-v2w"] is None and m["packages"]["numpy"]
    assert m["device"] == "cpu"
    rec = new_record("x", settings={"a": 1})
    assert rec["bench"] == "x" and rec["machine"]["cores"] and rec["run_id"] and rec["settings"] == {"a": 1}
    summary = _record.machine_summary(rec["machine"], "2 threads", load=True)
    assert summary.startswith(f"{rec['machine']['cpu']} × {rec['machine']['cores']} cores")
    assert "2 threads" in summary and "load" in summary


def test_format_table():
    text = format_table([{"a": 1.234, "b": None}, {"a": "x"}], ["a", "b"], ["A", "B"])
    assert text.splitlines() == ["| A | B |", "|---|---|", "| 1.2 | - |", "| x | - |"]
