"""MLflow bookkeeping on the real tracking server: lost metric batches are counted and logged at the end of
the run (the server stopped for a while, as in test_train_ray's outage), and experiments are created as
model-training experiments (MLflow 3's UI opens them on runs, not on the GenAI view)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest

from v2w_core import tracking
from v2w_core.tracking import (
    DROPPED_BATCHES_METRIC,
    DROPPED_VALUES_METRIC,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    BufferedMlflowLogger,
)

pytestmark = pytest.mark.slow


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_lost_metric_batches_are_counted_and_logged_at_the_end(
    mlflow_stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    from infra import stack as stack_mod

    uri = mlflow_stack.mlflow_uri
    client = MlflowClient(tracking_uri=uri)
    experiment = f"v2w-logger-{uuid.uuid4().hex[:8]}"
    run_id = tracking.start_run(uri, experiment, run_name="outage")
    clean_id = tracking.start_run(uri, experiment, run_name="no-loss")
    caplog.set_level(logging.WARNING, logger="v2w_core.tracking.buffer")

    tracker = BufferedMlflowLogger(uri, run_id, max_buffer=20, retry_interval_s=0.2, max_retry_interval_s=1.0)
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert tracker.flush(30)
    # A batch the server rejects (an invalid metric name): retrying cannot help, it is dropped and counted.
    tracker.log_metrics({"loss": 0.9, "bad!name": 1.0}, step=1)
    assert tracker.flush(30) and tracker.rejected_metric_batches == 1
    # The server goes away; two steps fit the buffer (20 values), the next two are dropped whole.
    stack_mod.stop(("mlflow",), config=mlflow_stack.config)
    try:
        for step in range(2, 6):
            tracker.log_metrics({f"m{i}": float(step) for i in range(10)}, step=step)
        time.sleep(1.0)  # the sender retries meanwhile
        assert tracker.failures >= 1 and tracker.overflow_batches == 2
    finally:
        stack_mod.ensure_running(("mlflow",), config=mlflow_stack.config)
    assert tracker.close(timeout_s=60)

    assert _history(client, run_id, "loss") == [(0, 1.0)]  # step 1 was in the rejected batch
    assert _history(client, run_id, "m0") == [(2, 2.0), (3, 3.0)]  # buffered through the outage
    assert _history(client, run_id, DROPPED_BATCHES_METRIC) == [(5, 3.0)]  # 1 rejected + 2 overflowed
    assert _history(client, run_id, DROPPED_VALUES_METRIC) == [(5, 22.0)]  # 2 + 2 × 10
    warning = [r.getMessage() for r in caplog.records if "never reached" in r.getMessage()]
    assert warning == [
        f"MLflow: 3 metric batches (22 values) of run {run_id} never reached the tracking server: 1 "
        + "rejected by it, 2 dropped on a full buffer during an outage, 0 unsent at shutdown"
    ]

    # Nothing lost: the count is logged all the same (0), without a warning.
    caplog.clear()
    clean = BufferedMlflowLogger(uri, clean_id)
    clean.log_metrics({"loss": 1.0}, step=7)
    assert clean.close(timeout_s=30)
    assert _history(client, clean_id, DROPPED_BATCHES_METRIC) == [(7, 0.0)]
    assert not [r for r in caplog.records if "never reached" in r.getMessage()]


def test_experiments_are_created_as_model_training_experiments(mlflow_stack: Any) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_stack.mlflow_uri)
    name = f"v2w-kind-{uuid.uuid4().hex[:8]}"
    tracking.start_run(mlflow_stack.mlflow_uri, name, run_name="r")  # creates the experiment
    assert client.get_experiment_by_name(name).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert EXPERIMENT_KIND == "custom_model_development"  # the value MLflow 3's UI knows
    # one created before the tag existed gets it; one whose kind someone chose keeps it
    old = f"{name}-old"
    old_id = client.create_experiment(old)
    assert tracking.ensure_experiment(client, old) == old_id
    assert client.get_experiment(old_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    genai_id = client.create_experiment(f"{name}-genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.ensure_experiment(client, f"{name}-genai")
    assert client.get_experiment(genai_id).tags[EXPERIMENT_KIND_TAG] == "genai_development"
