"""End to end on the real stack: a model logged by a (stand-in) training run, evaluated in parallel Ray
actors, its result logged (:func:`v2w_core.tracking.log_evaluation`) with metrics, drift curve, PNG and
videos in an MLflow run nested under a parent run."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import eval_config, save_conv_net, save_model, save_saturating_model, write_dataset
from PIL import Image

from v2w_core import storage, tracking
from v2w_core.eval.evaluate import evaluate
from v2w_core.eval.videos import LABEL_HEIGHT

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
        # LPIPS off: an unavailable metric is logged as a tag with its reason, never as a number
        metric_weights={"fid": save_conv_net(tmp_path / "fid.safetensors", 2), "fvd": fvd_uri, "lpips": None},
    )
    # a runs:/ URI: the actors load it with the tracking package's loader (eval itself knows no MLflow)
    result = evaluate(
        f"runs:/{train_run}/model", manifest, cfg,
        load_model=functools.partial(tracking.load_model, tracking_uri=tracking_uri),
    )  # fmt: skip
    run_id = tracking.log_evaluation(tracking_uri, "v2w-eval-test", result, parent_run_id=parent)

    assert result.num_chunks == 2 and run_id
    assert {"psnr_mean", "ssim_mean", "fid", "fvd", "ctrl_rollout_diff", "ctrl_psnr_gain_db"} <= set(
        result.metrics
    )
    assert set(result.unavailable) == {"lpips_mean"}
    assert {"copy_last_psnr_mean", "copy_last_ssim_mean", "gen_saturated_frac", "gen_nonfinite_frac"} <= set(
        result.metrics
    )
    run = client.get_run(run_id)
    assert run.data.tags["v2w.degenerate"] == "false" and result.degenerate is None
    assert run.data.metrics["copy_last_psnr_mean"] == pytest.approx(result.metrics["copy_last_psnr_mean"])
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["v2w.eval_split"] == result.split_id
    assert run.data.tags["v2w.unavailable.lpips_mean"].startswith("unavailable: no lpips network weights")
    assert "lpips_mean" not in run.data.metrics
    for key in ("psnr_mean", "ssim_mean", "fid", "fvd"):
        assert run.data.metrics[key] == pytest.approx(result.metrics[key])
    history = client.get_metric_history(run_id, "drift_psnr")
    assert sorted(m.step for m in history) == [1, 2, 3]  # one point per horizon step
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(result.drift["psnr"])

    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"drift_curve.png", "videos", "metrics.json", "per_chunk.json"} <= names
    assert {"drift_curve.png", "metrics.json", "per_chunk.json"} <= set(result.artifacts)
    videos = [a.path for a in client.list_artifacts(run_id, "videos")]
    assert len(videos) == 2 and all(v.endswith(".gif") for v in videos)
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=tracking_uri,
                                                     dst_path=str(tmp_path / "dl")))  # fmt: skip
    assert (local / "drift_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gif = Image.open(local / videos[0])
    assert gif.n_frames == cfg.context_frames + cfg.horizon
    # GT | generated, under a caption strip
    assert gif.size == (cfg.video_scale * (2 * 32 + 2), cfg.video_scale * 32 + LABEL_HEIGHT)
    summary = json.loads((local / "metrics.json").read_text())
    assert summary["unavailable"]["lpips_mean"].startswith("unavailable: ")


def test_untrained_baseline_joins_the_run_and_a_degenerate_model_is_flagged_and_rejected(
    mlflow_stack: Any, ray_cluster: Any, s3_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The model's eval run carries the untrained base's and the copy-last-frame baseline's metrics and drift
    curves; a model whose outputs are saturated noise is tagged degenerate, warned about, and the registry
    rejects it (no champion, even with none yet)."""
    from mlflow import MlflowClient

    tracking_uri = mlflow_stack.env()["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    manifest = write_dataset(s3_prefix + "data", n=2, length=5)
    cfg = eval_config(num_actors=2, controllability=False, num_videos=1)
    base = evaluate(save_model(tmp_path / "base"), manifest, cfg)
    base_run = tracking.log_evaluation(tracking_uri, "v2w-eval-test", base, run_name="eval:baseline")
    assert base.degenerate is None

    with caplog.at_level(logging.WARNING, logger="v2w_core.eval.evaluate"):
        result = evaluate(save_saturating_model(tmp_path / "noise"), manifest, cfg, baseline=base)
    assert result.metrics["gen_saturated_frac"] > 0.9 and "range limits" in result.degenerate
    assert any("degenerate outputs" in r.getMessage() for r in caplog.records)
    run_id = tracking.log_evaluation(
        tracking_uri, "v2w-eval-test", result, run_name="eval:trained", baseline_run_id=base_run
    )

    run = client.get_run(run_id)
    assert run.data.tags["v2w.degenerate"] == "true"
    assert "range limits" in run.data.tags["v2w.degenerate_reason"]
    assert run.data.tags["v2w.baseline_run_id"] == base_run
    assert client.get_run(base_run).data.tags["v2w.degenerate"] == "false"
    # the untrained base's numbers and curves, beside the copy-last frame's, in the model's own run
    assert run.data.metrics["untrained_psnr_mean"] == pytest.approx(base.metrics["psnr_mean"])
    assert run.data.metrics["untrained_ssim_mean"] == pytest.approx(base.metrics["ssim_mean"])
    assert run.data.metrics["copy_last_psnr_mean"] == pytest.approx(base.metrics["copy_last_psnr_mean"])
    assert "untrained_eval_seconds" not in run.data.metrics
    for name, expected in (
        ("untrained_psnr", base.drift["psnr"]),
        ("copy_last_psnr", result.drift["copy_last_psnr"]),
        ("psnr", result.drift["psnr"]),
    ):
        history = sorted(client.get_metric_history(run_id, f"drift_{name}"), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3] and [m.value for m in history] == pytest.approx(
            expected
        )
    assert result.drift["untrained_ssim"] == base.drift["ssim"]

    # a baseline from another split is refused before any rollout
    with pytest.raises(ValueError, match="same split"):
        evaluate(tmp_path / "noise", manifest, cfg, baseline=dataclasses.replace(base, split_id="other"))

    # the registry never promotes it, though there is no champion yet
    name = f"wm-degenerate-{uuid.uuid4().hex[:8]}"
    promo = tracking.register_and_promote(
        str(tmp_path / "noise"), name, metrics=result.metrics, split_id=result.split_id,
        tracking_uri=tracking_uri, run_id=None, experiment="v2w-eval-test",
    )  # fmt: skip
    assert promo.decision == "rejected" and not promo.promoted and "degenerate outputs" in promo.reason
    tags = client.get_model_version(name, promo.version).tags
    assert tags["v2w.degenerate"] == "true" and tags["v2w.rejected"] == "true"
    assert tags["v2w.promotion"].startswith("rejected: degenerate outputs")
    with pytest.raises(Exception):  # noqa: B017 - MLflow's RestException: no such alias
        client.get_model_version_by_alias(name, "champion")
