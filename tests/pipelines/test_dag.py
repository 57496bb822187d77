"""The DAG runner: stages run once, are skipped on a rerun, resume after a failure, and --from forces."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ray import cloudpickle  # Ray serialises with its own vendored copy

from pipelines.dag import Stage, build_and_run, downstream_of, fingerprint

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import the tests package


def _count(ctx, name: str) -> int:
    """Append to a per-stage counter file so the test can see how often each stage really ran."""
    counter = Path(ctx.config["counter_dir"]) / f"{name}.count"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    return n


def make_data(ctx, inputs):
    _count(ctx, "data")
    return {"value": ctx.config["value"]}


def double(ctx, inputs):
    _count(ctx, "double")
    if Path(ctx.config["counter_dir"], "fail-double").exists():
        raise RuntimeError("planned failure")
    return {"value": 2 * inputs["data"].outputs["value"], "dir": ctx.output_dir}


def report(ctx, inputs):
    _count(ctx, "report")
    return {"value": inputs["double"].outputs["value"] + 1}


def stages(counter_dir: Path, value: int = 3, factor_note: str = "x") -> list[Stage]:
    c = str(counter_dir)
    return [
        Stage("data", make_data, {"value": value, "counter_dir": c}, num_cpus=0.1),
        Stage("double", double, {"note": factor_note, "counter_dir": c}, ("data",), num_cpus=0.1),
        Stage("report", report, {"counter_dir": c}, ("double",), num_cpus=0.1),
    ]


def counts(d: Path) -> dict[str, int]:
    return {n: int((d / f"{n}.count").read_text()) if (d / f"{n}.count").exists() else 0
            for n in ("data", "double", "report")}


def test_run_skip_resume_and_force(ray_cluster, tmp_path):
    root, cnt = str(tmp_path / "root"), tmp_path / "counts"
    cnt.mkdir()
    res = build_and_run(stages(cnt), root)
    assert res["report"].outputs["value"] == 7
    assert counts(cnt) == {"data": 1, "double": 1, "report": 1}

    res = build_and_run(stages(cnt), root)  # same fingerprints: everything skipped
    assert all(r.skipped for r in res.values()) and res["report"].outputs["value"] == 7
    assert counts(cnt) == {"data": 1, "double": 1, "report": 1}

    # a config change re-runs that stage and what depends on it, not what comes before
    res = build_and_run(stages(cnt, factor_note="y"), root)
    assert [res[n].skipped for n in ("data", "double", "report")] == [True, False, False]

    # a failure leaves no record: the rerun resumes at the failed stage
    (cnt / "fail-double").touch()
    with pytest.raises(Exception, match="planned failure"):
        build_and_run(stages(cnt, value=5), root)
    (cnt / "fail-double").unlink()
    before = counts(cnt)
    res = build_and_run(stages(cnt, value=5), root)
    after = counts(cnt)
    assert res["report"].outputs["value"] == 11
    assert after["data"] == before["data"]  # data(5) finished before the failure and is reused
    assert after["double"] == before["double"] + 1

    # --from double forces double and report; data is still skipped
    force = downstream_of(stages(cnt), "double")
    assert force == {"double", "report"}
    unforced_dir = res["double"].outputs["dir"]
    res = build_and_run(stages(cnt, value=5), root, force=force)
    assert [res[n].skipped for n in ("data", "double", "report")] == [True, False, False]
    # a forced run writes into a fresh attempt directory: it neither resumes nor overwrites the old outputs
    forced_dir = res["double"].outputs["dir"]
    assert forced_dir.startswith(unforced_dir + "/attempt-"), (forced_dir, unforced_dir)
    again = build_and_run(stages(cnt, value=5), root, force=force)["double"].outputs["dir"]
    assert again != forced_dir and again.startswith(unforced_dir + "/attempt-")

    rec = json.loads((tmp_path / "root" / "stages" / "data" / f"{res['data'].fingerprint}.json").read_text())
    assert rec["outputs"] == {"value": 5}


def test_fail_after_keeps_the_finished_stage_and_resumes_after_it(ray_cluster, tmp_path):
    root, cnt = str(tmp_path / "root"), tmp_path / "counts"
    cnt.mkdir()
    with pytest.raises(Exception, match="injected failure after the stage finished"):
        build_and_run(stages(cnt), root, fail_after="double")
    assert counts(cnt) == {"data": 1, "double": 1, "report": 0}  # report never started
    res = build_and_run(stages(cnt), root)
    assert [res[n].skipped for n in ("data", "double", "report")] == [True, True, False]
    assert res["report"].outputs["value"] == 7 and counts(cnt) == {"data": 1, "double": 1, "report": 1}
    with pytest.raises(ValueError, match="no such stage"):
        build_and_run(stages(cnt), root, fail_after="nope")


def test_fingerprint_depends_on_config_and_upstream():
    a = fingerprint("s", {"x": 1}, ["u1"])
    assert a == fingerprint("s", {"x": 1}, ["u1"])
    assert a != fingerprint("s", {"x": 2}, ["u1"])
    assert a != fingerprint("s", {"x": 1}, ["u2"])


def test_bad_wiring_is_an_error(tmp_path):
    s = stages(tmp_path)
    with pytest.raises(ValueError, match="must come before"):
        build_and_run([s[1], s[0]], str(tmp_path))
    with pytest.raises(ValueError, match="no such stage"):
        downstream_of(s, "nope")
