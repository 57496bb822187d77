"""Weight transfer of temporal convolutions (DESIGN §1.1): exact numbers and the exactness property."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from v2w_core.config import CAUSAL_MODES
from v2w_core.models.causal_layers import CausalTemporalConv, FrameGroupNorm
from v2w_core.models.streaming import StreamState
from v2w_core.models.weight_transfer import extrapolation_coefficients, transfer_temporal_weight


def _kernel(*taps: float) -> torch.Tensor:
    return torch.tensor(taps, dtype=torch.float64).reshape(1, 1, len(taps), 1, 1)


def _taps(w: torch.Tensor) -> list[float]:
    return w.reshape(-1).tolist()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # original taps w₋₁=2, w₀=3, w₊₁=5 at (t-1, t, t+1); causal taps at (t-2, t-1, t)
        ("shift", [2.0, 3.0, 5.0]),
        ("masked", [0.0, 2.0, 3.0]),
        ("extrapolative", [0.0, 2.0 - 5.0, 3.0 + 2 * 5.0]),
    ],
)
def test_k3_transfer_all_modes(mode: str, expected: list[float]) -> None:
    assert _taps(transfer_temporal_weight(_kernel(2.0, 3.0, 5.0), mode, 2)) == expected


def test_k3_transfer_keeps_channels_independent() -> None:
    w = torch.randn(4, 3, 3, 1, 1, dtype=torch.float64)
    out = transfer_temporal_weight(w, "extrapolative", 2)
    torch.testing.assert_close(out[:, :, 0], torch.zeros_like(out[:, :, 0]))
    torch.testing.assert_close(out[:, :, 1], w[:, :, 0] - w[:, :, 2])
    torch.testing.assert_close(out[:, :, 2], w[:, :, 1] + 2 * w[:, :, 2])


def test_gamma_hand_computed() -> None:
    # p = 2: τ = (-1, 0), μ = -1/2, S = 1/2 -> γ_i = (-i, 1 + i)
    torch.testing.assert_close(
        extrapolation_coefficients(2, 2), torch.tensor([[-1.0, 2.0], [-2.0, 3.0]], dtype=torch.float64)
    )
    # p = 3: τ = (-2, -1, 0), μ = -1, S = 2 -> γ_{i,j} = 1/3 + (i + 1)(τ_j + 1)/2
    expected = torch.tensor([[-2 / 3, 1 / 3, 4 / 3], [-7 / 6, 1 / 3, 11 / 6]], dtype=torch.float64)
    torch.testing.assert_close(extrapolation_coefficients(2, 3), expected)
    # p = 1 holds the last frame
    torch.testing.assert_close(extrapolation_coefficients(2, 1), torch.ones(2, 1, dtype=torch.float64))


def test_k5_extrapolative_hand_computed() -> None:
    a, b, c, d, e = 1.0, 2.0, 3.0, 5.0, 7.0  # w₋₂ .. w₊₂
    # p = 2: x_{t+1} = 2x_t - x_{t-1}, x_{t+2} = 3x_t - 2x_{t-1}
    got = _taps(transfer_temporal_weight(_kernel(a, b, c, d, e), "extrapolative", 2))
    assert got == pytest.approx([0.0, 0.0, a, b - d - 2 * e, c + 2 * d + 3 * e])
    # p = 3: γ from test_gamma_hand_computed
    got = _taps(transfer_temporal_weight(_kernel(a, b, c, d, e), "extrapolative", 3))
    expected = [0.0, 0.0, a - 2 / 3 * d - 7 / 6 * e, b + d / 3 + e / 3, c + 4 / 3 * d + 11 / 6 * e]
    assert got == pytest.approx(expected)
    # a window longer than the kernel lengthens the causal kernel
    assert transfer_temporal_weight(_kernel(a, b, c), "extrapolative", 4).shape[2] == 4


def test_k5_shift_and_masked() -> None:
    w = _kernel(1.0, 2.0, 3.0, 5.0, 7.0)
    assert _taps(transfer_temporal_weight(w, "shift", 2)) == [1.0, 2.0, 3.0, 5.0, 7.0]
    assert _taps(transfer_temporal_weight(w, "masked", 2)) == [0.0, 0.0, 1.0, 2.0, 3.0]


def test_unknown_mode_and_bad_window() -> None:
    with pytest.raises(ValueError, match="unknown causal mode 'sideways'"):
        transfer_temporal_weight(_kernel(1.0, 2.0, 3.0), "sideways")
    with pytest.raises(ValueError, match="extrapolation_window"):
        extrapolation_coefficients(1, 0)


@pytest.mark.parametrize(("k", "p"), [(3, 2), (3, 3), (5, 2), (5, 3), (5, 6)])
def test_extrapolative_exact_on_linear_input(k: int, p: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 6, (k, 1, 1), padding=((k - 1) // 2, 0, 0)).double()
    causal = CausalTemporalConv.from_conv(conv, "extrapolative", p, StreamState(), "test")
    frames = 12
    t = torch.arange(frames, dtype=torch.float64)[None, None, :, None, None]
    x = torch.randn(2, 4, 1, 3, 3, dtype=torch.float64) + torch.randn(2, 4, 1, 3, 3, dtype=torch.float64) * t
    full, out = conv(x), causal(x)
    length = causal.kernel_size[0]
    m = (k - 1) // 2
    # away from the left edge (causal padding) and the right edge (the original conv's padding)
    torch.testing.assert_close(out[:, :, length - 1 : frames - m], full[:, :, length - 1 : frames - m])
    # masked mode is not exact on linear input (sanity: the test can fail)
    masked = CausalTemporalConv.from_conv(conv, "masked", p, StreamState(), "test")(x)
    assert not torch.allclose(masked[:, :, length - 1 : frames - m], full[:, :, length - 1 : frames - m])


@pytest.mark.parametrize("mode", CAUSAL_MODES)
def test_causal_conv_ignores_future(mode: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 3, (3, 1, 1), padding=(1, 0, 0))
    causal = CausalTemporalConv.from_conv(conv, mode, 2, StreamState(), "test")
    x = torch.randn(1, 3, 8, 2, 2)
    y = x.clone()
    y[:, :, 5:] = torch.randn_like(y[:, :, 5:])
    torch.testing.assert_close(causal(x)[:, :, :5], causal(y)[:, :, :5], rtol=0, atol=0)
    assert not torch.allclose(conv(x)[:, :, :5], conv(y)[:, :, :5])  # the bidirectional one leaks
    assert causal.weight.shape == conv.weight.shape and causal.bias is not None
    torch.testing.assert_close(causal.bias, conv.bias)


def test_frame_group_norm_is_per_frame() -> None:
    torch.manual_seed(0)
    gn = nn.GroupNorm(4, 8)
    nn.init.normal_(gn.weight)
    nn.init.normal_(gn.bias)
    fgn = FrameGroupNorm.from_group_norm(gn)
    assert fgn.weight is gn.weight and set(fgn.state_dict()) == set(gn.state_dict())
    x = torch.randn(2, 8, 5, 3, 3)
    per_frame = torch.stack([gn(x[:, :, f]) for f in range(5)], dim=2)
    torch.testing.assert_close(fgn(x), per_frame)
    assert not torch.allclose(gn(x), per_frame)  # diffusers' 5-D GroupNorm mixes frames
    torch.testing.assert_close(fgn(x[:, :, 0]), gn(x[:, :, 0]))  # 4-D input: unchanged


def test_the_former_homes_of_the_causal_core_still_export_it() -> None:
    """causalize.py held the weight transfer, the layers and the attention kernels before they were split
    out; code importing them from there keeps working."""
    import importlib

    from v2w_core.models import attention_kernels, causal_layers, weight_transfer

    causalize = importlib.import_module("v2w_core.models.causalize")  # the package exports the function

    assert causalize.transfer_temporal_weight is weight_transfer.transfer_temporal_weight
    assert causalize.extrapolation_coefficients is weight_transfer.extrapolation_coefficients
    assert causalize.CAUSAL_MODES == weight_transfer.CAUSAL_MODES == ("shift", "masked", "extrapolative")
    assert causalize.check_mode is weight_transfer.check_causal_mode
    assert causalize.CausalTemporalConv is causal_layers.CausalTemporalConv
    assert causalize.CausalTemporalAttnProcessor is causal_layers.CausalTemporalAttnProcessor
    assert causalize._few_query_attention is attention_kernels.few_query_attention
    assert causalize.RowChunkedAttnProcessor is attention_kernels.RowChunkedAttnProcessor
