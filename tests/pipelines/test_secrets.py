"""Secrets never travel in a Ray runtime env or job metadata (issue 21, item 3).

Whatever a Ray runtime env holds is shown in plain text by ``ray job list``, the Jobs API (/api/jobs/) and
Ray's logs. The pipeline's workers find the keys themselves: the local stack's Ray head carries the path
of the stack's credentials file (``V2W_CREDENTIALS_FILE``, mode 0600), never the keys.

The end-to-end test runs the real pipeline (``full.py --local-stack``: ingest, then the clips stage, whose
Ray Data read tasks read the shards back) against an S3 server that *authenticates* (moto with IAM
enforced), so the workers can read only if the right secret reached them; then it looks for that secret
everywhere Ray and MLflow keep things.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from infra import stack as stack_mod
from infra.stack import StackConfig, free_port
from pipelines import common
from v2w_core.train import api

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
# The smallest real pipeline that starts Ray workers reading S3: it crashes on purpose after the clips
# stage (every stage has run through ingest's outputs by then). The rest is small in case the DAG gets on.
SMALL = [
    "data.episodes=6", "data.writer.eval_fraction=0.3", "data.source=bouncing-shapes",
    "data.source_options={episode_length: 24}",
    "train.train.max_steps=1", "train.train.checkpoint.every_n_steps=1",
    "train.train.scaling={num_workers: 1, cpus_per_worker: 0.5}",
    "evaluate.baseline=false", "evaluate.protocol.max_episodes=1", "evaluate.protocol.horizon=2",
    "evaluate.protocol.rollout.num_inference_steps=1", "evaluate.protocol.controllability=false",
]  # fmt: skip


def test_worker_env_never_holds_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    planted = f"planted-{uuid.uuid4().hex}"
    for name in SECRET_NAMES:
        monkeypatch.setenv(name, f"{planted}-{name}")
    monkeypatch.setenv("V2W_CREDENTIALS_FILE", "/stack/credentials")
    monkeypatch.setenv("V2W_S3_ENDPOINT", "http://127.0.0.1:1")
    env = common.worker_env()
    assert not SECRET_NAMES & set(env), env.keys()
    assert planted not in json.dumps(env)
    assert env["V2W_CREDENTIALS_FILE"] == "/stack/credentials"
    assert env["V2W_S3_ENDPOINT"] == "http://127.0.0.1:1"
    assert not SECRET_NAMES & set(common.WORKER_ENV_VARS)
    assert not SECRET_NAMES & set(api._FORWARDED_ENV)  # the Ray Train workers' runtime env
    assert "V2W_CREDENTIALS_FILE" in api._FORWARDED_ENV


@pytest.fixture(scope="module")
def auth_stack(mlflow_stack, authenticating_s3, tmp_path_factory):
    """A Ray head of a stack whose object store authenticates (its keys are the planted secret), beside
    the session's MLflow; stopped after the module."""
    endpoint, key_id, secret = authenticating_s3
    cfg = StackConfig(stack_dir=tmp_path_factory.mktemp("secrets-stack"), s3_port=urlparse(endpoint).port,
                      mlflow_port=mlflow_stack.config.mlflow_port, ray_port=free_port(6690),
                      ray_dashboard_port=free_port(8306), bucket="authb", access_key=key_id,
                      secret_key=secret)  # fmt: skip
    info = stack_mod.ensure_running(("ray",), config=cfg)
    try:
        yield info, secret
    finally:
        stack_mod.stop(("ray",), config=cfg)


PROBE = """
import hashlib, json, os, sys
sys.path.insert(0, os.getcwd())
import ray
from pipelines.common import connect_ray, use_stack_env

use_stack_env(local_stack=True)
connect_ray(None)  # exactly as the pipeline joins the cluster


@ray.remote(num_cpus=0.1)
def probe(uri):
    from v2w_core import storage

    key = storage.s3_settings().secret_key or ""
    keys_in_env = sorted(k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ)
    return {"keys_in_env": keys_in_env, "secret_sha256": hashlib.sha256(key.encode()).hexdigest(),
            "bytes_read": len(storage.read_bytes(uri))}


print("PROBE " + json.dumps({"runtime_env": dict(ray.get_runtime_context().runtime_env),
                             "worker": ray.get(probe.remote(sys.argv[1]))}))
"""


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                hits.append(str(path.relative_to(root)))
        except OSError:  # a socket, or a file Ray removed meanwhile
            continue
    return hits


