"""A resumable DAG of pipeline stages on Ray.

Each stage is a Ray remote function with its own resources, wired with Ray's DAG API (``.bind()``;
``ray.workflow`` is gone from Ray). A stage's identity is a *fingerprint*: a hash of its own config
section and its upstream stages' fingerprints. When it finishes, the stage writes a small JSON record
(its outputs: URIs in object storage and a few numbers) under ``<root>/stages/<name>/<fingerprint>.json``
— written last, so its presence means the outputs are complete. A stage whose record exists is skipped,
so a failed pipeline resumes where it stopped; ``force`` re-runs chosen stages (``--from STAGE`` forces
that stage and everything downstream of it).

MLflow: each stage is a run nested under the pipeline's parent run (``mlflow.parentRunId`` tag), holding
its fingerprint, whether it was skipped, and its outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from v2w_core import storage

log = logging.getLogger(__name__)

#: A stage's config: its typed pipeline section (a pydantic model, see ``pipelines/config.py``); plain
#: mappings are accepted for stages outside the pipeline (tests).
StageConfig = BaseModel | Mapping[str, Any]

StageFn = Callable[["StageContext", Mapping[str, "StageResult"]], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a function of its config section and its upstream stages' outputs."""

    name: str
    fn: StageFn
    config: StageConfig
    upstream: tuple[str, ...] = ()
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class StageResult:
    name: str
    fingerprint: str
    outputs: dict[str, Any]
    skipped: bool
    seconds: float
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class StageContext:
    """What a stage function gets besides its inputs: where to write, its config, tracking handles."""

    name: str
    fingerprint: str
    root: str
    config: Any  # the Stage's config, as given (typed by each stage function)
    mlflow_run_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Set when the stage is forced (``--from``): a forced run must start over, not resume the earlier
    # run's checkpoints in the same directory (training would restart at its last step and do nothing),
    # and must not overwrite the outputs that the existing record still points to until it succeeds.
    attempt: str = ""

    @property
    def output_dir(self) -> str:
        """A fresh directory per (stage, fingerprint[, forced attempt]): outputs never collide."""
        parts = [self.root, "stages", self.name, self.fingerprint]
        return storage.join(*parts, f"attempt-{self.attempt}") if self.attempt else storage.join(*parts)


def config_data(config: StageConfig) -> dict[str, Any]:
    """A stage config as JSON data: what its fingerprint hashes, its record holds and MLflow logs."""
    return config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)


