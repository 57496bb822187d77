"""Tiny real world models and eval data sets for the eval tests (no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.shards import ShardWriterConfig, write_episodes
from v2w_core.eval.config import EvalConfig
from v2w_core.models.io import save_world_model
from v2w_core.models.testing import tiny_world_model
from v2w_core.models.world_model import WorldModel

SIZE = 32
ACTION_DIM = 2


def make_model(seed: int = 0, action_strength: float = 0.5) -> WorldModel:
    """Causal tiny model (the perturbed tiny preset, :func:`~v2w_core.models.testing.tiny_world_model`).
    ``action_strength`` > 0 gives the action head random weights of that scale so actions steer the
    rollouts; 0 zeroes it, a model that ignores its actions."""
    return tiny_world_model(
        "unet3d",
        seed,
        action_space={"type": "continuous", "dim": ACTION_DIM},
        causal_mode="extrapolative",
        weight_std=0.02,
        action_head_std=action_strength,
        sample_size=(SIZE, SIZE),
    )


def save_model(path: Path | str, seed: int = 0, action_strength: float = 0.5) -> str:
    save_world_model(make_model(seed, action_strength), str(path))
    return str(path)


def save_saturating_model(path: Path | str, seed: int = 0) -> str:
    """A degenerate model (the issue's "saturated RGB noise"): its output conv scaled by 1000, so nearly
    every generated value ends clamped at ±1."""
    model = make_model(seed)
    with torch.no_grad():
        model.unet.conv_out.weight.mul_(1e3)
        model.unet.conv_out.bias.mul_(1e3)
    save_world_model(model, str(path))
    return str(path)


def make_episode(i: int, length: int = 8) -> Episode:
    """A block moving by its (continuous) actions over a smooth background: actions explain the motion."""
    rng = np.random.default_rng(100 + i)
    actions = rng.uniform(-1, 1, size=(length, ACTION_DIM)).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    pos = np.array([12.0, 12.0])
    frames = np.empty((length, SIZE, SIZE, 3), np.uint8)
    for t in range(length):
        for c in range(3):
            frames[t, ..., c] = np.clip(128 + 60 * np.sin(0.2 * xx + 0.15 * yy + c + 0.3 * i), 0, 255)
        y, x = int(pos[0]), int(pos[1])
        frames[t, y : y + 6, x : x + 6] = (230, 40, 40)
        pos = np.clip(pos + 3 * actions[t], 0, SIZE - 6)
    return Episode(
        episode_id=f"ep{i:03d}",
        frames=frames,
        actions=actions,
        action_space=ActionSpace(type="continuous", dim=ACTION_DIM),
        domain="robot",
        source="eval-test",
        fps=4.0,
    )


def write_dataset(root: str, n: int = 3, length: int = 8) -> str:
    """``n`` episodes, all in the eval split, lossless; returns the manifest URI."""
    cfg = ShardWriterConfig.from_dict({"codec": {"name": "h264-lossless"}, "eval_fraction": 1.0})
    write_episodes([make_episode(i, length) for i in range(n)], root, cfg)
    return root.rstrip("/") + "/manifest.parquet"


def eval_config(**overrides) -> EvalConfig:
    """A fast protocol: 2 context frames, 3 generated, 4 DDIM steps, guidance on."""
    data = {
        "context_frames": 2,
        "horizon": 3,
        "rollout": {"num_inference_steps": 4, "window": 8, "guidance_scale": 2.5},
        "num_videos": 2,
        **overrides,
    }
    return EvalConfig.from_dict(data)


def save_conv_net(path: Path | str, dims: int, seed: int = 0, arch: str | None = None) -> str:
    """A random-weight conv feature network as safetensors: PLUMBING ONLY, not a real FID/FVD network."""
    g = torch.Generator().manual_seed(seed)
    k = (3,) * dims
    chans = [(3, 8), (8, 16)]
    state = {}
    for i, (cin, cout) in enumerate(chans):
        state[f"layers.{i}.weight"] = torch.randn(cout, cin, *k, generator=g) * 0.3
        state[f"layers.{i}.bias"] = torch.randn(cout, generator=g) * 0.1
    arch = arch or ("conv2d_pool" if dims == 2 else "conv3d_pool")
    save_file(state, str(path), metadata={"v2w_arch": arch, "note": "random weights: plumbing test"})
    return str(path)


def save_lpips_net(path: Path | str, seed: int = 0) -> str:
    """Random-weight LPIPS-AlexNet as safetensors (PLUMBING ONLY: real LPIPS needs the trained weights)."""
    from v2w_core.eval.nets.lpips import Lpips

    torch.manual_seed(seed)
    net = Lpips("alex")
    with torch.no_grad():
        for i in range(5):
            getattr(net, f"lin{i}").model[1].weight.abs_()  # LPIPS heads are non-negative
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"v2w_arch": "lpips_alexnet", "note": "random weights: plumbing test"})  # fmt: skip
    return str(path)