@pytest.mark.slow
def test_secret_reaches_workers_only_through_the_credentials_file(
    auth_stack, mlflow_stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from v2w_core import storage

    info, secret = auth_stack
    cfg = info.config
    tag = uuid.uuid4().hex[:8]
    root, experiment = f"s3://authb/secrets-{tag}", f"v2w-secrets-{tag}"
    # The submitting shell: the stack's variables, the planted secret among them (AWS_SECRET_ACCESS_KEY).
    env = {**os.environ, **cfg.client_env()}
    assert env["AWS_SECRET_ACCESS_KEY"] == secret and env["V2W_CREDENTIALS_FILE"] == str(cfg.credentials_path)
    assert cfg.credentials_path.stat().st_mode & 0o777 == 0o600
    cmd = [sys.executable, "pipelines/full.py", "--local-stack", "--config", "configs/tiny.yaml",
           "--fail-after", "clips"]  # fmt: skip
    for o in [*SMALL, f"run.name=secrets-{tag}", f"run.root={root}", f"run.experiment={experiment}"]:
        cmd += ["--set", o]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "injected failure after the stage finished" in out, out[-6000:]
    assert "[ingest] done" in out and "[clips] done" in out, out[-6000:]
    pipeline_s = time.monotonic() - start

    # The workers did read S3 with the planted secret, which they found in the file, not their environment.
    monkeypatch.setenv("V2W_S3_ENDPOINT", cfg.s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", cfg.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    storage.clear_caches()
    try:
        stages = f"{root}/stages"  # records are <stages>/<stage>/<fingerprint>.json, outputs lie deeper
        records = {u: storage.read_bytes(u).decode() for u in storage.list_files(stages)
                   if u.endswith(".json") and u[len(stages) + 1 :].count("/") == 1}  # fmt: skip
    finally:
        monkeypatch.undo()
        storage.clear_caches()
    outputs = {json.loads(t)["stage"]: json.loads(t)["outputs"] for t in records.values()}
    clips = outputs["clips"]
    assert clips["episodes_read"] == clips["episodes_expected"] > 0 and clips["clips"] > 0, clips
    probe = subprocess.run([sys.executable, "-c", PROBE, outputs["ingest"]["manifest"]], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    line = next((x for x in probe.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert probe.returncode == 0 and line, probe.stdout[-3000:] + probe.stderr[-3000:]
    seen = json.loads(line[len("PROBE ") :])
    assert seen["worker"]["keys_in_env"] == [] and seen["worker"]["bytes_read"] > 0, seen
    assert seen["worker"]["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    # ... and the runtime env the job carries names the file, not the keys.
    assert seen["runtime_env"]["env_vars"]["V2W_CREDENTIALS_FILE"] == str(cfg.credentials_path)
    assert not SECRET_NAMES & set(seen["runtime_env"]["env_vars"])

    # Nowhere to be found: the Jobs API (runtime envs of both drivers are listed there) ...
    token = cfg.ray_token_path.read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"{cfg.ray_dashboard_url}/api/jobs/", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as resp:
        jobs = resp.read().decode()
    assert str(cfg.credentials_path) in jobs  # the runtime envs are there to be read ...
    assert secret not in jobs  # ... without the secret
    # ... Ray's session directory (logs, runtime_env_agent.log, runtime resources) ...
    session = (cfg.ray_temp_dir / "session_latest").resolve()
    assert (session / "logs").is_dir() and any((session / "logs").glob("runtime_env_agent*"))
    assert _files_containing(session, secret.encode()) == []
    # ... the MLflow runs the pipeline created (params, tags, metrics) ...
    client = MlflowClient(tracking_uri=mlflow_stack.mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert {r.data.tags.get("v2w.stage") for r in runs} >= {"ingest", "clips"}
    for r in runs:
        assert secret not in json.dumps([r.data.params, r.data.tags, r.data.metrics]), r.info.run_name
    assert secret not in json.dumps(exp.tags)
    # ... the stage records, and what the pipeline printed.
    assert set(outputs) >= {"ingest", "clips"}
    assert all(secret not in text for text in records.values())
    assert secret not in out and secret not in probe.stdout + probe.stderr
    print(f"pipeline (ingest + clips) {pipeline_s:.0f}s; {len(runs)} runs, {len(records)} stage records")
