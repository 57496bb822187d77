"""v2w_core.storage against local paths and a real S3-compatible server (moto_server) on loopback."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.stack import free_port
from v2w_core import storage


# ------------------------------------------------------------------------------------------ helpers
def _roundtrip(base: str) -> None:
    a = storage.join(base, "dir", "a.bin")
    b = storage.join(base, "dir", "sub", "b.bin")
    storage.write_bytes(a, b"alpha")
    storage.write_bytes(b, bytes(range(256)) * 10)
    assert storage.read_bytes(a) == b"alpha"
    assert storage.read_bytes(b) == bytes(range(256)) * 10
    assert storage.exists(a)
    assert storage.exists(storage.join(base, "dir"))  # a "directory" with objects under it
    assert not storage.exists(storage.join(base, "missing.bin"))

    c = storage.join(base, "stream.bin")
    with storage.open_output_stream(c) as out:
        for i in range(5):
            out.write(bytes([i]) * 1000)
    with storage.open_input_stream(c) as inp:
        assert inp.read(1000) == bytes([0]) * 1000
        assert inp.read() == b"".join(bytes([i]) * 1000 for i in range(1, 5))

    # .gz must come back byte-identical (no transparent decompression)
    gz = storage.join(base, "x.tar.gz")
    with storage.open_output_stream(gz) as out:
        out.write(b"not really gzip")
    with storage.open_input_stream(gz) as inp:
        assert inp.read() == b"not really gzip"

    assert storage.list_files(storage.join(base, "dir")) == sorted([a, b])
    assert storage.list_files(base) == sorted([a, b, c, gz])
    assert storage.list_files(storage.join(base, "nothing-here")) == []

    storage.delete(a)
    assert not storage.exists(a)
    storage.delete(a)  # idempotent
    with pytest.raises(storage.NotFoundError):
        storage.delete(a, missing_ok=False)
    storage.delete(storage.join(base, "dir"))  # recursive
    assert storage.list_files(base) == sorted([c, gz])


def _parquet_roundtrip(uri: str) -> None:
    table = pa.table({"episode_id": ["a", "b"], "length": [16, 40]})
    fs, path = storage.get_filesystem(uri)
    pq.write_table(table, path, filesystem=fs)
    assert storage.exists(uri)
    assert pq.read_table(path, filesystem=fs).equals(table)


# -------------------------------------------------------------------------------------------- local
def test_local_roundtrip(tmp_path: Path) -> None:
    _roundtrip(str(tmp_path / "root"))


def test_local_parquet_and_errors(tmp_path: Path) -> None:
    _parquet_roundtrip(str(tmp_path / "m.parquet"))
    with pytest.raises(storage.NotFoundError, match="nope.bin"):
        storage.read_bytes(tmp_path / "nope.bin")
    with pytest.raises(FileNotFoundError):  # NotFoundError is also a FileNotFoundError
        storage.open_input_stream(str(tmp_path / "nope.bin"))


def test_join_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage.join("s3://b/p/", "/x/", "y.bin") == "s3://b/p/x/y.bin"
    assert storage.join("s3://b", "k") == "s3://b/k"
    assert storage.split_s3("s3://b/a/b") == ("b", "a/b")
    for var in ("V2W_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    assert storage.s3_settings().endpoint is None  # AWS itself
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert storage.s3_settings().endpoint == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    assert storage.s3_settings().endpoint == "http://127.0.0.1:2"
    monkeypatch.setenv("V2W_S3_ENDPOINT", "https://127.0.0.1:3/")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    settings = storage.s3_settings()
    assert (settings.endpoint, settings.scheme, settings.endpoint_override) == (
        "https://127.0.0.1:3", "https", "127.0.0.1:3",
    )  # fmt: skip
    assert "super-secret-value" not in repr(settings) + settings.describe()


def test_credentials_file_when_the_environment_has_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """V2W_CREDENTIALS_FILE (what Ray workers get instead of the keys) is read only when both key
    variables are unset; a file readable by others still works, with one warning."""
    path = tmp_path / "credentials"
    path.write_text("[default]\naws_access_key_id = file-id\naws_secret_access_key = file-secret\n")
    path.chmod(0o600)
    storage.clear_caches()
    env = {"V2W_CREDENTIALS_FILE": str(path)}
    got = storage.s3_settings(env)
    assert (got.access_key, got.secret_key, got.session_token) == ("file-id", "file-secret", None)
    assert "file-secret" not in repr(got) + got.describe()
    env_wins = storage.s3_settings(
        {**env, "AWS_ACCESS_KEY_ID": "env-id", "AWS_SECRET_ACCESS_KEY": "env-secret"}
    )
    assert (env_wins.access_key, env_wins.secret_key) == ("env-id", "env-secret")
    assert storage.s3_settings({"V2W_CREDENTIALS_FILE": str(tmp_path / "missing")}).access_key is None
    assert "cannot be read" in caplog.text and "file-secret" not in caplog.text
    path.chmod(0o644)
    caplog.clear()
    storage.clear_caches()
    assert storage.s3_settings(env).secret_key == "file-secret"
    assert "readable by other users" in caplog.text and "chmod 600" in caplog.text
    path.write_text("[ci]\naws_access_key_id = only-id\naws_secret_access_key = only-secret\n")  # one profile
    assert storage.s3_settings(env).secret_key == "only-secret"
    storage.clear_caches()


# ------------------------------------------------------------------------------------------------ s3
@pytest.mark.slow
def test_s3_roundtrip(s3_prefix: str) -> None:
    _roundtrip(s3_prefix.rstrip("/"))


@pytest.mark.slow
def test_s3_parquet_through_get_filesystem(s3_prefix: str) -> None:
    uri = storage.join(s3_prefix, "manifest.parquet")
    _parquet_roundtrip(uri)
    fs, path = storage.get_filesystem(uri)
    assert path == uri[len("s3://") :]
    assert fs.type_name == "s3"
    fs2, paths = storage.get_filesystem_for([uri, uri])
    assert fs2 is fs and paths == [path, path]


@pytest.mark.slow
def test_s3_directory_markers_are_not_files(s3_prefix: str) -> None:
    """pyarrow (and so Ray Train) writes empty ``dir/`` marker objects; listing must not return them."""
    fs, path = storage.get_filesystem(storage.join(s3_prefix, "model"))
    fs.create_dir(path)
    storage.write_bytes(storage.join(s3_prefix, "model", "config.json"), b"{}")
    listed = storage.list_files(storage.join(s3_prefix, "model"))
    assert listed == [storage.join(s3_prefix, "model", "config.json")]


@pytest.mark.slow
def test_s3_missing_key_and_bucket(s3_prefix: str) -> None:
    missing = storage.join(s3_prefix, "missing.bin")
    with pytest.raises(storage.NotFoundError, match="missing.bin"):
        storage.read_bytes(missing)
    with pytest.raises(storage.NotFoundError, match="missing.bin"):
        storage.open_input_stream(missing)
    for call in (storage.read_bytes, storage.exists, storage.list_files, storage.open_output_stream):
        with pytest.raises(storage.NotFoundError, match="no-such-bucket"):
            call("s3://no-such-bucket/x/y.bin")


@pytest.mark.slow
def test_missing_credentials(s3_stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "V2W_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage.clear_caches()
    try:
        with pytest.raises(storage.CredentialsError, match="AWS_ACCESS_KEY_ID") as err:
            storage.read_bytes(f"s3://{s3_stack.bucket}/x")
        assert "AWS_SECRET_ACCESS_KEY" in str(err.value)
        with pytest.raises(storage.CredentialsError):
            storage.get_filesystem(f"s3://{s3_stack.bucket}/x")
    finally:
        storage.clear_caches()


def test_unreachable_endpoint_is_reported_after_bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens here
    monkeypatch.setenv("V2W_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setattr(storage, "DEFAULT_BACKOFF_S", 0.01)
    storage.clear_caches()
    start = time.monotonic()
    try:
        with pytest.raises(storage.EndpointUnreachableError, match=f"127.0.0.1:{port}") as err:
            storage.read_bytes("s3://b/k")
        assert "v2w-stack start" in str(err.value)
        with pytest.raises(storage.EndpointUnreachableError):
            storage.open_input_stream("s3://b/k")
    finally:
        storage.clear_caches()
    assert time.monotonic() - start < 30


# ----------------------------------------------------------------------------- retries (503 proxy)
class _FlakyProxy(ThreadingHTTPServer):
    """Loopback HTTP proxy to the S3 server that answers ``503 SlowDown`` to the first ``failures``
    requests, then forwards. Counts what it saw so tests can check retries are bounded."""

    daemon_threads = True

    def __init__(self, upstream_port: int, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.failures = failures
        self.requests = 0
        self.failed = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _FlakyProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests += 1
            fail = self.server.failed < self.server.failures
            if fail:
                self.server.failed += 1
        if fail:
            payload = b"<Error><Code>SlowDown</Code><Message>try again</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(int(resp.getheader("Content-Length") or len(data))))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


@pytest.fixture
def flaky_proxy(s3_stack, request: pytest.FixtureRequest) -> Iterator[_FlakyProxy]:
    proxy = _FlakyProxy(s3_stack.config.s3_port, failures=getattr(request, "param", 2))
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@pytest.mark.slow
def test_transient_errors_are_retried(s3_prefix: str, flaky_proxy: _FlakyProxy, monkeypatch) -> None:
    uri = storage.join(s3_prefix, "retry.bin")
    storage.write_bytes(uri, b"payload")  # directly, before switching to the proxy
    monkeypatch.setenv("V2W_S3_ENDPOINT", flaky_proxy.url)
    monkeypatch.setattr(storage, "DEFAULT_BACKOFF_S", 0.01)
    storage.clear_caches()
    try:
        assert storage.read_bytes(uri) == b"payload"
        assert (flaky_proxy.failed, flaky_proxy.requests) == (2, 3)
        flaky_proxy.failed, flaky_proxy.failures = 0, 2  # pyarrow path: its AWS retry strategy
        with storage.open_input_stream(uri) as f:
            assert f.read() == b"payload"
        assert flaky_proxy.failed == 2
    finally:
        storage.clear_caches()


@pytest.mark.slow
@pytest.mark.parametrize("flaky_proxy", [10**6], indirect=True)
def test_persistent_transient_errors_give_up_after_bounded_attempts(
    s3_prefix: str, flaky_proxy: _FlakyProxy, monkeypatch
) -> None:
    monkeypatch.setenv("V2W_S3_ENDPOINT", flaky_proxy.url)
    monkeypatch.setattr(storage, "DEFAULT_BACKOFF_S", 0.01)
    monkeypatch.setattr(storage, "DEFAULT_MAX_ATTEMPTS", 4)
    storage.clear_caches()
    try:
        with pytest.raises(storage.TransientStorageError, match="retry.bin"):
            storage.read_bytes(storage.join(s3_prefix, "retry.bin"))
        assert flaky_proxy.requests == 4
    finally:
        storage.clear_caches()


# ---------------------------------------------------------------------- rejected credentials (auth)
@pytest.mark.slow
def test_rejected_credentials(authenticating_s3, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, key_id, secret = authenticating_s3
    monkeypatch.setenv("V2W_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    storage.clear_caches()
    try:
        storage.write_bytes("s3://authb/ok.bin", b"ok")  # the valid user works
        assert storage.read_bytes("s3://authb/ok.bin") == b"ok"
        for bad_id, bad_secret in ((key_id, "wrong-secret"), ("AKIANOTAREALKEY00000", secret)):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", bad_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
            storage.clear_caches()
            with pytest.raises(storage.CredentialsError, match="AWS_SECRET_ACCESS_KEY") as err:
                storage.read_bytes("s3://authb/ok.bin")
            assert bad_secret not in str(err.value)  # never echo the secret
            with pytest.raises(storage.CredentialsError):
                storage.open_input_stream("s3://authb/ok.bin")
    finally:
        storage.clear_caches()
