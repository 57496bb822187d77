"""One storage API over local paths and ``s3://`` URIs.

Every stage of the pipeline reads and writes through these functions so that the same code runs
against a local directory, the local S3-compatible server of ``v2w-stack`` and a real object store.

Two clients are used on purpose:

* **boto3** for whole-object operations (bytes, exists, list, delete): its errors carry machine-readable
  codes (``NoSuchBucket``, ``InvalidAccessKeyId``, ...) so we can turn them into errors that say what to
  fix, and its retries can be switched off so that ours (bounded, exponential backoff) are the only layer.
* **pyarrow.fs** for streams, parquet and Ray Data: ``get_filesystem`` returns the configured
  ``S3FileSystem`` (explicit ``endpoint_override``/``scheme``) that e.g. ``ray.data.read_webdataset`` needs
  for a non-AWS endpoint; inside those libraries pyarrow's own AWS retry strategy applies.

Secrets are read from the environment, else from the file named by ``V2W_CREDENTIALS_FILE`` (how Ray
workers get them: only the file's path travels in a runtime env), else the AWS credential chain; they are
never logged, and log lines name the endpoint and at most the access-key id.
"""

from __future__ import annotations

import configparser
import functools
import hashlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bounded retries for transient errors (connection reset, 5xx, throttling): attempts in total.
DEFAULT_MAX_ATTEMPTS = int(os.environ.get("V2W_S3_MAX_ATTEMPTS", "5"))
#: First backoff delay in seconds; doubled after every failed attempt, with jitter, capped below.
DEFAULT_BACKOFF_S = float(os.environ.get("V2W_S3_BACKOFF_S", "0.2"))
MAX_BACKOFF_S = 5.0
#: Attempts of pyarrow's own (AWS SDK) retry strategy, the only retry layer inside Ray Data / parquet
#: readers. Its backoff is the SDK's (an unreachable endpoint costs ~10 s at 5 attempts), hence 3.
ARROW_MAX_ATTEMPTS = int(os.environ.get("V2W_S3_ARROW_MAX_ATTEMPTS", "3"))

_ENDPOINT_VARS = ("V2W_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
#: Names a file with the credentials (AWS shared-credentials format, mode 0600), read when the two
#: variables below are unset. Its path is not a secret, so it may travel where secrets must not: a Ray
#: runtime env, job metadata. The local stack writes one (``<stack dir>/credentials``).
CREDENTIALS_FILE_VAR = "V2W_CREDENTIALS_FILE"
#: What a worker process needs to reach storage, forwarded by the pipeline's and Ray Train's runtime envs:
#: locations and the credentials file's path, never a secret (a runtime env is shown in plain text by
#: `ray job list`, the Jobs API and Ray's logs).
STORAGE_LOCATION_ENV_VARS = (*_ENDPOINT_VARS, "AWS_DEFAULT_REGION", "V2W_BUCKET", CREDENTIALS_FILE_VAR)
_CREDENTIAL_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the local stack of `v2w-stack start` uses "
    "v2w-local / v2w-local-secret unless configured otherwise), or V2W_CREDENTIALS_FILE, or configure an "
    "AWS profile/role"
)


# --------------------------------------------------------------------------------------------- errors
class StorageError(Exception):
    """Base of every error raised by this module, so callers can catch storage problems in one place."""


class CredentialsError(StorageError):
    """Credentials are missing or rejected; the message names the environment variables to set."""


class EndpointUnreachableError(StorageError):
    """The object store did not answer (after retries); the message names the endpoint."""


class NotFoundError(StorageError, FileNotFoundError):
    """A bucket, object or file does not exist; the message names the URI.

    Also a ``FileNotFoundError`` so code written against the local filesystem keeps working.
    """


