"""Tiny clips, configs and checks shared by the Ray training tests (one node and two nodes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from v2w_core.train.config import TrainConfig

FRAMES, SIZE, ACTION_DIM = 8, 32, 2
TINY_MODEL = {"overrides": {"sample_size": [SIZE, SIZE]}}


def clips(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """A bright square on a dark background, moved each frame by the recorded (continuous) action."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        frames = np.full((FRAMES, SIZE, SIZE, 3), 20, np.uint8)
        actions = rng.integers(-2, 3, size=(FRAMES, ACTION_DIM)).astype(np.float32)
        pos = rng.integers(2, SIZE - 6, size=2)
        color = rng.integers(128, 256, size=3)
        for t in range(FRAMES):
            y, x = pos
            frames[t, y : y + 4, x : x + 4] = color
            pos = np.clip(pos + actions[t].astype(int), 0, SIZE - 4)
        out.append({"frames": frames, "actions": actions})
    return out


def dataset(n: int = 32) -> Any:
    import ray.data

    return ray.data.from_items(clips(n))


def train_cfg(prefix: str, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "storage_path": prefix + "runs",
        "micro_batch_per_worker": 2,
        "model": TINY_MODEL,
        "optim": {"lr": 2e-3, "warmup_steps": 1},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "tracking": {"experiment": "test-train"},
    }
    for key, value in kw.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return TrainConfig.from_dict(base)


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def check_partitioned(metrics: dict[str, Any]) -> None:
    """Each of the 2 ranks holds about half of the fp32 master weights and of the Adam state."""
    total = metrics["model_numel"]
    masters = [metrics[f"optim_master_numel_rank{r}"] for r in range(2)]
    states = [metrics[f"optim_state_numel_rank{r}"] for r in range(2)]
    for m, s in zip(masters, states, strict=True):
        assert abs(m - total / 2) <= 0.02 * total, (masters, total)
        assert abs(s - total) <= 0.04 * total, (states, total)  # exp_avg + exp_avg_sq of half the weights
    assert sum(masters) >= total
