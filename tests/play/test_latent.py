"""Latent-space models play through their VAE: the context is encoded once, every generated latent is
decoded for the page, and a session's steps equal the evaluation's offline rollout (encode → streaming
rollout → decode). Paper-size models are latent, so this is what a GPU play server runs.

A latent model without a VAE, an RGB model given one, and a VAE of the wrong latent width are one-line
errors before anything is served."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.play.conftest import BUTTONS
from v2w_core.data.clips import normalize_frames, to_uint8
from v2w_core.diffusion.rollout import RolloutConfig, rollout
from v2w_core.models.vae import LatentCodec
from v2w_core.play.cli import main
from v2w_core.play.episodes import Context
from v2w_core.play.errors import PlayError
from v2w_core.play.session import PlaySession
from v2w_core.play.source import resolve_source
from v2w_core.tracking.models import load_model


@pytest.fixture(scope="module")
def latent_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal world model of 4×16×16 latents (the tiny VAE's ×4 of 64×64 frames), 3 buttons."""
    from v2w_core.models.io import save_world_model
    from v2w_core.models.presets import tiny_unet3d_latent
    from v2w_core.models.testing import tiny_world_model

    shape = tiny_unet3d_latent().model_dump(include={"base", "data_channels", "patch_size", "sample_size"})
    model = tiny_world_model(action_space={"type": "multi_hot", "dim": len(BUTTONS)}, causal_mode="extrapolative",
                             action_head_std=1.0, **shape)  # fmt: skip
    path = tmp_path_factory.mktemp("latent-model") / "model"
    save_world_model(model, str(path))
    return path


def _context(k: int = 3) -> Context:
    rng = np.random.default_rng(0)
    return Context("ctx", rng.integers(0, 256, (k, 64, 64, 3), dtype=np.uint8),
                   rng.integers(0, 2, (k, 3)).astype(np.float32))  # fmt: skip


def test_latent_steps_equal_the_offline_rollout(latent_model_dir: Path, tiny_vae_dir: Path) -> None:
    model = load_model(str(latent_model_dir)).eval()
    codec = LatentCodec.load(str(tiny_vae_dir))
    cfg = RolloutConfig(num_inference_steps=2, window=4)
    ctx = _context()
    keys = np.random.default_rng(1).integers(0, 2, (5, 3)).astype(np.float32)
    session = PlaySession(ctx, window=cfg.window, seed=7, codec=codec)
    stepped = np.stack([session.step(model, a, cfg) for a in keys])
    assert stepped.shape == (5, 64, 64, 3) and stepped.dtype == np.uint8

    latents = codec.encode(normalize_frames(torch.from_numpy(ctx.frames).permute(0, 3, 1, 2)))[None]
    actions = torch.from_numpy(np.concatenate([ctx.actions[:2], keys]))[None]
    out = rollout(model, latents, actions, len(keys), cfg, generator=torch.Generator().manual_seed(7))[0]
    offline = to_uint8(codec.decode(out).numpy())
    diff = np.abs(stepped.astype(int) - offline.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    # the window holds latents, not pixels
    assert tuple(session._frames[-1].shape) == (4, 16, 16)


def test_engine_serves_decoded_frames(latent_model_dir: Path, tiny_vae_dir: Path, play_manifest: str) -> None:
    from v2w_core.play.engine import PlayEngine, PlaySettings

    engine = PlayEngine(PlaySettings(model_dir=str(latent_model_dir), vae_uri=str(tiny_vae_dir),
                                     eval_manifest=play_manifest, steps=2, context_frames=4, device="cpu"))  # fmt: skip
    info = engine.info()
    assert info["frame"] == {"height": 64, "width": 64}
    assert info["contexts"][0] == "held-out-0"  # the 64×64 held-out episodes match the decoded frame size
    session = engine.new_session(json.dumps({"context": "held-out-0", "seed": 1}).encode())
    frames = []
    for key in ([1, 0, 0], [0, 1, 0]):
        engine.reset(session["session"])
        reply = engine.step(session["session"], json.dumps({"action": key}).encode())
        png = base64.b64decode(reply["frame"].split(",", 1)[1])
        frames.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int))
    assert frames[0].shape == (64, 64, 3)
    assert np.abs(frames[0] - frames[1]).mean() > 1.0  # same seed and context, other button


def test_latent_inputs_are_checked_before_serving(latent_model_dir: Path, tiny_vae_dir: Path,
                                                  play_model_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with pytest.raises(PlayError, match=r"makes 4-channel latents.*--vae"):
        resolve_source(str(latent_model_dir))
    with pytest.raises(PlayError, match="makes RGB frames: it needs no VAE"):
        resolve_source(str(play_model_dir), vae=str(tiny_vae_dir))
    with pytest.raises(PlayError, match="cannot read the VAE's"):
        resolve_source(str(latent_model_dir), vae=str(tmp_path / "no-vae"))
    wide = tmp_path / "wide-vae"
    wide.mkdir()
    raw = json.loads((tiny_vae_dir / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**raw, "latent_channels": 8}))
    with pytest.raises(PlayError, match="makes 8-channel latents, the model 4"):
        resolve_source(str(latent_model_dir), vae=str(wide))
    assert resolve_source(str(latent_model_dir), vae=str(tiny_vae_dir)).vae_uri == str(tiny_vae_dir)
    # the CLI: one line, exit 2, before Ray
    assert main(["--model", str(latent_model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("v2w-play: error:") and "--vae" in err and "\n" not in err
