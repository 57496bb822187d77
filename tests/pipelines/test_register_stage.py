"""The register stage on a real MLflow server: the registered model samples with the rollout settings it was
evaluated with (evaluate.protocol.rollout), not with RolloutConfig's defaults."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "eval"))
from eval_helpers import save_model, write_dataset

pytestmark = pytest.mark.slow


def test_registered_model_carries_the_evaluated_rollout_config(mlflow_stack: Any, tmp_path: Path) -> None:
    import mlflow.pyfunc

    from pipelines.config import PipelineConfig
    from pipelines.dag import StageContext, StageResult
    from pipelines.full import build_stages
    from v2w_core import tracking
    from v2w_core.diffusion.rollout import RolloutConfig

    uri = mlflow_stack.mlflow_uri
    experiment, name = f"v2w-register-{uuid.uuid4().hex[:8]}", f"wm-register-{uuid.uuid4().hex[:8]}"
    evaluated = {"num_inference_steps": 3, "guidance_scale": 1.5, "window": 8, "eta": 0.5}
    cfg = PipelineConfig.model_validate(
        {"evaluate": {"protocol": {"rollout": evaluated}}, "registry": {"model_name": name}}
    )
    assert RolloutConfig(**evaluated) != RolloutConfig()  # the defaults would not pass for it
    stage = next(s for s in build_stages(cfg) if s.name == "register")

    manifest = write_dataset(str(tmp_path / "data"))
    model_dir = save_model(tmp_path / "model")
    eval_run = tracking.start_run(uri, experiment, run_name="eval:trained")
    metrics = {"psnr_mean": 30.0, "copy_last_psnr_mean": 20.0, "gen_nonfinite_frac": 0.0}
    ctx = StageContext(
        "register", "fp", str(tmp_path / "pipeline"), stage.config,
        extra={"tracking": {"tracking_uri": uri, "experiment_name": experiment}},
    )  # fmt: skip
    inputs = {
        "ingest": StageResult("ingest", "a", {"manifest": manifest}, False, 0.0),
        "evaluate": StageResult("evaluate", "b", {
            "model": model_dir, "metrics": metrics, "split_id": "split-a", "eval_run_id": eval_run,
            "eval_manifest": manifest}, False, 0.0),
    }  # fmt: skip
    out = stage.fn(ctx, inputs)
    assert out["decision"] == "champion"

    registered = mlflow.pyfunc.load_model(f"models:/{name}/{out['version']}").unwrap_python_model()
    assert registered.rollout_config == RolloutConfig(**evaluated)
    assert registered.rollout_config == cfg.evaluate.protocol.rollout
