"""The product as users run it: `ray job submit … -- python pipelines/full.py` against the local stack.

One small but complete run (ingest → clips, base → causalize → train → evaluate → register) submitted to
a real Ray head through the real CLI; then the same submission again, which must skip every stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from infra import stack as stack_mod

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "clips", "base", "causalize", "train", "evaluate", "register"]
SMALL = [
    "data.episodes=8", "data.writer.eval_fraction=0.3", "data.source=bouncing-shapes",
    "data.source_options={episode_length: 24}",
    "base.train.max_steps=3", "base.train.checkpoint.every_n_steps=3",
    "train.train.max_steps=3", "train.train.checkpoint.every_n_steps=3",
    "evaluate.protocol.max_episodes=2", "evaluate.protocol.horizon=4",
    "evaluate.protocol.rollout.num_inference_steps=3", "evaluate.protocol.num_videos=1",
]


@pytest.fixture(scope="module")
def ray_head(mlflow_stack, _stack_config):
    """A Ray head on loopback (the stack's), for `ray job submit`; stopped after the module."""
    cfg = _stack_config["cfg"]  # the session's stack config (a holder: see tests/conftest.py)
    info = stack_mod.ensure_running(("s3", "mlflow", "ray"), config=cfg)
    try:
        yield info
    finally:
        stack_mod.stop([s for s in info.started if s == "ray"], config=cfg)


def _submit(info, name: str, root: str, model_name: str) -> str:
    env = {**os.environ, **info.env()}
    job_env = {k: env[k] for k in ("V2W_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                   "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
                                   "MLFLOW_DISABLE_TELEMETRY")}
    overrides = [*SMALL, f"run.name={name}", f"run.root={root}", f"registry.model_name={model_name}"]
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", info.ray_dashboard_url,
           "--working-dir", str(ROOT), "--runtime-env-json", json.dumps({"env_vars": job_env}), "--",
           "python", "pipelines/full.py", "--config", "configs/tiny.yaml"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500,
                          check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out.lower(), out[-6000:]
    return out


def test_job_submit_runs_the_dag_and_resumes(ray_head, mlflow_stack):
    from mlflow.tracking import MlflowClient

    name, model_name = f"job-{uuid.uuid4().hex[:6]}", f"v2w-test-{uuid.uuid4().hex[:6]}"
    root = f"s3://{mlflow_stack.bucket}/{name}"
    out = _submit(ray_head, name, root, model_name)
    assert "counts reconcile: True" in out
    for stage in STAGES:
        assert f"[{stage}] done" in out, f"stage {stage} did not run:\n{out[-4000:]}"

    client = MlflowClient(tracking_uri=mlflow_stack.mlflow_uri)
    exp = client.get_experiment_by_name("vid2world")
    parents = client.search_runs([exp.experiment_id], f"tags.`v2w.pipeline` = '{name}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    by_stage = {r.data.tags.get("v2w.stage"): r for r in children if r.data.tags.get("v2w.stage")}
    assert set(STAGES) <= set(by_stage), sorted(by_stage)
    assert by_stage["clips"].data.metrics["clips"] > 0
    assert "stage_seconds" in by_stage["train"].data.metrics

    # the evaluation run (nested under the evaluate stage) holds metrics and a rollout video
    evals = client.search_runs([exp.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{by_stage['evaluate'].info.run_id}'")
    trained = [r for r in evals if r.info.run_name == "eval:trained"]
    assert trained and "psnr_mean" in trained[0].data.metrics
    videos = client.list_artifacts(trained[0].info.run_id, "videos")
    assert any(a.path.endswith((".gif", ".mp4")) for a in videos)

    version = client.get_model_version_by_alias(model_name, "champion")
    assert version.tags["v2w.data_manifest"].startswith(root)

    again = _submit(ray_head, name, root, model_name)
    for stage in STAGES:
        assert f"[{stage}] skipped" in again, f"stage {stage} was not skipped on the rerun"
