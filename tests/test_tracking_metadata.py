"""What a registered version tells about itself on a real MLflow server: a description (the model, what it
was fine-tuned from, its eval metrics beside the baselines), its metrics as tags, and a pyfunc signature.

The lineage is the pipeline's own run tree, created here with the same client calls the pipeline makes
(pipeline run → stage runs → the train run with its config params); the registry finds it on its own.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from v2w_core import tracking
from v2w_core.diffusion.rollout import RolloutConfig

sys.path.insert(0, str(Path(__file__).parent / "eval"))
from eval_helpers import ACTION_DIM, SIZE, save_model

pytestmark = pytest.mark.slow


def test_version_description_metric_tags_and_signature(mlflow_stack: Any, tmp_path: Path) -> None:
    import mlflow.models

    uri = mlflow_stack.mlflow_uri
    client = tracking.client(uri)
    experiment, name = f"v2w-meta-{uuid.uuid4().hex[:8]}", f"wm-meta-{uuid.uuid4().hex[:8]}"
    model_dir = save_model(tmp_path / "model")
    exp_id = tracking.ensure_experiment(client, experiment)
    pipeline = client.create_run(exp_id, run_name="pipeline:meta").info.run_id

    def stage(stage_name: str, **tags: str) -> str:
        return client.create_run(exp_id, run_name=stage_name, tags={
            "mlflow.parentRunId": pipeline, "v2w.stage": stage_name, **tags}).info.run_id  # fmt: skip

    stage("base", **{"output.model": "asset://tiny_unet3d_vizdoom"})
    train_stage = stage("train")
    tracking.start_run(uri, experiment, run_name="train", parent_run_id=train_stage, params={
        "output_uri": str(model_dir), "model.base_uri": "s3://v2w/p/causalize/abc/model", "max_steps": "300",
        "mode": "finetune"})  # fmt: skip
    eval_run = stage("evaluate")
    metrics = {"psnr_mean": 21.4, "copy_last_psnr_mean": 24.6, "untrained_psnr_mean": 10.25, "ssim_mean": 0.5,
               "copy_last_ssim_mean": 0.66, "fvd": float("nan"), "gen_saturated_frac": 0.01}  # fmt: skip

    version = tracking.register_world_model(
        str(model_dir), name, metrics=metrics, split_id="split-a", tracking_uri=uri, run_id=eval_run,
        experiment=experiment, rollout_config=RolloutConfig(num_inference_steps=2, window=8),
    )  # fmt: skip
    mv = client.get_model_version(name, version)

    text = mv.description
    params = tracking.registry._parameter_count(Path(model_dir))
    assert params and f"{params / 1e6:.2f} M parameters" in text
    for part in ("unet3d video diffusion model", "causal mode extrapolative",
                 f"continuous actions (dim {ACTION_DIM})", f"{SIZE}×{SIZE}×3 frames",
                 "fine-tuned from `s3://v2w/p/causalize/abc/model` for 300 steps",
                 "pretrained base `asset://tiny_unet3d_vizdoom`",
                 "psnr_mean 21.4 (copy-last 24.6, untrained base 10.25)", "ssim_mean 0.5 (copy-last 0.66)",
                 "split `split-a`", f"`{model_dir}`"):  # fmt: skip
        assert part in text, (part, text)
    assert "fvd" not in text  # not finite: not summarised (still a tag)
    # every metric as a tag, readable back as numbers
    got = tracking.version_metrics(mv.tags)
    assert set(got) == set(metrics) and got["psnr_mean"] == 21.4 and np.isnan(got["fvd"])

    signature = mlflow.models.get_model_info(f"models:/{name}/{version}").signature
    assert signature is not None
    assert signature.inputs.input_names() == ["context", "actions"]
    context, actions = signature.inputs.inputs
    assert context.type == np.dtype(np.uint8) and context.shape == (-1, -1, SIZE, SIZE, 3)
    assert actions.type == np.dtype(np.float32) and actions.shape == (-1, -1, ACTION_DIM)
    assert [p.name for p in signature.params.params] == ["num_frames", "seed"]
    assert signature.outputs.inputs[0].shape == (-1, -1, SIZE, SIZE, 3)


def test_description_without_lineage_or_actions() -> None:
    """A model registered outside a pipeline (no training run to find) is still described."""
    cfg = {"family": "unet3d", "causal_mode": "masked", "sample_size": [64, 64], "data_channels": 4}
    text = tracking.describe_version("s3://b/m", cfg, metrics={"psnr_mean": 20.0}, split_id="s")
    assert "causal mode masked, no actions, 64×64×4 frames." in text and "Base:" not in text
    assert "psnr_mean 20 " in text or "psnr_mean 20." in text
    assert tracking.pyfunc_signature(cfg).inputs.input_names() == ["context"]
    assert tracking.pyfunc_signature({"family": "unet3d"}) is None
