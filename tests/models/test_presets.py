"""Every preset keeps full rank from the folded pixels inward (issue 15: a 48→32 conv_in hid a third of
every frame from the network, and the demo model generated noise)."""

from __future__ import annotations

import pytest
import torch

from v2w_core.models.presets import PRESETS, input_rank_problem, tiny_unet3d
from v2w_core.models.world_model import WorldModel
from v2w_core.train.config import TrainConfig
from v2w_core.train.loop import model_config

TINY = [name for name in PRESETS if name.startswith("tiny")]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_wide_enough_for_its_folded_input(name: str) -> None:
    assert input_rank_problem(PRESETS[name]()) is None


@pytest.mark.parametrize("name", TINY)
def test_tiny_presets_input_and_output_maps_have_full_numerical_rank(name: str) -> None:
    """The centre tap of conv_in (folded channels → width) must be injective and conv_out's (width →
    folded channels) surjective, for the weights a fresh model actually holds."""
    torch.manual_seed(0)
    cfg = PRESETS[name]()
    model = WorldModel(cfg)
    folded = cfg.data_channels * cfg.patch_size**2
    w_in = model.unet.conv_in.weight[:, :folded]  # SVD appends conditioning channels after the data
    w_out = model.unet.conv_out.weight
    k_in, k_out = w_in.shape[-1] // 2, w_out.shape[-1] // 2
    assert torch.linalg.matrix_rank(w_in[:, :, k_in, k_in]) == folded
    assert torch.linalg.matrix_rank(w_out[:, :, k_out, k_out]) == folded


def test_the_first_waves_narrow_preset_is_refused_with_the_fix() -> None:
    narrow = tiny_unet3d().model_copy(update={"base": {**tiny_unet3d().base, "block_out_channels": [32, 64]}})
    problem = input_rank_problem(narrow)
    assert problem is not None and "32 < 3 channels × patch 4² = 48" in problem and "≥ 48" in problem
    cfg = TrainConfig.from_dict({"experiment": "t", "storage_path": "/tmp/x",
                                 "model": {"overrides": {"base": {"block_out_channels": [32, 64]}}}})
    with pytest.raises(ValueError, match="lose rank"):
        model_config(cfg)
