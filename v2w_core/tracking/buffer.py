"""Buffered MLflow logging for training: it never blocks or kills the training loop.

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
:func:`v2w_core.tracking.runs.start_run`) so that a restarted worker group keeps logging into the same run.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from v2w_core.tracking.client import client as mlflow_client
from v2w_core.tracking.runs import MAX_METRICS_PER_BATCH, MAX_PARAM_VALUE, MAX_PARAMS_PER_BATCH

logger = logging.getLogger(__name__)

#: Metrics that :meth:`BufferedMlflowLogger.close` logs: what never reached the tracking server.
DROPPED_BATCHES_METRIC = "mlflow_dropped_metric_batches"
DROPPED_VALUES_METRIC = "mlflow_dropped_metric_values"


def _no_client_retries(timeout_s: float) -> None:
    """Make MLflow's HTTP client fail fast in this process; our thread does the retrying."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, timeout_s)))


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
        _no_client_retries(request_timeout_s)
        self.run_id = run_id
        self._client = mlflow_client(tracking_uri)
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


__all__ = ["DROPPED_BATCHES_METRIC", "DROPPED_VALUES_METRIC", "BufferedMlflowLogger"]
