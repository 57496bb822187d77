"""Start and stop the play application: Ray (a local one on loopback unless an address is given), Serve's
HTTP proxy on ``host:port`` (127.0.0.1 by default: a world model server is nobody else's business unless
you say so), and the deployment. Used by the CLI, the tests and ``bench/play_latency.py``."""

from __future__ import annotations

import json
import socket
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from v2w_core.play.engine import PlaySettings
from v2w_core.play.errors import PlayError

APP_NAME = "v2w-play"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Running:
    url: str
    started_ray: bool


def check_port(host: str, port: int) -> None:
    """:class:`PlayError` when ``host:port`` cannot be bound (in use, or not an address of this machine)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise PlayError(f"cannot serve on {host}:{port}: {err.strerror or err}; pick another --port") from None


def _init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray on loopback; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, configure_logging=False, log_to_driver=False)
        return True
    from ray._private import ray_constants

    # A single-machine Ray keeps its own sockets on loopback (see tests/conftest.py's ray_cluster).
    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
                 log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="v2w-play-ray-", dir="/tmp"))  # fmt: skip
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous
    return True


def wait_ready(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll ``/api/info`` until the proxy routes to a ready replica; returns the info."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "api/info", timeout=10) as resp:
                return json.loads(resp.read())
        except Exception as err:  # noqa: BLE001 - the proxy answers 404/503 until the route is up
            last = err
            time.sleep(0.3)
    raise PlayError(f"the play server at {url} did not become ready in {timeout_s:.0f} s: {last}")


def start(settings: PlaySettings, *, host: str = "127.0.0.1", port: int = 8600, ray_address: str | None = None,
          num_gpus: float = 0.0, timeout_s: float = 180.0) -> Running:  # fmt: skip
    """Serve ``settings``' model; returns the page's URL once it answers."""
    from ray import serve

    from v2w_core.play.app import build_app

    check_port(host, port)
    started = _init_ray(ray_address)
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(build_app(settings, num_gpus=num_gpus), name=APP_NAME, route_prefix="/", blocking=False)
        except Exception as err:  # noqa: BLE001 - the replica's constructor failed: its last line says why
            lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
            raise PlayError(f"the play deployment failed to start: {lines[-1] if lines else err}") from None
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
        wait_ready(url, timeout_s)
    except BaseException:
        stop(Running("", started))
        raise
    return Running(url, started)


def stop(running: Running) -> None:
    """Delete the app and Serve; shut Ray down when :func:`start` started it."""
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            if running.started_ray:
                ray.shutdown()
