"""End to end on the real stack: a model logged by a (stand-in) training run, evaluated in parallel Ray
actors, with metrics, drift curve, PNG and videos in an MLflow run nested under a parent run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import eval_config, save_conv_net, save_model, write_dataset
from PIL import Image

from v2w_core import storage
from v2w_core.eval.evaluate import evaluate

pytestmark = pytest.mark.slow


def test_evaluate_logs_metrics_drift_png_and_videos(
    mlflow_stack: Any, ray_cluster: Any, s3_prefix: str, tmp_path: Path
) -> None:
    import mlflow.artifacts
    from mlflow import MlflowClient

    tracking_uri = mlflow_stack.env()["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("v2w-eval-test") or None
    exp_id = exp.experiment_id if exp else client.create_experiment("v2w-eval-test")
    # Training logs its export as the run's "model" artifact directory; do the same.
    train_run = client.create_run(exp_id, run_name="train").info.run_id
    client.log_artifacts(train_run, save_model(tmp_path / "model"), "model")
    client.set_terminated(train_run)
    parent = client.create_run(exp_id, run_name="pipeline").info.run_id

    manifest = write_dataset(s3_prefix + "data", n=2, length=5)
    fvd_uri = s3_prefix + "weights/fvd.safetensors"  # metric weights from object storage
    storage.write_bytes(fvd_uri, Path(save_conv_net(tmp_path / "fvd.safetensors", 3)).read_bytes())
    cfg = eval_config(
        num_actors=2,
        metric_weights={"fid": save_conv_net(tmp_path / "fid.safetensors", 2), "fvd": fvd_uri},
    )
    result = evaluate(
        f"runs:/{train_run}/model", manifest, cfg, tracking_uri=tracking_uri,
        experiment="v2w-eval-test", parent_run_id=parent,
    )  # fmt: skip

    assert result.num_chunks == 2 and result.run_id
    assert {"psnr_mean", "ssim_mean", "fid", "fvd", "ctrl_rollout_diff", "ctrl_psnr_gain_db"} <= set(
        result.metrics
    )
    assert set(result.unavailable) == {"lpips_mean"}
    run = client.get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["v2w.eval_split"] == result.split_id
    assert run.data.tags["v2w.unavailable.lpips_mean"].startswith("unavailable: no lpips network weights")
    assert "lpips_mean" not in run.data.metrics
    for key in ("psnr_mean", "ssim_mean", "fid", "fvd"):
        assert run.data.metrics[key] == pytest.approx(result.metrics[key])
    history = client.get_metric_history(result.run_id, "drift_psnr")
    assert sorted(m.step for m in history) == [1, 2, 3]  # one point per horizon step
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(result.drift["psnr"])

    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"drift_curve.png", "videos", "metrics.json", "per_chunk.json"} <= names
    videos = [a.path for a in client.list_artifacts(result.run_id, "videos")]
    assert len(videos) == 2 and all(v.endswith(".gif") for v in videos)
    local = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, tracking_uri=tracking_uri,
                                                     dst_path=str(tmp_path / "dl")))  # fmt: skip
    assert (local / "drift_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gif = Image.open(local / videos[0])
    assert gif.n_frames == cfg.context_frames + cfg.horizon
    assert gif.size == (cfg.video_scale * (2 * 32 + 2), cfg.video_scale * 32)  # GT | generated
    summary = json.loads((local / "metrics.json").read_text())
    assert summary["unavailable"]["lpips_mean"].startswith("unavailable: ")
