"""``models:/`` URIs against a real MLflow server (the ``mlflow_stack`` fixture): the registered version
brings its rollout config and its held-out split (the context picker's list); a missing alias says which
versions exist instead of MLflow's 404."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from v2w_core.diffusion.rollout import RolloutConfig
from v2w_core.play.errors import PlayError
from v2w_core.play.source import resolve_source
from v2w_core.tracking import EVAL_MANIFEST_TAG


@pytest.mark.slow
def test_registered_version_resolves_with_its_split(mlflow_stack, play_model_dir: Path, play_manifest: str,
                                                     tmp_path: Path) -> None:  # fmt: skip
    from v2w_core import tracking
    from v2w_core.tracking.client import client

    uri = mlflow_stack.env()["MLFLOW_TRACKING_URI"]
    name = f"play-{uuid.uuid4().hex[:8]}"
    version = tracking.register_world_model(
        str(play_model_dir), name, metrics={"psnr_mean": 20.0}, split_id="s", tracking_uri=uri,
        experiment="play-test", rollout_config=RolloutConfig(num_inference_steps=3, window=8),
    )  # fmt: skip
    mlflow = client(uri)
    mlflow.set_model_version_tag(name, version, EVAL_MANIFEST_TAG, play_manifest)

    with pytest.raises(PlayError, match=rf"has no version with alias 'champion' \(versions: v{version}\)"):
        resolve_source(f"models:/{name}@champion", tracking_uri=uri)
    latest = resolve_source(f"models:/{name}/latest", tracking_uri=uri, download_dir=tmp_path / "a")
    assert latest.label == f"{name} v{version}" and latest.eval_manifest == play_manifest

    mlflow.set_registered_model_alias(name, "champion", version)
    src = resolve_source(f"models:/{name}@champion", tracking_uri=uri, download_dir=tmp_path / "b")
    assert src.label == f"{name} v{version} (champion)"
    assert src.rollout["num_inference_steps"] == 3 and src.rollout["window"] == 8
    assert src.config["action_space"] == {"type": "multi_hot", "dim": 3}
    assert (Path(src.model_dir) / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(PlayError, match="no registered model named 'no-such-model'"):
        resolve_source("models:/no-such-model@champion", tracking_uri=uri)
