"""Typed stage configs: each stage receives its pydantic section (plus what it reads from others), built
from the validated pipeline config without a dict round trip; the JSON its fingerprint hashes is the
section's own JSON plus those keys; the training recipes are validated when the config loads."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from pipelines.config import (
    BaseStageConfig,
    EncodeStageConfig,
    EvaluateStageConfig,
    PipelineConfig,
    RegisterStageConfig,
    TrainStageConfig,
    stage_configs,
)
from pipelines.dag import config_data, fingerprint
from pipelines.full import build_stages
from pipelines.stages import train_config
from v2w_core.config import ConfigError
from v2w_core.train.config import TrainConfig, TrainRecipe

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def _cfg(*overrides: str) -> PipelineConfig:
    return PipelineConfig.from_yaml(TINY, list(overrides))


def test_each_stage_gets_its_typed_section_and_the_fingerprint_covers_what_it_reads() -> None:
    cfg = _cfg("latents.vae_uri=/tmp/vae", "base.pretrained_uri=null")
    stages = {s.name: s for s in build_stages(cfg)}
    assert [type(stages[n].config) for n in ("encode", "base", "train", "evaluate", "register")] == [
        EncodeStageConfig, BaseStageConfig, TrainStageConfig, EvaluateStageConfig, RegisterStageConfig,
    ]  # fmt: skip
    assert stages["ingest"].config is cfg.data and stages["clips"].config is cfg.clips
    assert stages["train"].config.train is cfg.train.train  # the validated recipe itself, not a copy
    d = cfg.model_dump(mode="json")
    assert config_data(stages["ingest"].config) == d["data"]
    assert config_data(stages["encode"].config) == {**d["latents"], "clips": d["clips"]}
    assert config_data(stages["base"].config) == {**d["base"], "clips": d["clips"]}
    assert config_data(stages["train"].config) == {**d["train"], "clips": d["clips"]}
    assert config_data(stages["evaluate"].config) == {**d["evaluate"], "vae_uri": "/tmp/vae"}
    assert config_data(stages["register"].config) == {**d["registry"], "rollout": d["evaluate"]["protocol"]["rollout"],
                                                      "vae_uri": "/tmp/vae"}  # fmt: skip
    # a recipe is recorded as the file wrote it (code defaults are not part of the fingerprint)
    assert d["train"]["train"]["optim"] == {"lr": 0.001, "warmup_steps": 20, "schedule": "cosine",
                                            "min_lr_ratio": 0.1, "action_lr_scale": 10.0}  # fmt: skip
    # the VAE reaches the evaluation protocol; without one the evaluate config has no vae_uri key at all
    assert stages["evaluate"].config.eval_protocol.vae_uri == "/tmp/vae"
    plain = stage_configs(_cfg()).evaluate
    assert "vae_uri" not in config_data(plain) and plain.eval_protocol.vae_uri is None
    # the register stage tags the version with its VAE (for v2w-play); a pixel pipeline's has none
    assert stages["register"].config.vae_uri == "/tmp/vae"
    assert "vae_uri" not in config_data(stage_configs(_cfg()).register)
    assert stage_configs(_cfg()).encode is None


def test_stage_configs_survive_rays_pickling_with_the_same_fingerprint() -> None:
    for stage in build_stages(_cfg("latents.vae_uri=/tmp/vae")):
        back = pickle.loads(pickle.dumps(stage.config))
        assert back == stage.config
        assert fingerprint(stage.name, back, []) == fingerprint(stage.name, stage.config, [])


def test_a_changed_section_changes_only_the_stages_that_read_it() -> None:
    def fps(*overrides: str) -> dict[str, str]:
        return {s.name: fingerprint(s.name, s.config, []) for s in build_stages(_cfg(*overrides))}

    base = fps()
    changed = {n for n, fp in fps("evaluate.protocol.rollout.eta=0.5").items() if fp != base[n]}
    assert changed == {"evaluate", "register"}  # register samples with the evaluated rollout settings
    changed = {n for n, fp in fps("clips.stride=4").items() if fp != base[n]}
    assert changed == {"clips", "base", "train"}
    changed = {n for n, fp in fps("train.train.max_steps=7").items() if fp != base[n]}
    assert changed == {"train"}


def test_training_recipes_are_validated_at_load_and_blamed_on_their_override() -> None:
    with pytest.raises(ConfigError, match=r"--set train.train.optim.lr=-1: train.train.optim.lr"):
        _cfg("train.train.optim.lr=-1")
    with pytest.raises(ConfigError, match=r"--set base.train.nosuch=1: base.train.nosuch: unknown key"):
        _cfg("base.train.nosuch=1")
    with pytest.raises(ConfigError, match="ema.enabled is supported for zero_stage <= 2"):
        _cfg("train.train.ema.enabled=true", "train.train.zero_stage=3")
    # the run's identity is no recipe key: the stage fills it in
    with pytest.raises(ConfigError, match="train.train.experiment: unknown key"):
        _cfg("train.train.experiment=mine")
    # a fine-tuning recipe needs no base_uri: the causalize stage provides it
    assert _cfg().train.train.model.base_uri is None


def test_the_stage_completes_its_recipe_into_a_train_config() -> None:
    cfg = _cfg("train.train.model.gradient_checkpointing=true", "train.train.tracking.log_every_n_steps=5",
               "train.train.data.prefetch_batches=3")  # fmt: skip
    sc = stage_configs(cfg).train
    tcfg = train_config(
        sc.train, experiment="train-abc", mode="finetune", output_dir="s3://b/stages/train/abc",
        manifest="s3://b/data/manifest.parquet", clips=sc.clips,
        model={"base_uri": "s3://b/causal", "causal_mode": "masked", "action_space": {"type": "discrete", "dim": 3}},
        tracking={"tracking_uri": "http://mlflow", "experiment_name": "vid2world"}, parent_run_id="parent",
    )  # fmt: skip
    assert isinstance(tcfg, TrainConfig) and isinstance(sc.train, TrainRecipe)
    assert (tcfg.experiment, tcfg.mode, tcfg.storage_path, tcfg.model_export_uri) == (
        "train-abc", "finetune", "s3://b/stages/train/abc/runs", "s3://b/stages/train/abc/model")
    assert tcfg.model.base_uri == "s3://b/causal" and tcfg.model.causal_mode == "masked"
    assert tcfg.model.gradient_checkpointing  # the recipe's own model keys stay
    assert tcfg.data.manifest_uri == "s3://b/data/manifest.parquet" and tcfg.data.prefetch_batches == 3
    assert tcfg.data.clips == cfg.clips.model_dump(mode="json")
    assert (tcfg.tracking.tracking_uri, tcfg.tracking.parent_run_id, tcfg.tracking.experiment) == (
        "http://mlflow", "parent", "vid2world")
    assert tcfg.tracking.log_every_n_steps == 5 and tcfg.tracking.enabled
    assert tcfg.max_steps == 200 and tcfg.optim.schedule == "cosine"  # tiny.yaml's recipe
    untracked = train_config(sc.train, experiment="t", mode="pretrain", output_dir="/tmp/o", manifest="m",
                             clips=sc.clips, model={}, tracking=None, parent_run_id=None)  # fmt: skip
    assert not untracked.tracking.enabled
    with pytest.raises(ConfigError, match="needs model.action_space"):
        train_config(sc.train, experiment="t", mode="finetune", output_dir="/tmp/o", manifest="m",
                     clips=sc.clips, model={"base_uri": "x"}, tracking=None, parent_run_id=None)  # fmt: skip
