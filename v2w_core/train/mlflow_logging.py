"""MLflow logging for training that never blocks or kills the training loop.

Why a background thread with a buffer: the loop logs a handful of scalars per step. A synchronous MLflow
call costs a round trip per step, and when the tracking server is down MLflow's HTTP client retries with
exponential backoff for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 7 by default), which would stall
every rank waiting on rank 0 in the next collective. Here ``log_metrics`` only appends to a bounded
buffer; a daemon thread sends batches (``log_batch``, ≤ 1000 metrics / 100 params) with a short timeout
and no client-side retries, keeps the buffer across an outage (logging one warning when it starts and
one when it ends) and drops the newest entries only if the buffer limit is reached. Every metric batch
that never reaches the server (rejected by it, dropped on a full buffer, unsent at shutdown) is counted;
``close`` logs the counts as the run's metrics ``mlflow_dropped_metric_batches`` /
``mlflow_dropped_metric_values`` (0 when nothing was lost) and a warning line when any were lost.

Only the rank-0 worker creates one of these. The run itself is created by the driver (see
:func:`start_run`) so that a restarted worker group keeps logging into the same run.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

logger = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
#: MLflow 3's UI picks an experiment's view from this tag: model training (runs, metrics, models) for
#: ``custom_model_development``; unset, it may open on the GenAI view (traces, evaluations) instead.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: Metrics that :meth:`BufferedMlflowLogger.close` logs: what never reached the tracking server.
DROPPED_BATCHES_METRIC = "mlflow_dropped_metric_batches"
DROPPED_VALUES_METRIC = "mlflow_dropped_metric_values"
_PACKAGES = ("torch", "deepspeed", "ray", "diffusers", "mlflow", "pyarrow", "numpy", "vid2world")


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"optim.lr": "0.0001", ...}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name + "."))
        else:
            text = str(value)
            out[name] = text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."
    return out


def environment_info() -> dict[str, str]:
    """Hardware and package versions of this process's machine (logged as params under ``env.``)."""
    from importlib import metadata

    info = {
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.cpu_count": str(os.cpu_count()),
        "env.hostname_hash": str(abs(hash(platform.node())) % 10**8),
    }
    for pkg in _PACKAGES:
        try:
            info[f"env.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[f"env.{pkg}"] = "not installed"
    try:
        import torch

        info["env.cuda_available"] = str(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["env.gpu"] = torch.cuda.get_device_name(0)
            info["env.gpu_count"] = str(torch.cuda.device_count())
            info["env.cuda"] = str(torch.version.cuda)
        info["env.torch_threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    return info


def _no_client_retries(timeout_s: float) -> None:
    """Make MLflow's HTTP client fail fast in this process; our thread does the retrying."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, timeout_s)))


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created as a model-training experiment (:data:`EXPERIMENT_KIND`)
    when missing. One without a kind (created before this tag was set) gets it; another kind is kept."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return str(client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
        except Exception:  # RESOURCE_ALREADY_EXISTS: another stage or process created it meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(exp.experiment_id)


def start_run(
    tracking_uri: str,
    experiment: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create an MLflow run (driver side) and log the config params; returns its run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = ensure_experiment(client, experiment)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    items = list((params or {}).items())
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(
            run.info.run_id, params=[Param(k, v) for k, v in items[i : i + MAX_PARAMS_PER_BATCH]]
        )
    client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED", *, attempts: int = 5) -> bool:
    """Mark the run finished/failed; tolerant of a tracking outage (returns False and warns)."""
    from mlflow import MlflowClient

    return _retry(
        lambda: MlflowClient(tracking_uri=tracking_uri).set_terminated(run_id, status), attempts, "end run"
    )


def log_artifacts(
    tracking_uri: str, run_id: str, local_dir: str, artifact_path: str, *, attempts: int = 5
) -> bool:
    """Upload a directory as run artifacts, retrying; a failure is a warning, not an error."""
    from mlflow import MlflowClient

    return _retry(
        lambda: MlflowClient(tracking_uri=tracking_uri).log_artifacts(run_id, local_dir, artifact_path),
        attempts,
        f"log artifacts {artifact_path!r}",
        timeout_s=600.0,  # a paper-size model is GBs through the tracking server's artifact proxy
    )


@contextlib.contextmanager
def _fail_fast(timeout_s: float = 10.0) -> Iterator[None]:
    """MLflow's own retries off (and a short timeout) for the duration: our loop retries instead."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {n: os.environ.get(n) for n in names}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(timeout_s))
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _retry(fn: Any, attempts: int, what: str, backoff_s: float = 1.0, timeout_s: float = 10.0) -> bool:
    for i in range(attempts):
        try:
            with _fail_fast(timeout_s):
                fn()
            return True
        except Exception as err:  # noqa: BLE001 - tracking must never kill training
            if i == attempts - 1:
                logger.warning("MLflow: could not %s after %d attempts: %s", what, attempts, err)
                return False
            time.sleep(backoff_s * 2**i)
    return False


def _retryable(err: Exception) -> bool:
    """Connection problems and 5xx/429 are worth retrying; a rejected request (4xx) is not."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return True
    if isinstance(err, MlflowException):
        return err.error_code in {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
    return True


class BufferedMlflowLogger:
    """Non-blocking metric/param/tag logging into an existing run, surviving tracking-server outages."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        max_buffer: int = 200_000,
        request_timeout_s: float = 5.0,
        retry_interval_s: float = 1.0,
        max_retry_interval_s: float = 15.0,
    ) -> None:
        from mlflow import MlflowClient

        _no_client_retries(request_timeout_s)
        self.run_id = run_id
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._metrics: collections.deque[Any] = collections.deque()
        self._params: collections.deque[Any] = collections.deque()
        self._tags: collections.deque[Any] = collections.deque()
        self._max_buffer = max_buffer
        self._retry_interval_s = retry_interval_s
        self._max_retry_interval_s = max_retry_interval_s
        self._cond = threading.Condition()
        self._closing = False
        #: Metric values lost: dropped on a full buffer, or in a batch the server rejected.
        self.dropped = 0
        #: ``log_metrics`` calls that lost values to a full buffer (each counts as one batch).
        self.overflow_batches = 0
        #: Batches the server rejected (a 4xx answer; retrying cannot help), and those of them with metrics.
        self.rejected_batches = 0
        self.rejected_metric_batches = 0
        self.failures = 0
        self.sent_metrics = 0
        self._last_step = 0
        self._outage_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------------- public
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        with self._cond:
            self._last_step = max(self._last_step, int(step))
            lost = 0
            for k, v in metrics.items():
                if v is None:
                    continue
                if len(self._metrics) >= self._max_buffer:
                    # Drop the newest, not the oldest: the sender thread may be sending the front right now.
                    lost += 1
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 10_000 == 0:
                        logger.warning(
                            "MLflow buffer full (%d): %d metrics dropped so far",
                            self._max_buffer,
                            self.dropped,
                        )
                    continue
                self._metrics.append(Metric(k, float(v), ts, int(step)))
            self.overflow_batches += 1 if lost else 0
            self._cond.notify()

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        with self._cond:
            self._params.extend(Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in params.items())
            self._cond.notify()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        with self._cond:
            self._tags.extend(RunTag(k, str(v)) for k, v in tags.items())
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._metrics) + len(self._params) + len(self._tags)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the buffer is sent (or ``timeout_s`` passes); True when nothing is left."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.notify()
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            time.sleep(0.05)
        return self.pending() == 0

    def close(self, timeout_s: float = 30.0) -> bool:
        """Flush (bounded), stop the thread, then log what never reached the server (:meth:`loss_report`)
        as the run's metrics, with a warning line when anything was lost."""
        ok = self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=5)
        if not ok:
            logger.warning("MLflow: %d buffered entries could not be sent before shutdown", self.pending())
        report = self.loss_report()
        if report[DROPPED_BATCHES_METRIC]:
            logger.warning(
                "MLflow: %d metric batches (%d values) of run %s never reached the tracking server: %d "
                "rejected by it, %d dropped on a full buffer during an outage, %d unsent at shutdown",
                report[DROPPED_BATCHES_METRIC], report[DROPPED_VALUES_METRIC], self.run_id,
                self.rejected_metric_batches, self.overflow_batches,
                report[DROPPED_BATCHES_METRIC] - self.dropped_batches,
            )  # fmt: skip
        self._log_report(report)
        return ok

    @property
    def dropped_batches(self) -> int:
        """Metric batches lost before shutdown: rejected by the server, or cut by a full buffer."""
        return self.rejected_metric_batches + self.overflow_batches

    def loss_report(self) -> dict[str, int]:
        """Metric batches and values lost so far, counting those still buffered as lost (for ``close``)."""
        with self._cond:
            unsent = len(self._metrics)
            batches = self.dropped_batches + math.ceil(unsent / MAX_METRICS_PER_BATCH)
            return {DROPPED_BATCHES_METRIC: batches, DROPPED_VALUES_METRIC: self.dropped + unsent}

    def _log_report(self, report: Mapping[str, int]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, self._last_step) for k, v in report.items()]
        try:
            self._client.log_batch(self.run_id, metrics=metrics)
        except Exception as err:  # noqa: BLE001 - the tracking server may still be down; never raise here
            logger.warning(
                "MLflow: could not log %s=%d to run %s (%s)", DROPPED_BATCHES_METRIC,
                report[DROPPED_BATCHES_METRIC], self.run_id, str(err).splitlines()[0][:200],
            )  # fmt: skip

    # -------------------------------------------------------------------------------------- internals
    def _take(self) -> tuple[list[Any], list[Any], list[Any]]:
        metrics = [self._metrics[i] for i in range(min(MAX_METRICS_PER_BATCH, len(self._metrics)))]
        params = [self._params[i] for i in range(min(MAX_PARAMS_PER_BATCH, len(self._params)))]
        tags = [self._tags[i] for i in range(min(MAX_PARAMS_PER_BATCH, len(self._tags)))]
        return metrics, params, tags

    @staticmethod
    def _drop(queue: collections.deque[Any], items: Iterable[Any]) -> None:
        for _ in items:
            queue.popleft()

    def _run(self) -> None:
        delay = self._retry_interval_s
        while True:
            with self._cond:
                while not self._closing and not (self._metrics or self._params or self._tags):
                    self._cond.wait(timeout=1.0)
                if self._closing and not (self._metrics or self._params or self._tags):
                    return
                metrics, params, tags = self._take()
                closing = self._closing
            try:
                self._client.log_batch(self.run_id, metrics=metrics, params=params, tags=tags)
            except Exception as err:  # noqa: BLE001 - classified by _retryable; never kills training
                self.failures += 1
                if not _retryable(err):
                    logger.warning(
                        "MLflow rejected a batch (%s); dropping it", str(err).splitlines()[0][:200]
                    )
                    with self._cond:
                        self.rejected_batches += 1
                        if metrics:
                            self.rejected_metric_batches += 1
                            self.dropped += len(metrics)
                        self._drop(self._metrics, metrics)
                        self._drop(self._params, params)
                        self._drop(self._tags, tags)
                    continue
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    logger.warning(
                        "MLflow unreachable (%s); buffering metrics and retrying, training continues",
                        str(err).splitlines()[0][:200],
                    )
                if closing:
                    return
                time.sleep(delay)
                delay = min(delay * 2, self._max_retry_interval_s)
                continue
            delay = self._retry_interval_s
            with self._cond:
                # Only this thread removes from the front, so the first len(batch) entries are the batch.
                self._drop(self._metrics, metrics)
                self._drop(self._params, params)
                self._drop(self._tags, tags)
            self.sent_metrics += len(metrics)
            if self._outage_since is not None:
                logger.warning(
                    "MLflow reachable again after %.1f s; buffered metrics are being sent",
                    time.monotonic() - self._outage_since,
                )
                self._outage_since = None
