"""Shared fixtures: real services on loopback, started once per test session.

* ``s3_stack``   - only the S3-compatible server (moto_server) + the test bucket; fast (~2 s).
* ``mlflow_stack`` / ``local_stack`` - S3 + the MLflow tracking server (artifacts proxied to S3); slower.
* ``s3_prefix``  - a fresh ``s3://<bucket>/test-<uuid>/`` per test, deleted afterwards.
* ``ray_cluster`` - a real local Ray (2 CPUs, no dashboard, loopback only) whose workers get the S3
  environment through ``runtime_env``.
* ``authenticating_s3`` - a dedicated moto_server that enforces IAM auth: (endpoint, key id, secret).

Services use test ports distinct from the defaults (9410/5410) and a temporary stack dir; when a port is
busy (e.g. another engineer's test session on this machine) a free port is taken instead. Whatever a
fixture started, it stops at the end of the session; environment variables it set are restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import stack as stack_mod
from infra.stack import StackConfig, StackError, StackInfo, free_port

log = logging.getLogger(__name__)

TEST_S3_PORT = int(os.environ.get("V2W_TEST_S3_PORT", "9410"))
TEST_MLFLOW_PORT = int(os.environ.get("V2W_TEST_MLFLOW_PORT", "5410"))
TEST_BUCKET = "v2w-test"
TEST_ACCESS_KEY = "v2w-test"
TEST_SECRET_KEY = "v2w-test-secret"

# Variables that would point a client somewhere other than the test stack.
_CLEARED_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
)


@pytest.fixture(scope="session")
def _stack_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StackConfig]:
    """A mutable holder: a port lost to a concurrent session is replaced (see ``_ensure``)."""
    return {
        "cfg": StackConfig(
            stack_dir=tmp_path_factory.mktemp("v2w-stack"),
            s3_port=free_port(TEST_S3_PORT),
            mlflow_port=free_port(TEST_MLFLOW_PORT),
            ray_port=free_port(6490),
            ray_dashboard_port=free_port(8276),
            bucket=TEST_BUCKET,
            access_key=TEST_ACCESS_KEY,
            secret_key=TEST_SECRET_KEY,
        )
    }


def _ensure(services: tuple[str, ...], holder: dict[str, StackConfig]) -> StackInfo:
    """Start ``services``; if another session grabbed a chosen port meanwhile, take a free one and retry."""
    for attempt in range(3):
        try:
            return stack_mod.ensure_running(services, config=holder["cfg"])
        except StackError as err:
            busy = [s for s in services if f"cannot start {s}: port" in str(err)]
            if not busy or attempt == 2:
                raise
            holder["cfg"] = dataclasses.replace(holder["cfg"], **{f"{busy[0]}_port": free_port()})
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _session_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the rest of the session and restore them afterwards."""
    mp = pytest.MonkeyPatch()
    try:
        for name in _CLEARED_VARS:
            mp.delenv(name, raising=False)
        for name, value in values.items():
            mp.setenv(name, value)
        # Never let botocore wander off to an instance-metadata endpoint from a test.
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        _clear_storage_caches()
        yield
    finally:
        mp.undo()
        _clear_storage_caches()


def _clear_storage_caches() -> None:
    from v2w_core import storage

    storage.clear_caches()


@pytest.fixture(scope="session")
def s3_stack(_stack_config: dict[str, StackConfig]) -> Iterator[StackInfo]:
    """The S3-compatible server (moto_server) on loopback with the test bucket; env vars set for clients."""
    info = _ensure(("s3",), _stack_config)
    try:
        with _session_env(info.env()):
            yield info
    finally:
        stack_mod.stop(info.started, config=info.config)


@pytest.fixture(scope="session")
def mlflow_stack(s3_stack: StackInfo, _stack_config: dict[str, StackConfig]) -> Iterator[StackInfo]:
    """S3 + MLflow tracking server (sqlite backend, artifacts proxied into the S3 bucket)."""
    info = _ensure(("s3", "mlflow"), _stack_config)
    try:
        with _session_env(info.env()):
            yield info
    finally:
        stack_mod.stop(info.started, config=info.config)


