"""DeepSpeed config builder and TrainConfig validation (fast, no services)."""

from __future__ import annotations

import pytest

from v2w_core.config import ConfigError
from v2w_core.train.config import TrainConfig
from v2w_core.train.deepspeed_config import build_deepspeed_config


def _cfg(**kw: object) -> TrainConfig:
    return TrainConfig.from_dict({"experiment": "t", "storage_path": "/tmp/x", **kw})


def test_zero2_bf16_config_matches_train_config() -> None:
    cfg = _cfg(
        zero_stage=2, precision="bf16", micro_batch_per_worker=3, grad_accum_steps=4, optim={"lr": 2e-5}
    )
    ds = build_deepspeed_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 3 * 4 * 4
    assert ds["gradient_clipping"] == 0.5  # the paper's clip is the default
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["data_types"]["grad_accum_dtype"] == "fp32"
    assert ds["scheduler"]["type"] == "WarmupLR"
    assert ds["scheduler"]["params"]["warmup_max_lr"] == 2e-5
    assert "optimizer" not in ds  # torch AdamW is passed in: no DeepSpeed op build on CPU


def test_zero3_fp32_and_deepspeed_optimizer() -> None:
    cfg = _cfg(zero_stage=3, precision="fp32", optim={"implementation": "deepspeed", "lr": 1e-3})
    ds = build_deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == 3
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == 1e-3
    assert ds["train_batch_size"] == cfg.global_batch


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"zero_stage": 4}, "zero_stage"),
        ({"optim": {"lrr": 1}}, "optim.lrr"),
        ({"bogus": 1}, "bogus"),
        ({"precision": "fp8"}, "precision"),
        ({"mode": "finetune"}, "base_uri"),
        ({"ema": {"enabled": True}, "zero_stage": 3}, "ZeRO-3"),
        ({"precision": "fp16"}, "fp16 needs a GPU"),
        ({"checkpoint": {"keep": 1}}, "checkpoint.keep"),
    ],
)
def test_bad_configs_fail_fast_naming_the_key(override: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _cfg(**override)


def test_yaml_with_overrides(tmp_path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("experiment: e\nstorage_path: s3://v2w/runs\nzero_stage: 2\n")
    cfg = TrainConfig.from_yaml(path, ["zero_stage=3", "optim.lr=1e-5", "scaling.num_workers=4"])
    assert (cfg.zero_stage, cfg.optim.lr, cfg.scaling.num_workers) == (3, 1e-5, 4)
    assert cfg.run_dir == "s3://v2w/runs/e"
    assert cfg.model_export_uri == "s3://v2w/runs/e/model"
