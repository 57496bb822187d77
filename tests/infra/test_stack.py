"""infra.stack: idempotent start, health, loopback-only sockets, clear failures, MLflow artifacts in S3."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infra import stack
from infra.stack import StackConfig, StackError, free_port, is_loopback, listening_sockets
from v2w_core import storage


def _own_config(tmp_path: Path, **kw: object) -> StackConfig:
    return StackConfig(
        stack_dir=tmp_path / "stack",
        s3_port=free_port(9420),
        mlflow_port=free_port(5420),
        ray_port=free_port(6590),
        ray_dashboard_port=free_port(8286),
        bucket="v2w-stacktest",
        **kw,  # type: ignore[arg-type]
    )


def _sockets(cfg: StackConfig, service: str) -> list[tuple[str, int]]:
    state = json.loads((cfg.stack_dir / "state.json").read_text())
    return listening_sockets(int(state[service]["sid"]))


@pytest.mark.slow
def test_s3_start_is_idempotent_healthy_loopback_and_stops(tmp_path: Path) -> None:
    cfg = _own_config(tmp_path)
    try:
        info = stack.ensure_running(("s3",), config=cfg)
        assert info.started == ("s3",)
        t0 = time.monotonic()
        again = stack.ensure_running(("s3",), config=cfg)
        assert again.started == () and time.monotonic() - t0 < 5
        rows = {r.name: r for r in stack.status(config=cfg)}
        assert rows["s3"].state == "healthy" and rows["s3"].url == f"http://127.0.0.1:{cfg.s3_port}"
        assert rows["mlflow"].state == "stopped"
        socks = _sockets(cfg, "s3")
        assert (("127.0.0.1", cfg.s3_port) in socks) and all(is_loopback(a) for a, _ in socks), socks
        env = info.env()
        assert env["V2W_S3_ENDPOINT"] == f"http://127.0.0.1:{cfg.s3_port}"
        assert stack.redact(env)["AWS_SECRET_ACCESS_KEY"] == "<hidden>"
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["V2W_S3_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="y")  # fmt: skip
        assert "v2w-stacktest" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        assert stack.stop(config=cfg) == ["s3"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", cfg.s3_port))  # the port is free again
    assert {r.name: r.state for r in stack.status(config=cfg)}["s3"] == "stopped"


@pytest.mark.slow
def test_port_taken_by_someone_else_names_the_port(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cfg = dataclasses.replace(_own_config(tmp_path), s3_port=port)
        with pytest.raises(StackError, match=f"port {port}"):
            stack.ensure_running(("s3",), config=cfg)
        assert {r.name: r.state for r in stack.status(config=cfg)}["s3"] == "foreign"


def test_service_dying_on_start_names_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _own_config(tmp_path)
    original = stack._command

    def broken(c: StackConfig, service: str) -> list[str]:
        if service == "s3":  # a server that crashes at start-up, as a misconfigured one would
            return [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
        return original(c, service)

    monkeypatch.setattr(stack, "_command", broken)
    with pytest.raises(StackError, match=r"s3 died while starting; see its log .*s3\.log") as err:
        stack.ensure_running(("s3",), config=cfg)
    assert "boom: bad config" in str(err.value)
    assert stack._load_state(cfg) == {}  # nothing half-started is left recorded


@pytest.mark.slow
def test_mlflow_artifacts_land_in_the_bucket(local_stack) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=local_stack.mlflow_uri)
    exp_id = client.create_experiment(f"stack-test-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id)
    client.log_text(run.info.run_id, "hello from the test", "notes/hello.txt")
    client.log_metric(run.info.run_id, "loss", 0.5)
    client.set_terminated(run.info.run_id)
    artifact_root = f"s3://{local_stack.bucket}/mlflow-artifacts"
    files = storage.list_files(artifact_root)
    hits = [f for f in files if f.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt")]
    assert len(hits) == 1, files
    assert storage.read_bytes(hits[0]) == b"hello from the test"
    socks = _sockets(local_stack.config, "mlflow")
    assert ("127.0.0.1", local_stack.config.mlflow_port) in socks
    assert all(is_loopback(a) for a, _ in socks), socks


@pytest.mark.slow
def test_ray_head_loopback_job_submit_and_stop(tmp_path: Path) -> None:
    cfg = _own_config(tmp_path)
    try:
        info = stack.ensure_running(("ray",), config=cfg)
        assert info.started == ("ray",)
        rows = {r.name: r for r in stack.status(config=cfg)}
        assert rows["ray"].state == "healthy", rows["ray"]
        socks = _sockets(cfg, "ray")
        assert ("::ffff:127.0.0.1", cfg.ray_port) in socks or ("127.0.0.1", cfg.ray_port) in socks
        assert all(is_loopback(a) for a, _ in socks), socks
        env = {k: v for k, v in info.env().items() if k.startswith("RAY_")}
        out = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", info.ray_dashboard_url,
             "--", "python", "-c", "import ray; ray.init(); print('CPUS', ray.cluster_resources()['CPU'])"],
            capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **env},
        )  # fmt: skip
        assert "CPUS 2.0" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    finally:
        stack.stop(config=cfg)
    assert {r.name: r.state for r in stack.status(config=cfg)}["ray"] == "stopped"


def test_credentials_file_is_private_and_ray_gets_its_path_not_the_keys(tmp_path: Path) -> None:
    """Whatever Ray's environment holds, its workers and jobs inherit: the Ray head gets the path of the
    stack's credentials file (mode 0600), never the keys; clients get both (their own environment)."""
    cfg = dataclasses.replace(_own_config(tmp_path), access_key="id-1", secret_key="secret-1")
    path = stack.write_credentials(cfg)
    assert path == cfg.credentials_path and path.stat().st_mode & 0o777 == 0o600
    assert storage.read_credentials_file(path)["secret_key"] == "secret-1"
    path.chmod(0o644)  # rewritten (and made private again) when the keys change
    path = stack.write_credentials(dataclasses.replace(cfg, secret_key="secret-2"))
    assert path.stat().st_mode & 0o777 == 0o600 and "secret-2" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["credentials"]  # no temp file left behind
    ray_env = stack._service_env(cfg, "ray")
    assert ray_env["V2W_CREDENTIALS_FILE"] == str(path)
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(ray_env)
    assert "secret-1" not in json.dumps(ray_env)
    assert stack._service_env(cfg, "mlflow")["AWS_SECRET_ACCESS_KEY"] == "secret-1"  # its artifact proxy
    assert cfg.client_env()["V2W_CREDENTIALS_FILE"] == str(path)
