"""The pipeline in latent space: with ``latents.vae_uri`` set, an encode stage runs and every model stage
(pretraining, fine-tuning, evaluation) works on VAE latents, while metrics stay in pixel space."""

from __future__ import annotations

import math
import sys
import time

import pytest
from ray import cloudpickle

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TINY = [
    "data.source=bouncing-shapes", "data.episodes=8", "data.writer.eval_fraction=0.3",
    "data.source_options={episode_length: 32}", "data.writer.codec={name: zstd}",
    "base.train.scaling={num_workers: 1, cpus_per_worker: 0.5}",
    "train.train.scaling={num_workers: 1, cpus_per_worker: 0.5}",
    "base.preset=tiny_unet3d_latent",
    "base.pretrained_uri=null",  # pretrain the base in the DAG (the demo ships one: asset://)
    "base.train.max_steps=2", "base.train.checkpoint.every_n_steps=2",
    "train.train.max_steps=2", "train.train.checkpoint.every_n_steps=2",
    "evaluate.baseline=false", "evaluate.protocol.max_episodes=1", "evaluate.protocol.horizon=2",
    "evaluate.protocol.rollout.num_inference_steps=2", "evaluate.protocol.num_videos=1",
    "evaluate.protocol.controllability=false",
    # 2 CPUs: the encode actor (fused with clip decoding) and Ray Data's read tasks (1 CPU each) must fit
    # beside the stage task; with 1 + 1 + 0.1 they wait on each other forever
    "clips.decode_num_cpus=0.5", "latents.cpus_per_actor=0.5",
]


def test_vae_pipeline_trains_and_evaluates_in_latent_space(ray_cluster, mlflow_stack, s3_prefix, tiny_vae_dir):
    from pipelines.config import PipelineConfig
    from pipelines.dag import build_and_run
    from pipelines.full import build_stages, start_tracking
    from v2w_core.models.io import read_world_model_config

    cfg = PipelineConfig.from_yaml("configs/tiny.yaml", [
        *TINY, f"latents.vae_uri={tiny_vae_dir}", f"run.root={s3_prefix}", "run.name=latent-test",
        "registry.model_name=v2w-latent-test"])
    stages = build_stages(cfg)
    names = [s.name for s in stages]
    upstream = {s.name: s.upstream for s in stages}
    assert names.index("encode") < names.index("base") and "encode" in upstream["train"]
    tracking = start_tracking(cfg)
    res = build_and_run(stages, cfg.run.root, tracking=tracking)

    enc = res["encode"].outputs
    assert enc["latent_clip_shape"] == [16, 4, 16, 16]  # 16-frame clips of 64×64 pixels through a ×4 VAE
    assert enc["clips"] == res["clips"].outputs["clips"] and enc["reconciles"]
    model_cfg = read_world_model_config(res["train"].outputs["model"])
    assert model_cfg.data_channels == 4 and tuple(model_cfg.sample_size) == (16, 16)
    metrics = res["evaluate"].outputs["metrics"]
    assert math.isfinite(metrics["psnr_mean"]) and 0 < metrics["psnr_mean"] < 60  # decoded pixels vs truth
    reg = res["register"].outputs
    assert reg["version"]
    # the version names its VAE, so v2w-play can decode its frames
    from v2w_core.tracking import VAE_TAG
    from v2w_core.tracking.client import client

    version = client(mlflow_stack.mlflow_uri).get_model_version(reg["name"], reg["version"])
    assert version.tags[VAE_TAG] == str(tiny_vae_dir)
    # the encode stage's Ray Data actor pool died with its stage: the shared cluster's CPUs are all free again
    # (a lingering 0.5-CPU encode actor once starved the next test's Ray Train run into a hang)
    import ray

    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]

    # without a VAE there is no encode stage and the model stages read the shards (pixel space)
    plain = build_stages(PipelineConfig.from_yaml("configs/tiny.yaml", TINY[:1]))
    assert "encode" not in [s.name for s in plain]