class TransientStorageError(StorageError):
    """A retryable failure (5xx, throttling, connection reset) that persisted through every retry."""


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class S3Settings:
    """Where the object store is and how to authenticate; secrets are excluded from ``repr``."""

    endpoint: str | None
    region: str
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return urlparse(self.endpoint).scheme if self.endpoint else "https"

    @property
    def endpoint_override(self) -> str | None:
        """``host:port`` as pyarrow wants it (the scheme goes separately)."""
        if not self.endpoint:
            return None
        parsed = urlparse(self.endpoint)
        return parsed.netloc or parsed.path

    def describe(self) -> str:
        """Loggable one-liner: endpoint, region and the key id only."""
        key = self.access_key or "<credential chain>"
        return f"endpoint={self.endpoint or 'AWS'} region={self.region} key_id={key}"

    def _cache_key(self) -> tuple[Any, ...]:
        secret_digest = hashlib.sha256((self.secret_key or "").encode()).hexdigest()
        return (self.endpoint, self.region, self.access_key, secret_digest, self.session_token)


def s3_settings(environ: Mapping[str, str] | None = None) -> S3Settings:
    """Read the S3 endpoint, region and credentials from the environment.

    The endpoint comes from ``V2W_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``;
    none of them set means AWS itself. Credentials come from ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``); when both are unset, from the file named by
    ``V2W_CREDENTIALS_FILE``; when that is unset too, the AWS credential chain is consulted lazily at
    first use (profiles, instance roles).
    """
    env = os.environ if environ is None else environ
    endpoint = next((env[v] for v in _ENDPOINT_VARS if env.get(v)), None)
    if endpoint and "://" not in endpoint:
        endpoint = "http://" + endpoint
    creds = {
        "access_key": env.get("AWS_ACCESS_KEY_ID") or None,
        "secret_key": env.get("AWS_SECRET_ACCESS_KEY") or None,
        "session_token": env.get("AWS_SESSION_TOKEN") or None,
    }
    if not (creds["access_key"] or creds["secret_key"]) and env.get(CREDENTIALS_FILE_VAR):
        creds = read_credentials_file(env[CREDENTIALS_FILE_VAR])
    return S3Settings(
        endpoint=endpoint.rstrip("/") if endpoint else None,
        region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
        **creds,
    )


def read_credentials_file(path: str | os.PathLike[str]) -> dict[str, str | None]:
    """``access_key`` / ``secret_key`` / ``session_token`` from an AWS shared-credentials file (its
    ``[default]`` section, else its only one). A missing or unreadable file gives no credentials (the
    error that follows names ``V2W_CREDENTIALS_FILE``); one readable by others is used, with a warning."""
    try:
        st = os.stat(path)
    except OSError as err:
        _warn_once(f"{CREDENTIALS_FILE_VAR}={os.fspath(path)} cannot be read ({err.strerror}); ignoring it")
        return {"access_key": None, "secret_key": None, "session_token": None}
    return dict(_parse_credentials(os.fspath(path), st.st_mtime_ns, st.st_size, st.st_mode))


@functools.lru_cache(maxsize=8)
def _parse_credentials(path: str, mtime_ns: int, size: int, mode: int) -> tuple[tuple[str, str | None], ...]:
    """Parsed once per file version (``s3_settings`` runs on every storage call)."""
    if mode & 0o077:
        _warn_once(f"{CREDENTIALS_FILE_VAR}={path} is readable by other users (mode {mode & 0o777:o}); "
                   "chmod 600 it")  # fmt: skip
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(Path(path).read_text())
    except (OSError, configparser.Error) as err:
        _warn_once(f"{CREDENTIALS_FILE_VAR}={path} is not an AWS credentials file ({type(err).__name__}); "
                   "ignoring it")  # fmt: skip
        return (("access_key", None), ("secret_key", None), ("session_token", None))
    sections = parser.sections()
    section = parser["default"] if parser.has_section("default") else (
        parser[sections[0]] if len(sections) == 1 else {})  # fmt: skip
    return (
        ("access_key", section.get("aws_access_key_id") or None),
        ("secret_key", section.get("aws_secret_access_key") or None),
        ("session_token", section.get("aws_session_token") or None),
    )


