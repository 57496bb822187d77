"""``network_output="x0"``: the network's output is read as the clean frame and converted to v inside the
model, so every consumer (losses, samplers, streaming, guidance) still receives v."""

from __future__ import annotations

import torch

from v2w_core.diffusion.schedule import NoiseSchedule
from v2w_core.models.io import load_world_model, save_world_model
from v2w_core.models.presets import tiny_unet3d
from v2w_core.models.world_model import X0_MIN_SIGMA, WorldModel


def _pair() -> tuple[WorldModel, WorldModel]:
    torch.manual_seed(0)
    v_model = WorldModel(tiny_unet3d()).eval()
    with torch.no_grad():  # diffusers zero-initialises conv_out: give the network a non-trivial output
        for p in v_model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x0_model = WorldModel(tiny_unet3d(network_output="x0")).eval()
    x0_model.load_state_dict(v_model.state_dict())
    return v_model, x0_model


def test_x0_output_is_converted_to_the_v_it_implies() -> None:
    v_model, x0_model = _pair()
    schedule = NoiseSchedule()
    x = torch.randn(2, 4, 3, 64, 64)
    t = torch.tensor([[999, 500, 300, 20], [100, 5, 0, 700]])
    with torch.no_grad():
        raw = v_model(x, t)  # the same network, its output taken as is
        v = x0_model(x, t)
    abar = schedule.alphas_cumprod[t][..., None, None, None]
    sigma = (1 - abar).sqrt()
    assert not torch.allclose(v, raw)
    torch.testing.assert_close(v, (abar.sqrt() * x - raw) / sigma.clamp_min(X0_MIN_SIGMA), rtol=1e-4, atol=1e-4)
    # the x0 every sampling step computes from v is the network's output wherever the floor is not hit
    x0_implied = abar.sqrt() * x - sigma * v
    ok = (sigma >= X0_MIN_SIGMA).expand_as(x0_implied)
    torch.testing.assert_close(x0_implied[ok], raw[ok], rtol=1e-4, atol=1e-4)


def test_network_output_survives_save_and_load(tmp_path) -> None:
    _, x0_model = _pair()
    save_world_model(x0_model, str(tmp_path / "m"))
    loaded = load_world_model(str(tmp_path / "m")).eval()
    assert loaded.config.network_output == "x0"
    x, t = torch.randn(1, 2, 3, 64, 64), torch.tensor([[300, 40]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), x0_model(x, t))


def test_causalized_x0_model_streams_like_its_full_forward() -> None:
    from v2w_core.models.causalize import causalize

    _, x0_model = _pair()
    model = causalize(x0_model, "extrapolative").eval()
    assert model.config.network_output == "x0"
    x, t = torch.randn(1, 4, 3, 64, 64), torch.tensor([[0, 0, 0, 400]])
    with torch.no_grad():
        full = model(x, t)[:, -1:]
        cache = model.encode_history(x[:, :-1], t[:, :-1])
        newest = model.step_newest(x[:, -1:], t[:, -1:], None, None, cache)
    torch.testing.assert_close(newest, full, rtol=1e-4, atol=1e-4)
