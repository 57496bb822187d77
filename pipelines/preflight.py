"""Checks a pipeline run makes before it starts Ray or creates an MLflow run.

Every mistake a user can make on the command line or in the config that would otherwise surface
minutes later, deep inside a stage task, as a long traceback under a FAILED MLflow run: a data source
that does not exist, a missing pretrained model, an unreachable or misconfigured object store, a bucket
name with a typo, a Ray address nobody answers on, a tracking server that is down. Each failure is a
:class:`PreflightError` whose message is one line naming the setting and the fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

from pipelines.config import PipelineConfig
from v2w_core import storage

#: How long to wait for the Ray head / the tracking server to answer.
CONNECT_TIMEOUT_S = 5.0


class PreflightError(Exception):
    """A setting that cannot work; the message names it and says what to do."""


@contextlib.contextmanager
def _quiet_storage() -> Iterator[None]:
    """The storage layer logs each retry; a preflight reports one line, not one per attempt."""
    logger = logging.getLogger(storage.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_data(cfg: PipelineConfig) -> None:
    from v2w_core.data.converters import available_converters
    from v2w_core.data.sources import available_sources

    source, given = cfg.data.source, cfg.data.input
    if given:
        if source not in available_converters():
            raise PreflightError(f"data.source={source!r} is not a converter (data.input is set); "
                                 f"converters: {', '.join(available_converters())}")  # fmt: skip
        _check_exists("data.input", given)
    elif source not in available_sources():
        raise PreflightError(f"data.source={source!r} is not a known source; sources: "
                             f"{', '.join(available_sources())} (or set data.input to convert a data set)")  # fmt: skip


def _check_exists(key: str, uri: str) -> None:
    from v2w_core import assets

    if assets.is_asset(uri):
        try:
            assets.resolve(uri)
        except FileNotFoundError as err:
            raise PreflightError(f"{key}: {err}") from None
        return
    try:
        with _quiet_storage():
            found = storage.exists(uri)
    except storage.StorageError as err:
        raise PreflightError(f"{key}={uri}: {_one_line(err)}") from None
    if not found:
        raise PreflightError(f"{key}={uri}: no such file or directory (fix the path, or use asset://NAME "
                             "for a packaged model)")  # fmt: skip


def check_models(cfg: PipelineConfig) -> None:
    if cfg.base.pretrained_uri:
        _check_exists("base.pretrained_uri", cfg.base.pretrained_uri)
    if cfg.latents.vae_uri:
        _check_exists("latents.vae_uri", cfg.latents.vae_uri)


def check_storage(cfg: PipelineConfig, *, create_bucket: bool) -> None:
    """run.root: endpoint reachable, credentials accepted, bucket present (or created when asked)."""
    root = cfg.run.root
    if not storage.is_s3(root):
        return
    bucket, _ = storage.split_s3(root)
    try:
        with _quiet_storage():
            present = storage.bucket_exists(root)
            if not present and create_bucket:
                storage.ensure_bucket(root)
                return
    except storage.StorageError as err:
        raise PreflightError(f"run.root={root}: {_one_line(err)}") from None
    if not present:
        raise PreflightError(f"run.root={root}: bucket s3://{bucket} does not exist (a typo?); fix run.root, "
                             "create the bucket, or pass --create-bucket")  # fmt: skip


def check_tracking(cfg: PipelineConfig) -> None:
    if not cfg.run.tracking:
        return
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise PreflightError("MLFLOW_TRACKING_URI is not set: start the local stack (python -m infra.stack "
                             "start) and pass --local-stack, or set run.tracking=false")  # fmt: skip
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S):
                pass
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise PreflightError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer: "
                                 f"{reason}; start it or set run.tracking=false") from None  # fmt: skip


def check_ray_address(address: str | None) -> None:
    """A wrong address makes ``ray.init`` wait minutes; a plain TCP connect to the head's GCS port says
    within seconds whether anybody listens there."""
    if not address or address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise PreflightError(f"--ray-address {address}: expected HOST:PORT (the head's GCS address, port "
                             "6379 by default) or ray://HOST:PORT")  # fmt: skip
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise PreflightError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}; check "
                             "--ray-address / RAY_ADDRESS, or leave both unset to start a local Ray") from None  # fmt: skip


def preflight(cfg: PipelineConfig, *, ray_address: str | None, create_bucket: bool) -> None:
    """Every check, cheapest first; raises :class:`PreflightError` at the first problem."""
    check_data(cfg)
    check_ray_address(ray_address)
    check_storage(cfg, create_bucket=create_bucket)
    check_models(cfg)
    check_tracking(cfg)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


__all__ = ["PreflightError", "check_data", "check_models", "check_ray_address", "check_storage",
           "check_tracking", "preflight"]  # fmt: skip