@functools.lru_cache(maxsize=32)
def _warn_once(message: str) -> None:
    log.warning("storage: %s", message)


# ---------------------------------------------------------------------------------------------- URIs
def is_s3(uri: str | os.PathLike[str]) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def _local_path(uri: str | os.PathLike[str]) -> Path:
    text = os.fspath(uri)
    text = text.removeprefix("file://")
    return Path(text).expanduser()


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path components; ``s3://`` URIs always use ``/`` and never collapse the bucket."""
    if is_s3(base):
        base_s = str(base).rstrip("/")
        clean = [p.strip("/") for p in parts if p and p.strip("/")]
        return "/".join([base_s, *clean]) if clean else base_s
    return os.path.join(os.fspath(base), *parts)


# ------------------------------------------------------------------------------------------- retries
_TRANSIENT_CODES = {
    "500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "Throttling",
    "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "RequestLimitExceeded",
}  # fmt: skip
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
    "InvalidClientTokenId", "AuthFailure", "403",
}  # fmt: skip
_NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


# Substrings of pyarrow's OSError messages, checked in this order (the first match wins).
_ARROW_ERROR_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("credentials", ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
                     "InvalidAccessKeyId", "SignatureDoesNotMatch", "HTTP response code: 403")),
    ("not_found", ("NO_SUCH_BUCKET", "NoSuchBucket", "NO_SUCH_KEY", "NoSuchKey", "Path does not exist",
                   "HTTP response code: 404")),
    ("unreachable", ("Couldn't connect", "Could not connect", "curlCode: 7", "Connection refused",
                     "Failed to connect")),
    ("transient", ("NETWORK_CONNECTION", "curlCode", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE",
                   "THROTTLING", "HTTP response code: 5", "Connection reset")),
)  # fmt: skip


def _botocore_errors() -> dict[str, type[BaseException]]:
    import botocore.exceptions as bex

    return {
        "client": bex.ClientError,
        "nocreds": bex.NoCredentialsError,
        "partialcreds": bex.PartialCredentialsError,
        "connect": bex.EndpointConnectionError,
        "conn_closed": bex.ConnectionClosedError,
        "read_timeout": bex.ReadTimeoutError,
        "connect_timeout": bex.ConnectTimeoutError,
        "http": bex.HTTPClientError,
    }


def _classify(exc: BaseException) -> str:
    """Sort an exception into ``transient`` / ``unreachable`` / ``credentials`` / ``not_found`` / ``other``.

    Unreachable endpoints are retried too (a server that is still starting is the common case) and
    reported as such once the retries run out.
    """
    try:
        errs = _botocore_errors()
    except ImportError:  # pragma: no cover - boto3 is a dependency
        errs = {}
    if errs and isinstance(exc, errs["client"]):
        err = exc.response.get("Error", {})  # type: ignore[attr-defined]
        code = str(err.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))  # type: ignore[attr-defined]
        if code in _CREDENTIAL_CODES or status == "403":
            return "credentials"
        if code in _NOT_FOUND_CODES or status == "404":
            return "not_found"
        if code in _TRANSIENT_CODES or status.startswith("5") or status == "429":
            return "transient"
        return "other"
    if errs and isinstance(exc, (errs["nocreds"], errs["partialcreds"])):
        return "credentials"
    if errs and isinstance(exc, (errs["connect"], errs["connect_timeout"])):
        return "unreachable"
    if errs and isinstance(exc, (errs["conn_closed"], errs["read_timeout"], errs["http"])):
        return "transient"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, TimeoutError)):
        return "transient"
    if isinstance(exc, ConnectionRefusedError):
        return "unreachable"
    if isinstance(exc, OSError):  # pyarrow reports AWS SDK errors as OSError with the SDK's text
        msg = str(exc)
        for kind, patterns in _ARROW_ERROR_PATTERNS:
            if any(p in msg for p in patterns):
                return kind
    return "other"


