"""Save/load: diffusers-style directories, safetensors only, local and s3://."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet3DConditionModel, UNetSpatioTemporalConditionModel

from tests.models.conftest import clip, make_model
from v2w_core.models.causalize import CausalTemporalConv, causalize
from v2w_core.models.io import load_base, load_world_model, save_world_model
from v2w_core.models.presets import tiny_svd, tiny_unet3d
from v2w_core.models.testing import perturb_


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("mode", [None, "extrapolative"])
def test_round_trip_is_bit_exact(tmp_path: Path, family: str, mode: str | None) -> None:
    model = make_model(family)
    if mode:
        causalize(model, mode, extrapolation_window=3)
    save_world_model(model, str(tmp_path / "wm"))
    files = sorted(p.name for p in (tmp_path / "wm").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    config = json.loads((tmp_path / "wm" / "config.json").read_text())
    assert config["family"] == family and config["causal_mode"] == (mode or "none")
    assert config["action_space"] == {"type": "continuous", "dim": 4}

    loaded = load_world_model(str(tmp_path / "wm")).eval()
    assert loaded.config == model.config
    _assert_same(model, loaded)
    assert any(isinstance(m, CausalTemporalConv) for m in loaded.modules()) == bool(mode)
    b = clip()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b), model(**b), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("cls", "preset"), [(UNet3DConditionModel, tiny_unet3d), (UNetSpatioTemporalConditionModel, tiny_svd)]
)
def test_plain_diffusers_checkpoint_loads_as_base(tmp_path: Path, cls: type, preset) -> None:
    torch.manual_seed(0)
    unet = perturb_(cls(**{**preset().base, "sample_size": 24}))  # zero conv4s would hide temporal convs
    unet.save_pretrained(tmp_path / "unet")  # safetensors by default
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    model = load_base(str(tmp_path / "unet"), data_channels=48, action_space={"type": "discrete", "dim": 3})
    assert not model.is_causal and model.config.action_space is not None
    assert model.config.sample_size == (24, 24)  # the base's own size, not the generic default
    _assert_same(unet, model.unet)
    # wrapping keeps the base's function: a clip with one shared timestep matches diffusers' own forward
    x = torch.randn(1, 4, 48, 8, 8)
    t = torch.full((1, 4), 321)
    with torch.no_grad():
        ours = model.eval()(x, t)
        unet.eval()  # UNet3D's temporal convs have dropout 0.1 (invisible while conv4 was zero)
        if cls is UNet3DConditionModel:
            ref = unet(x.transpose(1, 2), 321, encoder_hidden_states=model._context(1)).sample.transpose(1, 2)
        else:
            ids = model.added_time_ids[None]
            ref = unet(x, 321, encoder_hidden_states=model._context(1), added_time_ids=ids).sample
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_load_rejects_pickles_and_foreign_dirs(tmp_path: Path) -> None:
    unet = UNet3DConditionModel(**tiny_unet3d().base)
    unet.save_pretrained(tmp_path / "bin", safe_serialization=False)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_base(str(tmp_path / "bin"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="not a supported base"):
        load_base(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="not a saved WorldModel"):
        load_world_model(str(tmp_path / "other"))


@pytest.mark.slow
def test_round_trip_through_s3(s3_prefix: str) -> None:
    model = causalize(make_model("unet3d"), "shift")
    uri = f"{s3_prefix.rstrip('/')}/models/wm"
    save_world_model(model, uri)
    loaded = load_world_model(uri)
    assert loaded.config.causal_mode == "shift"
    _assert_same(model, loaded)
