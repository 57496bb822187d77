"""Local stack: an S3-compatible object store, an MLflow tracking server and a Ray head, all on loopback.

``v2w-stack start|stop|status|env`` and, for tests and scripts, :func:`ensure_running` /
:func:`stop` / :func:`status`. Why it looks the way it does:

* Every service is bound to 127.0.0.1 and the listening sockets are checked (:func:`listening_sockets`):
  a development machine must not expose an unauthenticated S3, MLflow or Ray (remote code execution).
* Ray resolves ``--node-ip-address 127.0.0.1`` to the machine's external IP and then binds its gRPC
  servers to all interfaces; with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` it keeps the loopback address
  and binds loopback only. All of Ray's ports are pinned (derived from ``--port``) so that two stacks,
  e.g. the default one and the test one, never collide on Ray's fixed defaults (10001, 52365, ...).
* Each service runs in its own session (``start_new_session``); ``stop`` signals exactly the processes of
  the sessions this stack recorded (never by name: ``ray stop`` would kill every Ray on the machine).
* Starting is idempotent and serialised by a file lock: healthy services we own are left alone; a port
  held by anything else is an error naming the port; a service that dies on start is an error naming
  its log file.
* Secrets never reach logs or stdout; ``status`` shows the access-key id at most. Nor do they reach Ray:
  the Ray head (and so every Ray worker and job) gets ``V2W_CREDENTIALS_FILE``, the path of this stack's
  credentials file (mode 0600, :func:`write_credentials`), instead of the keys, because whatever a Ray
  runtime env or job carries is shown in plain text by ``ray job list``, the Jobs API and Ray's logs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("infra.stack")

SERVICES: tuple[str, ...] = ("s3", "mlflow", "ray")
LOOPBACK = "127.0.0.1"

DEFAULT_S3_PORT = 9400
DEFAULT_MLFLOW_PORT = 5400
DEFAULT_RAY_PORT = 6390
DEFAULT_RAY_DASHBOARD_PORT = 8266
DEFAULT_BUCKET = "v2w"
DEFAULT_ACCESS_KEY = "v2w-local"
DEFAULT_SECRET_KEY = "v2w-local-secret"  # a local dummy, documented in docs/CONTRACTS.md
DEFAULT_REGION = "us-east-1"

# Offsets from the Ray GCS port for every other port Ray opens (see module docstring).
RAY_PORT_OFFSETS = {
    "ray_client_server": 1,
    "node_manager": 2,
    "object_manager": 3,
    "dashboard_agent_listen": 4,
    "dashboard_agent_grpc": 5,
    "metrics_export": 6,
    "runtime_env_agent": 7,
}

# Generous: on a loaded 2-core machine MLflow's imports alone have taken 90 s.
_SLOW = float(os.environ.get("V2W_STACK_START_TIMEOUT_S", "240"))
START_TIMEOUT_S = {"s3": min(60.0, _SLOW), "mlflow": _SLOW, "ray": _SLOW}
# Executable names that identify a recorded pid as still being our service (guards against pid reuse).
_CMD_MARKERS = {"s3": "moto_server", "mlflow": "mlflow", "ray": "ray"}


class StackError(RuntimeError):
    """The local stack could not be started, checked or stopped; the message says which service and why."""


# --------------------------------------------------------------------------------------------- config
def _port_from_url(url: str | None) -> int | None:
    if not url:
        return None
    parsed = urlparse(url if "://" in url else "http://" + url)
    if parsed.hostname in ("127.0.0.1", "localhost") and parsed.port:
        return parsed.port
    return None


def _env_int(environ: dict[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None


def default_stack_dir() -> Path:
    return Path(os.environ.get("V2W_STACK_DIR") or "~/.cache/vid2world/stack").expanduser()


@dataclass(frozen=True)
class StackConfig:
    """Ports, bucket, credentials and state directory of one local stack."""

    stack_dir: Path
    s3_port: int = DEFAULT_S3_PORT
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    ray_port: int = DEFAULT_RAY_PORT
    ray_dashboard_port: int = DEFAULT_RAY_DASHBOARD_PORT
    bucket: str = DEFAULT_BUCKET
    region: str = DEFAULT_REGION
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = field(default=DEFAULT_SECRET_KEY, repr=False)
    ray_num_cpus: int = 2
    mlflow_workers: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "stack_dir", Path(self.stack_dir).expanduser().absolute())

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> StackConfig:
        """Defaults <- environment (docs/CONTRACTS.md) <- explicit overrides."""
        env = dict(os.environ if environ is None else environ)
        s3_default = _port_from_url(env.get("V2W_S3_ENDPOINT")) or DEFAULT_S3_PORT
        mlflow_default = _port_from_url(env.get("MLFLOW_TRACKING_URI")) or DEFAULT_MLFLOW_PORT
        values: dict[str, Any] = {
            "stack_dir": Path(env.get("V2W_STACK_DIR") or "~/.cache/vid2world/stack").expanduser(),
            "s3_port": _env_int(env, "V2W_S3_PORT", s3_default),
            "mlflow_port": _env_int(env, "V2W_MLFLOW_PORT", mlflow_default),
            "ray_port": _env_int(env, "V2W_RAY_PORT", DEFAULT_RAY_PORT),
            "ray_dashboard_port": _env_int(env, "V2W_RAY_DASHBOARD_PORT", DEFAULT_RAY_DASHBOARD_PORT),
            "bucket": env.get("V2W_BUCKET") or DEFAULT_BUCKET,
            "region": env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            "access_key": env.get("AWS_ACCESS_KEY_ID") or DEFAULT_ACCESS_KEY,
            "secret_key": env.get("AWS_SECRET_ACCESS_KEY") or DEFAULT_SECRET_KEY,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["stack_dir"] = Path(values["stack_dir"]).expanduser().absolute()
        return cls(**values)

    # endpoints -----------------------------------------------------------------------------------
    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.mlflow_port}"

    @property
    def ray_address(self) -> str:
        return f"{LOOPBACK}:{self.ray_port}"

    @property
    def ray_dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ray_dashboard_port}"

    def ray_ports(self) -> dict[str, int]:
        return {name: self.ray_port + off for name, off in RAY_PORT_OFFSETS.items()}

    def service_ports(self, service: str) -> list[int]:
        if service == "s3":
            return [self.s3_port]
        if service == "mlflow":
            return [self.mlflow_port]
        if service == "ray":
            return [self.ray_port, self.ray_dashboard_port, *self.ray_ports().values()]
        raise StackError(f"unknown service {service!r}; expected one of {SERVICES}")

    def url(self, service: str) -> str:
        return {"s3": self.s3_endpoint, "mlflow": self.mlflow_uri, "ray": self.ray_dashboard_url}[service]

    @property
    def ray_temp_dir(self) -> Path:
        """Ray's temp dir. Ray puts unix sockets under it (path limit ~107 bytes), so a long stack dir
        (e.g. pytest's tmp dirs) is replaced by a short, stable path in /tmp."""
        preferred = self.stack_dir / "ray-tmp"
        if len(str(preferred)) <= 40:
            return preferred
        digest = hashlib.sha1(str(self.stack_dir).encode()).hexdigest()[:10]
        return Path("/tmp") / f"v2w-ray-{digest}"

    @property
    def credentials_path(self) -> Path:
        """This stack's S3 credentials (AWS shared-credentials format, mode 0600): processes that must not
        carry the keys in their environment (Ray workers) find them here through ``V2W_CREDENTIALS_FILE``."""
        return self.stack_dir / "credentials"

    @property
    def ray_token_path(self) -> Path:
        """Ray token-auth secret of this stack (file mode 0600); clients point RAY_AUTH_TOKEN_PATH at it."""
        return self.stack_dir / "ray_auth_token"

    def client_env(self, services: Iterable[str] = SERVICES) -> dict[str, str]:
        """Environment variables a client process needs to use these services (contains the secret)."""
        services = set(services)
        env = {
            "V2W_S3_ENDPOINT": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "V2W_BUCKET": self.bucket,
            "V2W_STACK_DIR": str(self.stack_dir),
            CREDENTIALS_FILE_VAR: str(self.credentials_path),  # what Ray workers get instead of the keys
        }
        if "mlflow" in services:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
            # MLflow's telemetry thread races on os.environ (KeyError _MLFLOW_TELEMETRY_SESSION_ID seen in
            # Ray workers) and would phone home; a local stack wants neither.
            env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        if "ray" in services:
            env["RAY_ADDRESS"] = self.ray_address  # ray.init() in clients
            # Without this a client canonicalizes 127.0.0.1 to the machine's external IP and never
            # reaches the loopback-bound head (see module doc).
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            env["RAY_API_SERVER_ADDRESS"] = self.ray_dashboard_url  # `ray job submit`: beats RAY_ADDRESS
            env["V2W_RAY_PORT"] = str(self.ray_port)
            env["V2W_RAY_DASHBOARD_PORT"] = str(self.ray_dashboard_port)
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN_PATH"] = str(self.ray_token_path)
        return env


SECRET_VARS = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})
#: Mirrors ``v2w_core.storage.CREDENTIALS_FILE_VAR`` (infra imports nothing from the library).
CREDENTIALS_FILE_VAR = "V2W_CREDENTIALS_FILE"