def _translate(exc: BaseException, uri: str, settings: S3Settings | None) -> StorageError:
    """Turn a client error into one of ours, with a message that says what to do."""
    kind = _classify(exc)
    where = settings.endpoint if settings and settings.endpoint else "AWS S3"
    if kind == "credentials":
        return CredentialsError(
            f"{uri}: credentials were missing or rejected by {where} "
            f"(key id: {settings.access_key if settings else None}): {_short(exc)}; {_CREDENTIAL_HINT}"
        )
    if kind == "not_found":
        code = _error_code(exc)
        what = "bucket" if code == "NoSuchBucket" or "NO_SUCH_BUCKET" in str(exc) else "object"
        return NotFoundError(f"{uri}: {what} does not exist ({_short(exc)})")
    if kind == "unreachable":
        return EndpointUnreachableError(
            f"{uri}: object store endpoint {where} is unreachable ({_short(exc)}); "
            "is the local stack running? try `v2w-stack start` or check V2W_S3_ENDPOINT"
        )
    if kind == "transient":
        return TransientStorageError(f"{uri}: transient error persisted after retries: {_short(exc)}")
    return StorageError(f"{uri}: {_short(exc)}")


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 400 else text[:400] + "..."


def with_retries(
    fn: Callable[[], T],
    *,
    uri: str,
    settings: S3Settings | None = None,
    max_attempts: int | None = None,
    backoff_s: float | None = None,
) -> T:
    """Call ``fn`` and retry transient failures with exponential backoff and jitter, a bounded number of times.

    Errors that retrying cannot fix (credentials, not found) are raised at once, translated.
    """
    attempts = max(1, max_attempts if max_attempts is not None else DEFAULT_MAX_ATTEMPTS)
    delay = backoff_s if backoff_s is not None else DEFAULT_BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:
            kind = _classify(exc)
            if kind not in ("transient", "unreachable") or attempt == attempts:
                raise _translate(exc, uri, settings) from exc
            sleep = min(MAX_BACKOFF_S, delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            log.warning(
                "storage: %s on %s (attempt %d/%d), retrying in %.2fs: %s",
                kind, uri, attempt, attempts, sleep, _short(exc),
            )  # fmt: skip
            time.sleep(sleep)
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------------------- clients
_lock = threading.Lock()
_boto_clients: dict[tuple[Any, ...], Any] = {}
_arrow_filesystems: dict[tuple[Any, ...], pafs.S3FileSystem] = {}
_known_buckets: set[tuple[Any, ...]] = set()


def _resolved_settings() -> S3Settings:
    """Current settings with credentials resolved; raises ``CredentialsError`` if there are none.

    Explicit environment credentials win. Otherwise boto3's chain (profiles, roles) is asked once.
    """
    settings = s3_settings()
    if settings.access_key and settings.secret_key:
        return settings
    if settings.access_key or settings.secret_key:
        raise CredentialsError(
            "only one of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY is set (in the environment, or in "
            f"{CREDENTIALS_FILE_VAR}); " + _CREDENTIAL_HINT
        )
    creds = _chain_credentials()
    if creds is None:
        raise CredentialsError(
            f"no S3 credentials found for {settings.endpoint or 'AWS S3'}; " + _CREDENTIAL_HINT
        )
    return settings


@functools.lru_cache(maxsize=1)
def _chain_credentials() -> Any:
    import boto3

    return boto3.Session().get_credentials()


def _boto_client(settings: S3Settings) -> Any:
    """A cached boto3 S3 client with boto's own retries off (``with_retries`` is the one retry layer)."""
    key = settings._cache_key()
    with _lock:
        client = _boto_clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
                signature_version="s3v4",
            )
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.endpoint,
                region_name=settings.region,
                aws_access_key_id=settings.access_key,
                aws_secret_access_key=settings.secret_key,
                aws_session_token=settings.session_token,
                config=config,
            )
            _boto_clients[key] = client
            log.debug("storage: boto3 client for %s", settings.describe())
        return client