@pytest.fixture(scope="session")
def local_stack(mlflow_stack: StackInfo) -> StackInfo:
    """The local stack tests need: S3 + MLflow (Ray is the ``ray_cluster`` fixture)."""
    return mlflow_stack


@pytest.fixture
def s3_prefix(s3_stack: StackInfo) -> Iterator[str]:
    """A fresh, empty ``s3://<bucket>/test-<uuid>/`` for one test; removed afterwards."""
    from v2w_core import storage

    prefix = f"s3://{s3_stack.bucket}/test-{uuid.uuid4().hex[:12]}/"
    yield prefix
    with contextlib.suppress(storage.StorageError):
        storage.delete(prefix)


def s3_env_for_workers() -> dict[str, str]:
    """The S3/MLflow variables of this process that Ray workers need (passed via ``runtime_env``). Like
    the product's, no keys: a runtime env is shown in plain text by Ray; the workers read the stack's
    credentials file (``V2W_CREDENTIALS_FILE``) or inherit the keys from the raylet's environment."""
    names = (
        "V2W_S3_ENDPOINT", "V2W_CREDENTIALS_FILE", "AWS_DEFAULT_REGION", "V2W_BUCKET",
        "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED",
    )  # fmt: skip
    return {n: os.environ[n] for n in names if os.environ.get(n)}


@pytest.fixture(scope="session")
def ray_cluster(s3_stack: StackInfo) -> Iterator[Any]:
    """A real local Ray: 3 logical CPUs, no dashboard, every socket on 127.0.0.1, S3 env in the workers.

    Ray turns ``127.0.0.1`` into the machine's external IP and then binds its gRPC servers to all
    interfaces; treating the node as a single-machine cluster (``ENABLE_RAY_CLUSTER = False``, the
    switch behind ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``) keeps it on loopback. The switch is flipped
    only around ``ray.init`` so other tests can still start multi-node clusters.
    """
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        pytest.fail("ray_cluster: Ray is already initialised in this process by another fixture/test")
    temp_dir = tempfile.mkdtemp(prefix="v2w-ray-", dir="/tmp")  # short: Ray's socket paths are bounded
    init_args: dict[str, Any] = {
        # 3 logical CPUs on the 2-core CI box: one of headroom, because a stage's Ray Data actor (0.5 CPU) can
        # outlive a failed pipeline test and a latent pipeline needs 2 free to make progress; with exactly 2
        # the whole-suite run deadlocked in the latent pipeline and then in the next Ray Train test.
        "num_cpus": 3,
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "_temp_dir": temp_dir,
        "object_store_memory": 1024 * 1024 * 1024,
        "runtime_env": {"env_vars": s3_env_for_workers()},
        "configure_logging": False,
        "log_to_driver": False,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        try:
            ctx = ray.init(**init_args)
        except Exception as err:  # noqa: BLE001 - Ray gives the raylet 30 s; a loaded 2-core box can miss it
            log.warning("ray.init failed (%s); retrying once", err)
            ray.shutdown()
            ctx = ray.init(**init_args)
    try:
        import ray.data

        data_ctx = ray.data.DataContext.get_current()
        data_ctx.enable_progress_bars = False
        data_ctx.print_on_execution_start = False
        yield ctx
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small diffusers AutoencoderKL (×4 down, 4 latent channels, scaling 0.5), saved in the
    ``from_pretrained`` layout: what a user's VAE directory looks like, made here (nothing downloads)."""
    from v2w_core.models.testing import tiny_vae

    vae = tiny_vae()
    path = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def authenticating_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """A dedicated moto_server that enforces IAM auth after 4 free bootstrap actions (user, policy,
    access key, bucket): yields (endpoint, key id, secret) of a user allowed to use S3."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto-auth") / "moto.log"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto_server with auth did not start; see {log}")
            time.sleep(0.2)
        endpoint = f"http://127.0.0.1:{port}"
        kw = {"endpoint_url": endpoint, "region_name": "us-east-1",
              "aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}  # fmt: skip
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="tester")
        iam.put_user_policy(
            UserName="tester", PolicyName="s3",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}',
        )  # fmt: skip
        key = iam.create_access_key(UserName="tester")["AccessKey"]
        boto3.client("s3", **kw).create_bucket(Bucket="authb")
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