def write_credentials(cfg: StackConfig) -> Path:
    """Write the stack's key id and secret to ``cfg.credentials_path`` (mode 0600 from the first byte,
    replaced atomically; left alone when unchanged) and return the path."""
    path = cfg.credentials_path
    text = f"[default]\naws_access_key_id = {cfg.access_key}\naws_secret_access_key = {cfg.secret_key}\n"
    with contextlib.suppress(OSError):
        if path.read_text() == text and (path.stat().st_mode & 0o777) == 0o600:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # O_CREAT's mode does not apply to a file that already existed
        fh.write(text)
    os.replace(tmp, path)
    return path


def redact(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` safe to print or log."""
    return {k: ("<hidden>" if k in SECRET_VARS else v) for k, v in env.items()}


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # healthy | starting | unhealthy | stopped | foreign
    url: str
    pid: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class StackInfo:
    """Endpoints of a running stack, plus what this call started (so a fixture stops only that)."""

    config: StackConfig
    services: tuple[str, ...]
    started: tuple[str, ...] = ()

    @property
    def s3_endpoint(self) -> str:
        return self.config.s3_endpoint

    @property
    def mlflow_uri(self) -> str:
        return self.config.mlflow_uri

    @property
    def ray_address(self) -> str:
        return self.config.ray_address

    @property
    def ray_dashboard_url(self) -> str:
        return self.config.ray_dashboard_url

    @property
    def bucket(self) -> str:
        return self.config.bucket

    @property
    def stack_dir(self) -> Path:
        return self.config.stack_dir

    def env(self) -> dict[str, str]:
        """Variables a client process needs (includes the secret key: don't print it, use ``redact``)."""
        return self.config.client_env(self.services)


# ------------------------------------------------------------------------------------------- state
def _state_path(cfg: StackConfig) -> Path:
    return cfg.stack_dir / "state.json"


def _load_state(cfg: StackConfig) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(_state_path(cfg).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:
        log.warning("stack: %s is corrupt; ignoring it", _state_path(cfg))
        return {}


def _save_state(cfg: StackConfig, state: dict[str, dict[str, Any]]) -> None:
    path = _state_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(cfg: StackConfig) -> Iterator[None]:
    """Serialise start/stop between processes (e.g. two pytest sessions sharing a stack dir)."""
    cfg.stack_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.stack_dir / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _log_path(cfg: StackConfig, service: str) -> Path:
    return cfg.stack_dir / "logs" / f"{service}.log"


# Popen handles of services started by this process, so that stop() can reap them (no zombies).
_POPEN: dict[int, subprocess.Popen[bytes]] = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _owned(service: str, rec: dict[str, Any] | None) -> bool:
    """Whether the recorded process is alive and still the service we started (not a reused pid)."""
    if not rec:
        return False
    pid = int(rec["pid"])
    return _pid_alive(pid) and _CMD_MARKERS[service] in _cmdline(pid)


def session_pids(sid: int) -> list[int]:
    """All live processes of session ``sid``: a service and everything it spawned (Ray's raylet,
    workers, dashboard; uvicorn workers), since each service starts in its own session."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == sid and _pid_alive(pid):
                out.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return sorted(out)


def listening_sockets(sid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by the processes of session ``sid``."""
    import psutil

    found: set[tuple[str, int]] = set()
    for pid in session_pids(sid):
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN and c.laddr:
                found.add((c.laddr.ip, c.laddr.port))
    return sorted(found)


def is_loopback(address: str) -> bool:
    return address == "::1" or address.startswith(("127.", "::ffff:127."))


# ------------------------------------------------------------------------------------------- health
def _port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens on it, else a port the OS reports free (tests, parallel stacks)."""
    if preferred is not None and _port_bindable(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _port_bindable(port: int) -> bool:
    """Whether nothing listens on ``port`` (on loopback or on all interfaces)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return not _port_open(port)


def _http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def _s3_client(cfg: StackConfig) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=cfg.s3_endpoint,
        region_name=cfg.region,
        aws_access_key_id=cfg.access_key,
        aws_secret_access_key=cfg.secret_key,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )


def check_health(cfg: StackConfig, service: str) -> tuple[bool, str]:
    """One health probe: S3 ``ListBuckets``, MLflow ``/health``, Ray dashboard ``/api/version``."""
    try:
        if service == "s3":
            if not _port_open(cfg.s3_port):
                return False, "port closed"
            names = [b["Name"] for b in _s3_client(cfg).list_buckets().get("Buckets", [])]
            return True, f"buckets: {', '.join(names) or '-'}"
        if service == "mlflow":
            if not _port_open(cfg.mlflow_port):
                return False, "port closed"
            code, body = _http_get(cfg.mlflow_uri + "/health")
            return code == 200, f"/health -> {code} {body[:20].decode(errors='replace')}"
        if service == "ray":
            if not _port_open(cfg.ray_dashboard_port) or not _port_open(cfg.ray_port):
                return False, "port closed"
            headers = {}
            if cfg.ray_token_path.exists():
                headers["Authorization"] = "Bearer " + cfg.ray_token_path.read_text().strip()
            code, body = _http_get(cfg.ray_dashboard_url + "/api/version", headers=headers)
            if code != 200:
                return False, f"/api/version -> {code}"
            version = json.loads(body).get("ray_version", "?")
            return True, f"ray {version}, GCS {cfg.ray_address}"
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy", reported as detail
        return False, f"{type(exc).__name__}: {exc}"
    raise StackError(f"unknown service {service!r}")


# --------------------------------------------------------------------------------------- launching
def _service_env(cfg: StackConfig, service: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AWS_ACCESS_KEY_ID": cfg.access_key,
            "AWS_SECRET_ACCESS_KEY": cfg.secret_key,
            "AWS_DEFAULT_REGION": cfg.region,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("AWS_SESSION_TOKEN", None)
    if service in ("mlflow", "ray"):
        # MLflow proxies artifacts to the object store; Ray workers inherit this for s3:// I/O.
        env.update({"MLFLOW_S3_ENDPOINT_URL": cfg.s3_endpoint, "V2W_S3_ENDPOINT": cfg.s3_endpoint})
        env["V2W_BUCKET"] = cfg.bucket
    if service == "ray":
        # No keys in Ray's environment (its workers and jobs would inherit them): the file's path instead.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(name, None)
        env[CREDENTIALS_FILE_VAR] = str(cfg.credentials_path)
        env.pop("RAY_ADDRESS", None)  # `ray start --head` must not try to join another cluster
        env.pop("RAY_API_SERVER_ADDRESS", None)
        # Job entrypoints say `python ...`: make that this environment's interpreter even when the
        # stack was started as `.venv/bin/python -m infra.stack` without activating the venv.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep node IP = 127.0.0.1 (see module doc)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "1"  # nothing to drain on a local head; stop fast
        # Token auth on, with this stack's own token (not ~/.ray/auth_token, which other clusters share).
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(cfg.ray_token_path)
        env.pop("RAY_AUTH_TOKEN", None)
        env["MLFLOW_TRACKING_URI"] = cfg.mlflow_uri
    return env


def _bin(name: str) -> str:
    """Executables from the interpreter's own environment first (the venv), then PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StackError(f"executable {name!r} not found next to {sys.executable} or on PATH")
    return found


def _command(cfg: StackConfig, service: str) -> list[str]:
    if service == "s3":
        return [_bin("moto_server"), "-H", LOOPBACK, "-p", str(cfg.s3_port)]
    if service == "mlflow":
        return [
            _bin("mlflow"), "server",
            "--host", LOOPBACK,
            "--port", str(cfg.mlflow_port),
            "--workers", str(cfg.mlflow_workers),
            "--backend-store-uri", f"sqlite:///{cfg.stack_dir / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{cfg.bucket}/mlflow-artifacts",
            "--serve-artifacts",
        ]  # fmt: skip
    if service == "ray":
        ports = cfg.ray_ports()
        return [
            _bin("ray"), "start", "--head", "--block",
            "--node-ip-address", LOOPBACK,
            "--port", str(cfg.ray_port),
            "--dashboard-host", LOOPBACK,
            "--dashboard-port", str(cfg.ray_dashboard_port),
            "--include-dashboard", "true",
            "--num-cpus", str(cfg.ray_num_cpus),
            "--temp-dir", str(cfg.ray_temp_dir),
            "--ray-client-server-port", str(ports["ray_client_server"]),
            "--node-manager-port", str(ports["node_manager"]),
            "--object-manager-port", str(ports["object_manager"]),
            "--dashboard-agent-listen-port", str(ports["dashboard_agent_listen"]),
            "--dashboard-agent-grpc-port", str(ports["dashboard_agent_grpc"]),
            "--metrics-export-port", str(ports["metrics_export"]),
            "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
            "--disable-usage-stats",
        ]  # fmt: skip
    raise StackError(f"unknown service {service!r}")


def _launch(cfg: StackConfig, service: str) -> dict[str, Any]:
    for port in cfg.service_ports(service):
        if not _port_bindable(port):
            raise StackError(
                f"cannot start {service}: port {port} on {LOOPBACK} is already in use by a process this "
                f"stack ({cfg.stack_dir}) did not start; stop it or choose another port "
                f"({_port_env_hint(service)})"
            )
    logfile = _log_path(cfg, service)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    if service == "ray":
        cfg.ray_temp_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.ray_token_path.exists():
            import secrets

            fd = os.open(cfg.ray_token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
    # An empty working directory: Ray jobs submitted without --working-dir run here, and a directory
    # such as ray-tmp/ next to them must not shadow ``import ray``.
    workdir = cfg.stack_dir / "run"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = _command(cfg, service)
    with open(logfile, "ab") as fh:
        fh.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_service_env(cfg, service),
            cwd=workdir,
            start_new_session=True,
        )
    _POPEN[proc.pid] = proc
    log.info("stack: starting %s (pid %d) on %s, log %s", service, proc.pid, cfg.url(service), logfile)
    return {"pid": proc.pid, "sid": proc.pid, "ports": cfg.service_ports(service), "log": str(logfile),
            "url": cfg.url(service), "started_at": time.time()}  # fmt: skip


def _port_env_hint(service: str) -> str:
    return {
        "s3": "V2W_S3_PORT",
        "mlflow": "V2W_MLFLOW_PORT",
        "ray": "V2W_RAY_PORT / V2W_RAY_DASHBOARD_PORT",
    }[service]


def _tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _wait_healthy(cfg: StackConfig, service: str, rec: dict[str, Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    detail = ""
    while time.monotonic() < deadline:
        if not _pid_alive(int(rec["pid"])):
            tail = _tail(rec["log"], 40)
            if "Address already in use" in tail or "Errno 98" in tail or "address already in use" in tail:
                raise StackError(
                    f"cannot start {service}: port {rec['ports'][0]} was taken by another process while "
                    f"{service} started ({_port_env_hint(service)}); see its log {rec['log']}"
                )
            raise StackError(f"{service} died while starting; see its log {rec['log']}:\n{_tail(rec['log'])}")
        ok, detail = check_health(cfg, service)
        if ok:
            log.info("stack: %s healthy at %s (%s)", service, cfg.url(service), detail)
            return
        time.sleep(0.3)
    raise StackError(
        f"{service} did not become healthy within {timeout:.0f}s ({detail}); see its log {rec['log']}"
    )


def _ensure_bucket(cfg: StackConfig) -> None:
    client = _s3_client(cfg)
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if cfg.bucket not in names:
        client.create_bucket(Bucket=cfg.bucket)
        log.info("stack: created bucket s3://%s", cfg.bucket)


def ensure_running(
    services: Sequence[str] = SERVICES,
    *,
    config: StackConfig | None = None,
    stack_dir: str | Path | None = None,
    s3_port: int | None = None,
    mlflow_port: int | None = None,
    ray_port: int | None = None,
    ray_dashboard_port: int | None = None,
    bucket: str | None = None,
) -> StackInfo:
    """Start whatever of ``services`` is not already running and healthy; return the endpoints.

    Idempotent and fast when everything is up. MLflow implies S3 (its artifact store). Services are
    launched together and then awaited, since MLflow's and Ray's start-up dominate.
    """
    cfg = config or StackConfig.from_env(
        stack_dir=stack_dir, s3_port=s3_port, mlflow_port=mlflow_port, ray_port=ray_port,
        ray_dashboard_port=ray_dashboard_port, bucket=bucket,
    )  # fmt: skip
    wanted = [s for s in SERVICES if s in set(services) or (s == "s3" and "mlflow" in services)]
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise StackError(f"unknown services {sorted(unknown)}; expected some of {SERVICES}")
    started: list[str] = []
    with _locked(cfg):
        write_credentials(cfg)  # before Ray starts: its workers read it
        state = _load_state(cfg)
        pending: dict[str, dict[str, Any]] = {}
        for service in wanted:
            rec = state.get(service)
            if _owned(service, rec) and rec and rec.get("ports") == cfg.service_ports(service):
                ok, _ = check_health(cfg, service)
                if ok:
                    log.debug("stack: %s already healthy at %s", service, cfg.url(service))
                    continue
                # ours but not answering (still starting, or hung): give it its start timeout
                pending[service] = rec
                continue
            if rec and _owned(service, rec):
                _stop_one(cfg, service, rec)  # ours, but on other ports: restart with the new ones
            state.pop(service, None)
            rec = _launch(cfg, service)
            state[service] = rec
            _save_state(cfg, state)
            pending[service] = rec
            started.append(service)
        try:
            for service in wanted:
                if service in pending:
                    _wait_healthy(cfg, service, pending[service], START_TIMEOUT_S[service])
                    if service == "s3":
                        _ensure_bucket(cfg)
            if "s3" in wanted and "s3" not in pending:
                _ensure_bucket(cfg)
        except BaseException:
            for service in started:  # don't leave half a stack behind
                _stop_one(cfg, service, state.get(service))
                state.pop(service, None)
            _save_state(cfg, state)
            raise
    return StackInfo(config=cfg, services=tuple(wanted), started=tuple(started))


# ---------------------------------------------------------------------------------------- stopping
def _stop_one(cfg: StackConfig, service: str, rec: dict[str, Any] | None, timeout: float = 15.0) -> bool:
    """SIGTERM every process of the service's session, then SIGKILL what is left after ``timeout``."""
    if not rec:
        return False
    sid = int(rec.get("sid", rec["pid"]))
    if not _owned(service, rec) and not session_pids(sid):
        return False
    pids = session_pids(sid)
    log.info("stack: stopping %s (session %d, %d processes)", service, sid, len(pids))
    # `ray start --block` tears its node down in order on SIGTERM; the others get it all at once.
    first = [sid] if service == "ray" and sid in pids else pids
    for pid in first:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not _wait_session_gone(sid, timeout):
        for pid in session_pids(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _wait_session_gone(sid, 3.0)
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            log.warning("stack: %s pid %d ignored SIGTERM; killing", service, pid)
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    _reap(sid)
    if service == "ray":
        shutil.rmtree(cfg.ray_temp_dir, ignore_errors=True)
    return True


def _wait_session_gone(sid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(sid)
        if not session_pids(sid):
            return True
        time.sleep(0.2)
    return False


def _reap(pid: int) -> None:
    proc = _POPEN.get(pid)
    if proc is not None and proc.poll() is not None:
        _POPEN.pop(pid, None)


def stop(
    services: Sequence[str] = SERVICES,
    *,
    config: StackConfig | None = None,
    stack_dir: str | Path | None = None,
) -> list[str]:
    """Stop the given services of this stack (Ray first, the object store last); return those stopped."""
    cfg = config or StackConfig.from_env(stack_dir=stack_dir)
    stopped = []
    with _locked(cfg):
        state = _load_state(cfg)
        for service in reversed(SERVICES):
            if service not in services or service not in state:
                continue
            if _stop_one(cfg, service, state[service]):
                stopped.append(service)
            state.pop(service, None)
        _save_state(cfg, state)
    return stopped


def status(*, config: StackConfig | None = None, stack_dir: str | Path | None = None) -> list[ServiceStatus]:
    cfg = config or StackConfig.from_env(stack_dir=stack_dir)
    state = _load_state(cfg)
    out = []
    for service in SERVICES:
        rec = state.get(service)
        owned = _owned(service, rec)
        ok, detail = check_health(cfg, service)
        if owned:
            st = "healthy" if ok else "unhealthy"
        elif ok or any(not _port_bindable(p) for p in cfg.service_ports(service)[:1]):
            st, detail = "foreign", f"port in use by a process this stack did not start ({detail})"
        else:
            st, detail = "stopped", ""
        if owned and rec:
            bad = [a for a, _ in listening_sockets(int(rec.get("sid", rec["pid"]))) if not is_loopback(a)]
            if bad:
                st, detail = "unhealthy", f"listening on non-loopback {sorted(set(bad))}; {detail}"
        out.append(ServiceStatus(service, st, cfg.url(service), int(rec["pid"]) if owned and rec else None,
                                 detail))  # fmt: skip
    return out


def env(config: StackConfig | None = None, services: Iterable[str] = SERVICES) -> dict[str, str]:
    """Client environment for the (default or given) stack; contains the secret key, never print it raw."""
    return (config or StackConfig.from_env()).client_env(services)


# --------------------------------------------------------------------------------------------- CLI
def _parse_services(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in SERVICES]
    if bad:
        raise SystemExit(f"unknown services {bad}; choose from {','.join(SERVICES)}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="v2w-stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument("--services", default=",".join(SERVICES), help="comma-separated: s3,mlflow,ray")
    parser.add_argument("--dir", default=None, help="state dir (default $V2W_STACK_DIR)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    services = _parse_services(args.services)
    cfg = StackConfig.from_env(stack_dir=args.dir)

    if args.command == "start":
        try:
            info = ensure_running(services, config=cfg)
        except StackError as err:
            print(f"v2w-stack: {err}", file=sys.stderr)
            return 1
        _print_status(cfg)
        print(f"\nclient env (secrets hidden): {json.dumps(redact(info.env()), indent=1)}")
        return 0
    if args.command == "stop":
        stopped = stop(services, config=cfg)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if args.command == "status":
        return 0 if _print_status(cfg) else 1
    if args.command == "env":
        for key, value in cfg.client_env(services).items():
            if key in SECRET_VARS:
                print(f"# {key}: not printed; export it yourself (local stack default in docs/CONTRACTS.md)")
            else:
                print(f"export {key}={value}")
        return 0
    return 2


def _print_status(cfg: StackConfig) -> bool:
    rows = status(config=cfg)
    print(f"stack dir: {cfg.stack_dir}   bucket: s3://{cfg.bucket}   key id: {cfg.access_key}")
    for r in rows:
        pid = str(r.pid) if r.pid else "-"
        print(f"  {r.name:<7} {r.state:<10} {r.url:<26} pid {pid:<8} {r.detail}")
    return all(r.state == "healthy" for r in rows)


def _asdict(info: StackInfo) -> dict[str, Any]:  # pragma: no cover - debugging helper
    return {"config": {k: v for k, v in asdict(info.config).items() if k != "secret_key"},
            "services": info.services, "started": info.started}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
