"""Distributed training end to end: real local Ray (2 CPUs), DeepSpeed ZeRO on gloo, moto S3, MLflow server.

Runs in order (module-scoped state, one Ray cluster): a ZeRO-2 pretraining run that loses a worker
process mid-run and resumes from the object store; a re-run of the same experiment after its newest
checkpoint was truncated (falls back to the previous one); a ZeRO-3 Vid2World fine-tuning run from the
exported base, during which the MLflow server is stopped and restarted. The model and clips are tiny
(8 frames of 32×32, the ≈1.7 M-parameter tiny preset) so that an optimizer step takes ~0.3–3 s on a shared core.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.train.helpers import (
    ACTION_DIM,
    SIZE,
    TINY_MODEL,
    check_partitioned,
    clips,
    dataset,
    metric_history,
    train_cfg,
)
from v2w_core.config import ConfigError
from v2w_core.tracking import load_model
from v2w_core.train import checkpoint as ck

pytestmark = pytest.mark.slow

STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def stack(mlflow_stack: Any, ray_cluster: Any) -> Any:
    return mlflow_stack


@pytest.fixture(scope="module")
def prefix(stack: Any) -> str:
    import uuid

    return f"s3://{stack.bucket}/test-train-{uuid.uuid4().hex[:8]}/"


def test_bad_scaling_fails_fast(stack: Any, prefix: str) -> None:
    from v2w_core.train.api import train

    with pytest.raises(ConfigError, match=r"needs 4 CPUs but the Ray cluster has 3\b"):
        train(train_cfg(prefix, experiment="too-big", scaling={"num_workers": 8}), dataset=dataset(4))
    with pytest.raises(ConfigError, match="model"):
        train(train_cfg(prefix, experiment="bad-model", model={"preset": "nope"}), dataset=dataset(4))


def test_zero2_pretrain_survives_a_lost_worker(stack: Any, prefix: str) -> None:
    import torch
    from mlflow import MlflowClient

    from v2w_core import storage
    from v2w_core.train.api import train

    cfg = train_cfg(
        prefix,
        experiment="pre",
        mode="pretrain",
        zero_stage=2,
        max_steps=6,
        checkpoint={"every_n_steps": 2, "keep": 3, "max_failures": 1},
        fault_injection={"at_step": 5, "rank": 1, "kind": "exit"},
        ema={"enabled": True, "decay": 0.9},
    )
    result = train(cfg, dataset=dataset())
    m = result.metrics
    assert m["done"] == 1.0 and m["step"] == 6
    # Worker 1 died at step 5 (after the step-4 checkpoint): the new worker group resumed at 4, not 0.
    assert m["start_step"] == 4, m
    assert m["checkpoint_fallbacks"] == 0
    check_partitioned(m)
    assert result.checkpoint_uri and ck.parse_step_dir(result.checkpoint_uri.rsplit("/", 1)[1]) == 6

    # Steps continue without gap or repeat: every checkpoint step once, in order, in the object store.
    fs, run_path = storage.get_filesystem(cfg.run_dir)
    assert [r.step for r in ck.list_checkpoints(fs, run_path)] == [6, 4, 2]

    loss = metric_history(result.run_id, "loss")
    steps = [s for s, _ in loss]
    assert set(steps) == set(range(1, 7))  # 5 logged twice at most: before the crash and after resume
    # Loss on a fixed batch with fixed noise/timesteps (the training loss jumps with the random t).
    assert m["probe_loss_end"] < 0.9 * m["probe_loss_start"], m

    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["zero_stage"] == "2" and run.data.params["optim.lr"] == "0.002"
    assert run.data.params["env.deepspeed"] and "env.torch" in run.data.params
    assert run.info.status == "FINISHED"
    assert m["mlflow_artifact_logged"] == 1.0
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "model")}
    assert "model/config.json" in artifacts
    assert storage.exists(storage.join(result.model_uri, "config.json"))
    ema = load_model(result.ema_model_uri)  # EMA weights: restored on resume, exported beside the model
    raw = load_model(result.model_uri)
    assert not all(
        torch.equal(a, b) for a, b in zip(ema.state_dict().values(), raw.state_dict().values(), strict=True)
    )
    STATE["pretrain"] = (cfg, result)


def test_rerun_resumes_and_skips_a_truncated_checkpoint(stack: Any, prefix: str) -> None:
    from v2w_core import storage
    from v2w_core.train.api import train

    cfg, first = STATE["pretrain"]
    latest = first.checkpoint_uri
    victim = next(u for u in storage.list_files(latest) if u.endswith("optim_states.pt"))
    data = storage.read_bytes(victim)
    storage.write_bytes(victim, data[: len(data) // 3])

    rerun = cfg.model_copy(
        update={"max_steps": 8, "fault_injection": cfg.fault_injection.model_copy(update={"at_step": None})}
    )
    result = train(rerun, dataset=dataset())
    m = result.metrics
    assert m["checkpoint_fallbacks"] == 1  # step 6 rejected (hash/size), step 4 used, with a warning
    assert m["start_step"] == 4
    assert m["step"] == 8 and m["done"] == 1.0


def test_zero3_finetune_with_mlflow_outage(stack: Any, prefix: str) -> None:
    import torch
    from mlflow import MlflowClient

    from infra import stack as stack_mod
    from v2w_core.train.api import train

    _, pre = STATE["pretrain"]
    cfg = train_cfg(
        prefix,
        experiment="ft",
        mode="finetune",
        zero_stage=3,
        precision="bf16",
        max_steps=10,
        checkpoint={"every_n_steps": 5},
        model={
            **TINY_MODEL,
            "base_uri": pre.model_uri,
            "causal_mode": "extrapolative",
            "action_space": {"type": "continuous", "dim": ACTION_DIM},
        },
    )
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = train(cfg, dataset=dataset())
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    client = MlflowClient()
    run_id = None
    deadline = time.monotonic() + 400
    # Wait until step metrics arrive, then take the tracking server down for a while.
    while time.monotonic() < deadline and thread.is_alive():
        runs = client.search_runs(
            [client.get_experiment_by_name("test-train").experiment_id], "tags.`v2w.experiment` = 'ft'"
        )
        if runs and metric_history(runs[0].info.run_id, "loss"):
            run_id = runs[0].info.run_id
            break
        time.sleep(1)
    assert run_id, box.get("error")
    stack_mod.stop(("mlflow",), config=stack.config)
    time.sleep(12)  # several steps with the server gone
    stack_mod.ensure_running(("mlflow",), config=stack.config)
    thread.join(timeout=600)
    if "error" in box:
        raise box["error"]
    result = box["result"]
    m = result.metrics
    assert m["done"] == 1.0 and m["step"] == 10
    assert m["mlflow_failures"] >= 1  # the outage was seen ...
    assert m["mlflow_dropped_metrics"] == 0 and m["mlflow_unsent"] == 0
    assert [s for s, _ in metric_history(run_id, "loss")][-1] == 10  # ... and the buffered metrics arrived later
    check_partitioned(m)
    assert m["probe_loss_end"] < m["probe_loss_start"], m

    model = load_model(result.model_uri)
    assert model.is_causal and model.action_encoder is not None
    STATE["finetune"] = (cfg, result)
    try:
        from v2w_core.diffusion.rollout import RolloutConfig, rollout
    except ImportError:
        pytest.skip("diffusion rollout not available")
    clip = clips(1, seed=5)[0]
    context = torch.as_tensor(clip["frames"][None, :2]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    actions = torch.as_tensor(clip["actions"][None])
    out = rollout(
        model.eval(),
        context,
        actions,
        2,
        RolloutConfig(num_inference_steps=2, window=4),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (1, 2, 3, SIZE, SIZE) and torch.isfinite(out).all()
