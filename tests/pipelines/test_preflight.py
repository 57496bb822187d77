"""Setup mistakes are one-line errors, found before Ray starts or an MLflow run exists.

Each case runs the real CLI (``pipelines/full.py``, ``v2w-ingest``) in a subprocess and checks the exit
code, that stderr is at most two lines (no traceback) and that it names the setting and the fix.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.stack import StackInfo
from pipelines.config import PipelineConfig
from pipelines.preflight import PreflightError, check_models, check_storage

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], *, env: dict[str, str] | None = None, script: str = "pipelines/full.py",
         timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:  # fmt: skip
    full_env = {**os.environ, **(env or {})}
    for name in [k for k, v in full_env.items() if v == "<unset>"]:
        del full_env[name]
    start = time.monotonic()
    cmd = [sys.executable, script, *args] if script.endswith(".py") else [sys.executable, "-c", script, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
    return proc, time.monotonic() - start


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert len(err.splitlines()) <= 2, err
    assert "Traceback" not in err and "Started a local Ray" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


LOCAL = ["--set", "run.tracking=false"]


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  nmae: x\n")
    proc, _ = _run(["--config", str(bad), *LOCAL])
    _assert_one_line_error(proc, str(bad), "run.nmae", "unknown key")
    proc, _ = _run(["--config", str(tmp_path / "missing.yaml")])
    _assert_one_line_error(proc, "missing.yaml", "does not exist")


def test_set_errors_name_the_override() -> None:
    proc, _ = _run(["--set", "clips.stride=abc"])
    err = _assert_one_line_error(proc, "--set clips.stride=abc", "clips.stride")
    assert "tiny.yaml" not in err
    proc, _ = _run(["--set", "train.train.nosuch=1"])
    _assert_one_line_error(proc, "--set train.train.nosuch=1", "train.train.nosuch")
    # --debug shows the traceback
    proc, _ = _run(["--set", "clips.stride=abc", "--debug"])
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_unknown_source_and_missing_pretrained(tmp_path: Path) -> None:
    root = ["--set", f"run.root={tmp_path / 'run'}", *LOCAL]
    proc, _ = _run([*root, "--set", "data.source=nosuch"])
    _assert_one_line_error(proc, "data.source='nosuch'", "vizdoom")
    proc, _ = _run([*root, "--set", f"base.pretrained_uri={tmp_path / 'no-model'}"])
    _assert_one_line_error(proc, "base.pretrained_uri=", "no-model", "no such file")
    proc, _ = _run([*root, "--set", "base.pretrained_uri=asset://nosuch"])
    _assert_one_line_error(proc, "base.pretrained_uri", "asset://nosuch", "packaged")
    # A packaged model (resolved by v2w_core.assets, here from a stand-in package directory) and an
    # existing directory pass.
    from v2w_core import assets

    (tmp_path / "assets" / "some_model").mkdir(parents=True)
    (tmp_path / "assets" / "some_model" / "config.json").write_text("{}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(assets, "ROOT", tmp_path / "assets")
        check_models(PipelineConfig.from_dict({"base": {"pretrained_uri": "asset://some_model"}}))
    check_models(PipelineConfig.from_dict({"base": {"pretrained_uri": str(tmp_path)}}))


def test_wrong_ray_address_fails_fast(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    proc, seconds = _run(["--set", f"run.root={tmp_path}", *LOCAL, "--ray-address", address])
    _assert_one_line_error(proc, address, "--ray-address")
    assert seconds < 30
    proc, seconds = _run(["--set", f"run.root={tmp_path}", *LOCAL],
                         env={"RAY_ADDRESS": f"ray://127.0.0.1:{_closed_port()}"})  # fmt: skip
    _assert_one_line_error(proc, "ray://127.0.0.1:", "RAY_ADDRESS")
    assert seconds < 30


def test_wrong_s3_endpoint_and_missing_credentials() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = {"V2W_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "V2W_S3_MAX_ATTEMPTS": "2", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    proc, seconds = _run(["--set", "run.root=s3://v2w/x", *LOCAL], env=env)
    _assert_one_line_error(proc, "run.root=s3://v2w/x", endpoint)
    assert seconds < 30
    no_creds = {**env, "AWS_ACCESS_KEY_ID": "<unset>", "AWS_SECRET_ACCESS_KEY": "<unset>",
                "AWS_PROFILE": "<unset>", "V2W_CREDENTIALS_FILE": "<unset>",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}  # fmt: skip
    proc, _ = _run(["--set", "run.root=s3://v2w/x", *LOCAL], env=no_creds)
    _assert_one_line_error(proc, "run.root=s3://v2w/x", "credentials")


@pytest.mark.slow
def test_typo_in_bucket_is_an_error_unless_asked_to_create(s3_stack: StackInfo) -> None:
    typo = f"s3://{s3_stack.bucket}-tpyo/runs/x"
    proc, _ = _run(["--set", f"run.root={typo}", *LOCAL])
    _assert_one_line_error(proc, f"s3://{s3_stack.bucket}-tpyo", "does not exist", "--create-bucket")
    cfg = PipelineConfig.from_dict({"run": {"root": typo}})
    with pytest.raises(PreflightError, match="does not exist"):
        check_storage(cfg, create_bucket=False)
    check_storage(cfg, create_bucket=True)  # creates it
    check_storage(cfg, create_bucket=False)  # now it exists


@pytest.mark.slow
def test_ingest_input_missing(tmp_path: Path, s3_stack: StackInfo) -> None:
    cli = "import sys; from v2w_core.data.ingest import main; sys.exit(main(sys.argv[1:]))"
    missing = f"s3://{s3_stack.bucket}/no/such/dataset"
    proc, _ = _run(["--source", "lerobot", "--input", missing, "--out", str(tmp_path / "out")], script=cli)
    err = _assert_one_line_error(proc, missing)
    assert "s3:/" + s3_stack.bucket not in err.replace(missing, "")
    local = str(tmp_path / "nothing-here")
    proc, _ = _run(["--source", "lerobot", "--input", local, "--out", str(tmp_path / "out")], script=cli)
    _assert_one_line_error(proc, local, "no such file")


@pytest.mark.slow
def test_wrong_credentials_are_one_line(authenticating_s3: tuple[str, str, str]) -> None:
    """Keys the server rejects (not just missing ones): one line naming the setting, no traceback."""
    endpoint, key_id, _ = authenticating_s3
    env = {"V2W_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": "wrong-secret",
           "V2W_S3_MAX_ATTEMPTS": "2", "V2W_CREDENTIALS_FILE": "<unset>"}  # fmt: skip
    proc, seconds = _run(["--set", "run.root=s3://authb/x", *LOCAL], env=env)
    err = _assert_one_line_error(proc, "run.root=s3://authb/x")
    assert "credentials" in err.lower() or "access key" in err.lower() or "signature" in err.lower(), err
    assert "wrong-secret" not in err  # the secret itself is never printed
    assert seconds < 30