def s3_client() -> Any:
    """The configured boto3 S3 client (for callers that need an operation this module lacks)."""
    return _boto_client(_resolved_settings())


def s3_filesystem(settings: S3Settings | None = None) -> pafs.S3FileSystem:
    """The configured pyarrow ``S3FileSystem`` (cached per settings)."""
    settings = settings or _resolved_settings()
    key = settings._cache_key()
    with _lock:
        fs = _arrow_filesystems.get(key)
        if fs is None:
            kwargs: dict[str, Any] = {
                "region": settings.region,
                "scheme": settings.scheme,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=ARROW_MAX_ATTEMPTS),
                "connect_timeout": 5,
                "request_timeout": 60,
            }
            if settings.endpoint_override:
                kwargs["endpoint_override"] = settings.endpoint_override
                kwargs["force_virtual_addressing"] = False
            if settings.access_key:
                kwargs.update(
                    access_key=settings.access_key,
                    secret_key=settings.secret_key,
                    session_token=settings.session_token,
                )
            fs = pafs.S3FileSystem(**kwargs)
            _arrow_filesystems[key] = fs
            log.debug("storage: pyarrow S3FileSystem for %s", settings.describe())
        return fs


def get_filesystem(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """Return the configured pyarrow filesystem and the path inside it for ``uri``.

    For ``s3://bucket/key`` that is ``(S3FileSystem(endpoint_override=..., scheme=...), "bucket/key")``:
    libraries such as Ray Data (``read_webdataset(paths, filesystem=fs)``) and ``pyarrow.parquet`` need
    the explicit filesystem to reach a non-AWS endpoint.
    """
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return s3_filesystem(), f"{bucket}/{key}".rstrip("/")
    return pafs.LocalFileSystem(), str(_local_path(uri).absolute())


def get_filesystem_for(uris: Iterable[str | os.PathLike[str]]) -> tuple[pafs.FileSystem, list[str]]:
    """Like :func:`get_filesystem` for several URIs of the same kind (all ``s3://`` or all local)."""
    items = list(uris)
    if not items:
        raise ValueError("get_filesystem_for: no URIs given")
    kinds = {is_s3(u) for u in items}
    if len(kinds) > 1:
        raise ValueError("get_filesystem_for: mixing s3:// URIs and local paths is not supported")
    pairs = [get_filesystem(u) for u in items]
    return pairs[0][0], [p for _, p in pairs]


def _check_bucket(client: Any, settings: S3Settings, bucket: str, uri: str) -> None:
    """Raise ``NotFoundError`` if the bucket is missing (HEAD on a key cannot tell bucket from key)."""
    key = (*settings._cache_key(), bucket)
    if key in _known_buckets:
        return
    try:
        with_retries(lambda: client.head_bucket(Bucket=bucket), uri=f"s3://{bucket}", settings=settings)
    except NotFoundError:
        raise NotFoundError(f"{uri}: bucket s3://{bucket} does not exist") from None
    _known_buckets.add(key)


def bucket_exists(uri: str) -> bool:
    """Whether the bucket of ``uri`` exists (False on NotFound, other errors propagate)."""
    bucket, _ = split_s3(uri)
    settings = _resolved_settings()
    client = _boto_client(settings)
    try:
        _check_bucket(client, settings, bucket, uri)
        return True
    except NotFoundError:
        return False


def ensure_bucket(uri: str) -> None:
    """Create the bucket of ``uri`` if it is missing (local stack and tests; real buckets are provisioned)."""
    bucket, _ = split_s3(uri)
    settings = _resolved_settings()
    client = _boto_client(settings)
    if bucket_exists(uri):
        return
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if settings.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
    with_retries(lambda: client.create_bucket(**kwargs), uri=f"s3://{bucket}", settings=settings)
    log.info("storage: created bucket s3://%s", bucket)


# -------------------------------------------------------------------------------------- public API
def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """Whole object / file as bytes; ``NotFoundError`` names the URI if it (or its bucket) is missing."""
    if not is_s3(uri):
        path = _local_path(uri)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{uri}: file does not exist") from None
        except IsADirectoryError:
            raise StorageError(f"{uri}: is a directory") from None
    uri = str(uri)
    bucket, key = split_s3(uri)
    settings = _resolved_settings()
    client = _boto_client(settings)

    def _get() -> bytes:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()

    return with_retries(_get, uri=uri, settings=settings)


def write_bytes(uri: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write a whole object / file. Local writes go through a temp file + rename so readers never see
    half a file; S3 PUTs are atomic already."""
    payload = bytes(data)
    if not is_s3(uri):
        path = _local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    uri = str(uri)
    bucket, key = split_s3(uri)
    if not key:
        raise ValueError(f"write_bytes needs an object key, got bucket only: {uri}")
    settings = _resolved_settings()
    client = _boto_client(settings)
    with_retries(lambda: client.put_object(Bucket=bucket, Key=key, Body=payload), uri=uri, settings=settings)


def exists(uri: str | os.PathLike[str]) -> bool:
    """Whether a file/object exists, or a directory/prefix with at least one object under it.

    A missing *bucket* is an error (``NotFoundError``), not ``False``: it is almost always a
    configuration mistake, and answering False would make a pipeline silently redo its work.
    """
    if not is_s3(uri):
        return _local_path(uri).exists()
    uri = str(uri)
    bucket, key = split_s3(uri)
    settings = _resolved_settings()
    client = _boto_client(settings)
    _check_bucket(client, settings, bucket, uri)
    if not key:
        return True
    if not key.endswith("/"):
        try:
            with_retries(lambda: client.head_object(Bucket=bucket, Key=key), uri=uri, settings=settings)
            return True
        except NotFoundError:
            pass
    prefix = key.rstrip("/") + "/"
    resp = with_retries(
        lambda: client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1), uri=uri, settings=settings
    )
    return bool(resp.get("KeyCount", 0))


def list_files(prefix_uri: str | os.PathLike[str]) -> list[str]:
    """All files/objects under a directory or prefix, recursively, as sorted URIs.

    The prefix is treated as a directory (``s3://b/runs`` lists ``runs/...``, not ``runs2/...``), the
    same as for local paths. A missing directory/prefix gives ``[]``; a missing bucket is an error.
    """
    if not is_s3(prefix_uri):
        root = _local_path(prefix_uri)
        if root.is_file():
            return [str(root)]
        if not root.is_dir():
            return []
        base = os.fspath(prefix_uri)
        base = base.removeprefix("file://")
        return sorted(os.path.join(base, str(p.relative_to(root))) for p in root.rglob("*") if p.is_file())
    uri = str(prefix_uri)
    bucket, key = split_s3(uri)
    settings = _resolved_settings()
    client = _boto_client(settings)
    prefix = key.rstrip("/") + "/" if key else ""
    out: list[str] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        resp = with_retries(lambda kw=kwargs: client.list_objects_v2(**kw), uri=uri, settings=settings)
        # Keys ending in "/" are directory markers (pyarrow's S3FileSystem and Ray Train write them), not files.
        out.extend(
            f"s3://{bucket}/{obj['Key']}" for obj in resp.get("Contents", []) if not obj["Key"].endswith("/")
        )
        if not resp.get("IsTruncated"):
            break
        token = resp["NextContinuationToken"]
    return sorted(out)


def delete(uri: str | os.PathLike[str], *, missing_ok: bool = True) -> None:
    """Delete a file/object, or everything under a directory/prefix.

    Deleting what is not there is fine by default (idempotent clean-up); ``missing_ok=False`` raises
    ``NotFoundError`` instead. A missing bucket always raises.
    """
    if not is_s3(uri):
        path = _local_path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        elif not missing_ok:
            raise NotFoundError(f"{uri}: file does not exist")
        return
    uri = str(uri)
    bucket, key = split_s3(uri)
    if not key:
        raise ValueError(f"refusing to delete a whole bucket: {uri}")
    settings = _resolved_settings()
    client = _boto_client(settings)
    _check_bucket(client, settings, bucket, uri)
    targets = [split_s3(u)[1] for u in list_files(uri)]  # everything under key/ (directory semantics)
    if not key.endswith("/"):
        try:
            with_retries(lambda: client.head_object(Bucket=bucket, Key=key), uri=uri, settings=settings)
            targets.append(key)
        except NotFoundError:
            pass
    if not targets:
        if not missing_ok:
            raise NotFoundError(f"{uri}: object does not exist")
        return
    for start in range(0, len(targets), 1000):
        chunk = [{"Key": k} for k in targets[start : start + 1000]]
        resp = with_retries(
            lambda c=chunk: client.delete_objects(Bucket=bucket, Delete={"Objects": c, "Quiet": True}),
            uri=uri,
            settings=settings,
        )
        if resp.get("Errors"):
            first = resp["Errors"][0]
            raise StorageError(f"{uri}: could not delete {first.get('Key')}: {first.get('Message')}")


def open_input_stream(uri: str | os.PathLike[str]) -> IO[bytes]:
    """A readable binary file (seekable) for ``uri``; close it (use ``with``).

    For S3 this is pyarrow's random-access S3 file, so tar/parquet readers can seek. No transparent
    decompression happens (pyarrow's ``compression="detect"`` would gunzip ``.gz`` files behind our back).
    """
    if not is_s3(uri):
        try:
            return open(_local_path(uri), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"{uri}: file does not exist") from None
    uri = str(uri)
    bucket, key = split_s3(uri)
    settings = _resolved_settings()
    client = _boto_client(settings)
    # A HEAD through boto first: one retry layer (ours) and precise errors (missing bucket vs key,
    # credentials, unreachable) before pyarrow, whose SDK retries are slow to give up.
    try:
        with_retries(lambda: client.head_object(Bucket=bucket, Key=key), uri=uri, settings=settings)
    except NotFoundError:
        _check_bucket(client, settings, bucket, uri)
        raise NotFoundError(f"{uri}: object does not exist") from None
    fs, path = get_filesystem(uri)
    return with_retries(lambda: fs.open_input_file(path), uri=uri, settings=settings)  # type: ignore[return-value]


def open_output_stream(uri: str | os.PathLike[str]) -> IO[bytes]:
    """A writable binary stream for ``uri``; the object appears when the stream is closed (multipart
    upload for S3, so arbitrarily large outputs stream without being held in memory)."""
    if not is_s3(uri):
        path = _local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "wb")
    uri = str(uri)
    bucket, key = split_s3(uri)
    if not key:
        raise ValueError(f"open_output_stream needs an object key, got bucket only: {uri}")
    settings = _resolved_settings()
    _check_bucket(_boto_client(settings), settings, bucket, uri)
    fs, path = get_filesystem(uri)
    return with_retries(  # type: ignore[return-value]
        lambda: fs.open_output_stream(path, compression=None), uri=uri, settings=settings
    )


def clear_caches() -> None:
    """Forget cached clients/filesystems (tests that change the environment between cases)."""
    with _lock:
        _boto_clients.clear()
        _arrow_filesystems.clear()
        _known_buckets.clear()
    _chain_credentials.cache_clear()
    _parse_credentials.cache_clear()
    _warn_once.cache_clear()


__all__ = [
    "CREDENTIALS_FILE_VAR",
    "CredentialsError",
    "EndpointUnreachableError",
    "NotFoundError",
    "S3Settings",
    "StorageError",
    "TransientStorageError",
    "bucket_exists",
    "clear_caches",
    "delete",
    "ensure_bucket",
    "exists",
    "get_filesystem",
    "get_filesystem_for",
    "is_s3",
    "join",
    "list_files",
    "open_input_stream",
    "open_output_stream",
    "read_bytes",
    "read_credentials_file",
    "s3_client",
    "s3_filesystem",
    "s3_settings",
    "split_s3",
    "with_retries",
    "write_bytes",
]