def fingerprint(name: str, config: StageConfig, upstream: Sequence[str]) -> str:
    blob = json.dumps({"stage": name, "config": config_data(config), "upstream": list(upstream)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def record_uri(root: str, name: str, fp: str) -> str:
    return storage.join(root, "stages", name, f"{fp}.json")


class InjectedFault(RuntimeError):
    """Raised by ``--fail-after STAGE`` once that stage's outputs are recorded (tests resumption)."""


def run_stage(stage: Stage, root: str, force: bool, tracking: Mapping[str, Any] | None,
              *upstream: StageResult, fail_after: bool = False) -> StageResult:
    """Run (or skip) one stage. Executed inside a Ray task; ``upstream`` arrive resolved by Ray.

    ``fail_after``: crash the pipeline right after this stage has run and recorded its outputs, as a
    node loss or a bug in the next stage would (fault injection for resumption tests)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from v2w_core.data.clips import configure_progress

    configure_progress()  # the stages' Ray Data executions: progress bars only for a terminal
    inputs = {u.name: u for u in upstream}
    fp = fingerprint(stage.name, stage.config, [inputs[n].fingerprint for n in stage.upstream])
    rec = record_uri(root, stage.name, fp)
    if not force and storage.exists(rec):
        outputs = json.loads(storage.read_bytes(rec))["outputs"]
        run_id = _track(tracking, stage, fp, outputs, skipped=True, seconds=0.0)
        log.info("[%s] skipped: outputs with fingerprint %s exist (%s)", stage.name, fp, rec)
        return StageResult(stage.name, fp, outputs, True, 0.0, run_id)

    log.info("[%s] running (fingerprint %s)", stage.name, fp)
    start = time.perf_counter()
    run_id = _start_tracking(tracking, stage, fp)
    attempt = time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:6]}" if force else ""
    ctx = StageContext(stage.name, fp, root, stage.config, run_id, {"tracking": tracking}, attempt)
    try:
        outputs = stage.fn(ctx, inputs)
    except BaseException:
        _end_tracking(tracking, run_id, "FAILED")
        raise
    seconds = time.perf_counter() - start
    storage.write_bytes(rec, json.dumps({"stage": stage.name, "fingerprint": fp, "outputs": outputs,
                                         "config": config_data(stage.config), "seconds": seconds},
                                        indent=2, sort_keys=True, default=str).encode())
    _finish_tracking(tracking, run_id, outputs, seconds)
    log.info("[%s] done in %.1fs", stage.name, seconds)
    if fail_after:
        raise InjectedFault(f"[{stage.name}] injected failure after the stage finished (--fail-after)")
    return StageResult(stage.name, fp, outputs, False, seconds, run_id)


def downstream_of(stages: Sequence[Stage], start: str) -> set[str]:
    """``start`` and every stage that depends on it, transitively (what ``--from`` re-runs)."""
    names = {s.name for s in stages}
    if start not in names:
        raise ValueError(f"--from {start!r}: no such stage; stages are {', '.join(s.name for s in stages)}")
    out = {start}
    for s in stages:  # stages are in topological order
        if any(u in out for u in s.upstream):
            out.add(s.name)
    return out


def build_and_run(stages: Sequence[Stage], root: str, *, force: set[str] | None = None,
                  tracking: Mapping[str, Any] | None = None,
                  fail_after: str | None = None) -> dict[str, StageResult]:
    """Wire the stages with Ray's DAG API and execute; returns every stage's result by name.

    ``fail_after``: name of a stage after which the pipeline crashes (see :func:`run_stage`)."""
    import ray
    from ray.dag import MultiOutputNode

    force = force or set()
    _check_topological(stages)
    if fail_after is not None and fail_after not in {s.name for s in stages}:
        raise ValueError(f"--fail-after {fail_after!r}: no such stage")
    nodes: dict[str, Any] = {}
    # max_calls=1: each stage runs in a fresh worker process that exits when the stage returns, so what the
    # stage owns (Ray Data actor pools, their CPUs) dies with it instead of lingering in a reused worker and
    # starving later stages or jobs of the cluster's CPUs.
    remote = ray.remote(max_calls=1)(run_stage)
    for s in stages:
        opts = remote.options(name=f"stage:{s.name}", num_cpus=s.num_cpus, num_gpus=s.num_gpus,
                              max_retries=0)
        nodes[s.name] = opts.bind(s, root, s.name in force, tracking, *(nodes[u] for u in s.upstream),
                                  fail_after=s.name == fail_after)
    results = ray.get(MultiOutputNode([nodes[s.name] for s in stages]).execute())
    return {r.name: r for r in results}


def _check_topological(stages: Sequence[Stage]) -> None:
    seen: set[str] = set()
    for s in stages:
        missing = [u for u in s.upstream if u not in seen]
        if missing:
            raise ValueError(f"stage {s.name!r} depends on {missing}, which must come before it")
        if s.name in seen:
            raise ValueError(f"stage {s.name!r} is defined twice")
        seen.add(s.name)


# --- MLflow: one nested run per stage ------------------------------------------------------------------

def _start_tracking(tracking: Mapping[str, Any] | None, stage: Stage, fp: str) -> str | None:
    if not tracking:
        return None
    from v2w_core.tracking import start_stage_run

    return start_stage_run(tracking["tracking_uri"], tracking["experiment_id"],
                           parent_run_id=tracking["parent_run_id"], stage=stage.name, fingerprint=fp,
                           params=_flatten(config_data(stage.config)))


def _finish_tracking(tracking: Mapping[str, Any] | None, run_id: str | None, outputs: Mapping[str, Any],
                     seconds: float) -> None:
    if not tracking or run_id is None:
        return
    from v2w_core.tracking import finish_stage_run

    finish_stage_run(tracking["tracking_uri"], run_id, _flatten(outputs), seconds)


def _end_tracking(tracking: Mapping[str, Any] | None, run_id: str | None, status: str) -> None:
    if tracking and run_id:
        from v2w_core.tracking import terminate_run

        terminate_run(tracking["tracking_uri"], run_id, status)


def _track(tracking: Mapping[str, Any] | None, stage: Stage, fp: str, outputs: Mapping[str, Any], *,
           skipped: bool, seconds: float) -> str | None:
    run_id = _start_tracking(tracking, stage, fp)
    if run_id:
        from v2w_core.tracking import set_run_tag

        assert tracking is not None
        set_run_tag(tracking["tracking_uri"], run_id, "v2w.skipped", str(skipped).lower())
    _finish_tracking(tracking, run_id, outputs, seconds)
    return run_id


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
