"""Single-process training (no Ray): the loop the GPU experiments and the shipped base use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2w_core.models.testing import tiny_world_model
from v2w_core.train.config import TrainConfig
from v2w_core.train.deepspeed_config import build_deepspeed_config, param_groups
from v2w_core.train.local import ClipArrays, lr_factor, train_local

SMALL = {"base": {"block_out_channels": [48, 48], "norm_num_groups": 8}, "sample_size": [32, 32]}


def _cfg(**kw: object) -> TrainConfig:
    data = {"experiment": "t", "storage_path": "/tmp/x", "model": {"overrides": SMALL},
            "micro_batch_per_worker": 2, "max_steps": 6, "optim": {"lr": 1e-3, "warmup_steps": 2}}
    data.update(kw)
    return TrainConfig.from_dict(data)


def _clips(n: int = 4, frames: int = 4, seed: int = 0) -> ClipArrays:
    rng = np.random.default_rng(seed)
    # a smooth moving gradient, so the clips are learnable
    x = np.linspace(0, 1, 32)
    out = np.empty((n, frames, 32, 32, 3), np.uint8)
    for i in range(n):
        for f in range(frames):
            phase = rng.uniform() + 0.1 * f
            img = 0.5 + 0.5 * np.sin(2 * np.pi * (x[None, :] + x[:, None] + phase))
            out[i, f] = (img[..., None] * np.array([255, 128, 64])).astype(np.uint8)
    actions = rng.integers(0, 2, size=(n, frames, 3)).astype(np.float32)
    return ClipArrays(out, actions)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_matches_deepspeeds_scheduler(schedule: str) -> None:
    """lr_factor reproduces DeepSpeed's own WarmupLR / WarmupCosineLR on the config we hand DeepSpeed."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR, WarmupLR

    cfg = _cfg(max_steps=40, optim={"lr": 1e-3, "warmup_steps": 5, "schedule": schedule, "min_lr_ratio": 0.1})
    sched = build_deepspeed_config(cfg)["scheduler"]
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ds = (WarmupCosineLR if schedule == "cosine" else WarmupLR)(opt, **sched["params"])
    ours, theirs = [], []
    for step in range(40):
        theirs.append(opt.param_groups[0]["lr"])
        ours.append(1e-3 * lr_factor(step, cfg))
        opt.step()
        ds.step()
    # DeepSpeed's first two steps run at lr 0 (its ramp starts two steps later); after the warm-up they agree.
    np.testing.assert_allclose(ours[6:], theirs[6:], rtol=1e-6, atol=1e-9)
    assert theirs[2:6] == pytest.approx(ours[0:4])  # the same linear ramp, two steps later
    if schedule == "cosine":
        assert theirs[-1] < 0.2e-3 and ours[-1] < 0.2e-3


def test_action_encoder_gets_its_own_learning_rate_in_both_loops() -> None:
    model = tiny_world_model(action_space={"type": "multi_hot", "dim": 3})
    cfg = _cfg(mode="finetune", model={"base_uri": "x", "action_space": {"type": "multi_hot", "dim": 3}},
               optim={"lr": 1e-4, "action_lr_scale": 10.0})
    groups = param_groups(model, cfg)
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(1e-3)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.action_encoder.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert build_deepspeed_config(cfg)["scheduler"]["params"]["warmup_max_lr"] == [1e-4, pytest.approx(1e-3)]
    pre = _cfg(optim={"lr": 1e-4, "action_lr_scale": 10.0})  # pretraining: no encoder, one group
    assert len(param_groups(tiny_world_model(action_space=None), pre)) == 1
    assert build_deepspeed_config(pre)["scheduler"]["params"]["warmup_max_lr"] == 1e-4


def test_pretraining_lowers_the_loss_and_resumes_from_its_checkpoint(tmp_path) -> None:
    from v2w_core.diffusion.losses import bidirectional_pretrain_loss
    from v2w_core.diffusion.schedule import NoiseSchedule
    from v2w_core.train.local import random_batches
    from v2w_core.train.loop import build_model

    clips = _clips()
    cfg = _cfg(max_steps=30, optim={"lr": 2e-3, "warmup_steps": 2}, ema={"enabled": True, "decay": 0.9})
    x0 = next(random_batches(clips, 4, torch.device("cpu"), seed=0))[0]
    g = torch.Generator().manual_seed(1)
    t, noise = torch.randint(0, 1000, (4,), generator=g), torch.randn(x0.shape, generator=g)

    def probe(model) -> float:  # fixed noise and timesteps: a noise-free progress signal
        with torch.no_grad():
            return float(bidirectional_pretrain_loss(model, x0, NoiseSchedule(), timesteps=t, noise=noise)[0])

    torch.manual_seed(cfg.seed)
    before = probe(build_model(cfg).eval())
    seen: list[int] = []
    run = train_local(cfg, clips, checkpoint_dir=tmp_path / "ck", checkpoint_every=10,
                      callback=lambda step, model: seen.append(step), callback_every=10, log_every=0)
    assert run.step == 30 and seen == [10, 20, 30]
    assert probe(run.model) < 0.7 * before
    assert (tmp_path / "ck" / "state.json").exists()
    # a longer run resumes at step 30 instead of starting again
    resumed = train_local(_cfg(max_steps=32, optim={"lr": 2e-3, "warmup_steps": 2},
                               ema={"enabled": True, "decay": 0.9}),
                          clips, checkpoint_dir=tmp_path / "ck", checkpoint_every=10, log_every=0)
    assert resumed.step == 32 and len(resumed.losses) == 32
    assert resumed.losses[:30] == run.losses


def test_finetune_needs_actions_and_time_budget_stops_early(tmp_path) -> None:
    from v2w_core.models.presets import tiny_unet3d

    model = tiny_world_model(action_space={"type": "multi_hot", "dim": 3}, causal_mode="extrapolative",
                             base={**tiny_unet3d().base, **SMALL["base"]}, sample_size=(32, 32))
    cfg = _cfg(mode="finetune", model={"base_uri": "x", "action_space": {"type": "multi_hot", "dim": 3}},
               max_steps=1000)
    with pytest.raises(ValueError, match="needs clips with actions"):
        train_local(cfg, ClipArrays(_clips().frames), model=model)
    run = train_local(cfg, _clips(), model=model, time_budget_s=0.0, checkpoint_dir=tmp_path / "ck", log_every=0)
    assert run.step == 1 and (tmp_path / "ck" / "state.json").exists()


def test_ema_warms_up_instead_of_keeping_the_initial_weights() -> None:
    """A fixed 0.999 decay keeps 0.999^n of the initial weights (9.5 % after 100 steps); the warm-up
    forgets them, and its update count survives a state-dict round trip (resume)."""
    from v2w_core.train.loop import Ema

    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    ema = Ema(layer, 0.999)
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(1.0)
    for _ in range(100):
        ema.update(layer)
    assert min(float(v.min()) for v in ema.shadow.values()) > 0.99
    again = Ema(layer, 0.999)
    again.load_state_dict(ema.state_dict())
    assert again.num_updates == 100 and again.current_decay() == pytest.approx(101 / 110)
