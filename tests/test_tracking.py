"""Registry on a real MLflow server: champion / challenger policy and the pyfunc loaded from an alias."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from v2w_core import tracking
from v2w_core.diffusion.rollout import RolloutConfig

sys.path.insert(0, str(Path(__file__).parent / "eval"))
from eval_helpers import make_episode, make_model, save_model


def test_primary_metric_and_direction() -> None:
    assert (
        tracking.choose_primary({"fvd": 10.0, "psnr_mean": 20.0}, {"fvd": 12.0, "psnr_mean": 25.0}) == "fvd"
    )
    assert tracking.choose_primary({"psnr_mean": 20.0}, {"fvd": 12.0, "psnr_mean": 25.0}) == "psnr_mean"
    assert tracking.choose_primary({"ssim_mean": 0.5}, {"psnr_mean": 25.0}) is None
    assert tracking.is_better("fvd", 10.0, 12.0) and not tracking.is_better("fvd", 12.0, 10.0)
    assert tracking.is_better("psnr_mean", 21.0, 20.0) and not tracking.is_better("psnr_mean", 19.0, 20.0)
    assert not tracking.is_better("fvd", 10.0, 10.0) and not tracking.is_better("psnr_mean", 20.0, 20.0)


def test_copy_last_gate_rule() -> None:
    ok = tracking.copy_last_gate({"psnr_mean": 25.0, "copy_last_psnr_mean": 24.6})
    assert ok.passed and ok.metric == "psnr_mean" and ok.copy_last_value == 24.6
    below = tracking.copy_last_gate({"psnr_mean": 21.4, "copy_last_psnr_mean": 24.6})
    assert not below.passed and "21.4" in below.reason and "24.6" in below.reason
    assert not tracking.copy_last_gate({"psnr_mean": 24.6, "copy_last_psnr_mean": 24.6}).passed  # a tie
    # FVD decides when the version has it and its copy-last value (lower is better), even against PSNR
    fvd = tracking.copy_last_gate(
        {"psnr_mean": 30.0, "copy_last_psnr_mean": 24.0, "fvd": 90.0, "copy_last_fvd": 80.0}
    )
    assert not fvd.passed and fvd.metric == "fvd" and "90" in fvd.reason and "80" in fvd.reason
    assert tracking.copy_last_gate({"psnr_mean": 30.0, "copy_last_psnr_mean": 24.0, "fvd": 90.0}).passed
    old = tracking.copy_last_gate({"psnr_mean": 30.0, "ssim_mean": 0.9})  # a record from before the gate
    assert not old.passed and old.reason == "no copy-last baseline in its eval; re-evaluate"
    nan = tracking.copy_last_gate({"psnr_mean": float("nan"), "copy_last_psnr_mean": 24.0})
    assert not nan.passed and "no finite primary metric" in nan.reason


@pytest.mark.slow
def test_copy_last_gate_and_degenerate_outputs_on_the_registry(mlflow_stack: Any, tmp_path: Path) -> None:
    """A version that does not beat copy-last-frame (or whose outputs are degenerate) is never champion,
    not even the first one; it is tagged rejected with the reason and both numbers."""
    uri = mlflow_stack.env()["MLFLOW_TRACKING_URI"]
    client = tracking.client(uri)
    name = f"wm-gate-{uuid.uuid4().hex[:8]}"
    model_dir = save_model(tmp_path / "model")
    healthy = {"gen_nonfinite_frac": 0.0, "gen_saturated_frac": 0.01}

    def register(**metrics: float) -> tracking.PromotionResult:
        return tracking.register_and_promote(
            model_dir, name, metrics={**healthy, **metrics}, split_id="split-a", tracking_uri=uri,
            experiment="v2w-reg-test", rollout_config=RolloutConfig(num_inference_steps=2, window=8),
        )  # fmt: skip

    def champion() -> str | None:
        try:
            return client.get_model_version_by_alias(name, "champion").version
        except Exception:  # noqa: BLE001 - RestException: no such alias
            return None

    # the case: below copy-last (and above its untrained base) with no champion yet -> rejected
    below = register(psnr_mean=21.4, copy_last_psnr_mean=24.6, untrained_psnr_mean=10.25)
    assert below.decision == "rejected" and not below.promoted and champion() is None
    assert below.metric == "psnr_mean" and below.value == 21.4 and below.copy_last_value == 24.6
    tags = client.get_model_version(name, below.version).tags
    assert tags["v2w.rejected"] == "true" and tags["v2w.degenerate"] == "false"
    assert tags["v2w.promotion"].startswith("rejected: psnr_mean 21.4 does not beat the copy-last")
    assert "24.6" in tags["v2w.promotion"]
    assert client.get_model_version(name, below.version).aliases == []
    tie = register(psnr_mean=24.6, copy_last_psnr_mean=24.6)
    assert tie.decision == "rejected" and champion() is None
    unknown = register(psnr_mean=30.0)  # evaluated before baselines existed
    assert (
        unknown.decision == "rejected" and "no copy-last baseline in its eval; re-evaluate" in unknown.reason
    )
    saturated = register(psnr_mean=30.0, copy_last_psnr_mean=24.6, gen_saturated_frac=0.42 + 0.2)
    assert saturated.decision == "rejected" and "degenerate outputs" in saturated.reason
    assert client.get_model_version(name, saturated.version).tags["v2w.degenerate"] == "true"
    nonfinite = register(psnr_mean=30.0, copy_last_psnr_mean=24.6, gen_nonfinite_frac=1e-4)
    assert nonfinite.decision == "rejected" and "non-finite" in nonfinite.reason
    assert champion() is None

    # beating copy-last: the first passing version becomes champion, the reason names both numbers
    first = register(psnr_mean=25.0, copy_last_psnr_mean=24.6)
    assert first.promoted and champion() == first.version and first.copy_last_value == 24.6
    tags = client.get_model_version(name, first.version).tags
    assert (
        tags["v2w.rejected"] == "false"
        and "beats the copy-last-frame baseline's 24.6" in tags["v2w.promotion"]
    )
    # better than the champion but not than copy-last (e.g. a harder eval protocol): still rejected
    harder = register(psnr_mean=26.0, copy_last_psnr_mean=27.0)
    assert harder.decision == "rejected" and champion() == first.version
    # FVD with its copy-last value decides the gate even when PSNR beats copy-last
    fvd = register(psnr_mean=30.0, copy_last_psnr_mean=24.6, fvd=90.0, copy_last_fvd=80.0)
    assert fvd.decision == "rejected" and fvd.metric == "fvd" and champion() == first.version
    better = register(psnr_mean=26.0, copy_last_psnr_mean=24.6)
    assert better.promoted and champion() == better.version and better.champion_version == first.version


@pytest.mark.slow
def test_promotion_policy_and_pyfunc_from_alias(mlflow_stack: Any, tmp_path: Path) -> None:
    import mlflow.pyfunc

    uri = mlflow_stack.env()["MLFLOW_TRACKING_URI"]
    name = f"wm-{uuid.uuid4().hex[:8]}"
    model_dir = save_model(tmp_path / "model")
    split = "split-a"

    def register(metrics: dict[str, float], split_id: str = split) -> tracking.PromotionResult:
        # every version here beats its copy-last-frame baseline (the gate is test_copy_last_gate_*'s)
        metrics = {"copy_last_psnr_mean": 5.0, **metrics}
        return tracking.register_and_promote(
            model_dir, name, metrics=metrics, split_id=split_id, tracking_uri=uri, experiment="v2w-reg-test",
            rollout_config=RolloutConfig(num_inference_steps=2, window=8),
        )  # fmt: skip

    first = register({"psnr_mean": 20.0})
    assert first.promoted and first.version == "1" and first.champion_version is None
    worse = register({"psnr_mean": 18.0})
    assert worse.decision == "challenger" and worse.champion_version == "1" and worse.metric == "psnr_mean"
    better = register({"psnr_mean": 22.0})
    assert better.promoted and better.champion_value == 20.0
    tie = register({"psnr_mean": 22.0})
    assert tie.decision == "challenger"  # a tie keeps the champion
    other_split = register({"psnr_mean": 40.0}, split_id="split-b")
    assert other_split.decision == "challenger" and "not comparable" in other_split.reason

    client = tracking.client(uri)
    assert client.get_model_version_by_alias(name, "champion").version == better.version
    assert client.get_model_version_by_alias(name, "challenger").version == other_split.version
    assert client.get_model_version(name, worse.version).tags["v2w.promotion"].startswith("challenger:")

    # FVD, when both have it, decides (lower is better) even against a better PSNR.
    fvd_champ = register({"psnr_mean": 23.0, "fvd": 100.0})
    assert fvd_champ.promoted and fvd_champ.metric == "psnr_mean"  # champion had no FVD: fallback
    lower_fvd = register({"psnr_mean": 10.0, "fvd": 90.0})
    assert lower_fvd.promoted and lower_fvd.metric == "fvd"
    higher_fvd = register({"psnr_mean": 30.0, "fvd": 120.0})
    assert higher_fvd.decision == "challenger" and higher_fvd.metric == "fvd"

    # The champion loads through the registry alias as a pyfunc and rolls out (the inputs its signature
    # names: batched arrays, num_frames and seed as params).
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    ep = make_episode(0, length=5)
    inputs = {"context": ep.frames[None, :2], "actions": ep.actions[None]}
    out = pyfunc.predict(inputs, params={"num_frames": 2, "seed": 3})
    assert out.shape == (1, 2, 32, 32, 3) and out.dtype == np.uint8
    again = pyfunc.predict(inputs, params={"num_frames": 2, "seed": 3})
    np.testing.assert_array_equal(out, again)
    # ... and as the world model itself (what evaluate's actors load), with the same weights.
    wm = tracking.load_model(f"models:/{name}@champion", tracking_uri=uri)
    ref = make_model()
    for (k, a), (_, b) in zip(wm.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
