"""Action encoder, alignment and per-frame dropout (DESIGN §1.3)."""

from __future__ import annotations

import pytest
import torch

from v2w_core.models.actions import ActionEncoder, ActionSpec, align_actions, sample_action_keep_mask


def test_align_actions_shifts_by_one_and_masks_frame_zero() -> None:
    recorded = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    aligned, mask = align_actions(recorded)
    torch.testing.assert_close(aligned[:, 1:], recorded[:, :-1])
    torch.testing.assert_close(aligned[:, 0], torch.zeros(2, 3))
    assert mask.dtype == torch.bool and mask.shape == (2, 4)
    assert not mask[:, 0].any() and mask[:, 1:].all()
    ids, id_mask = align_actions(torch.tensor([[4, 5, 6]]))
    assert ids.tolist() == [[0, 4, 5]] and id_mask.tolist() == [[False, True, True]]
    with pytest.raises(ValueError, match=r"\(B, T"):
        align_actions(torch.zeros(3))


def test_drop_frequency_is_p_drop() -> None:
    g = torch.Generator().manual_seed(0)
    keep = sample_action_keep_mask((400, 16), p_drop=0.2, generator=g)
    assert keep.dtype == torch.bool and keep.shape == (400, 16)
    assert abs((~keep).float().mean().item() - 0.2) < 0.015
    # independent per frame: a frame's drop does not predict its neighbour's
    a, b = (~keep[:, :-1]).float(), (~keep[:, 1:]).float()
    assert abs((a * b).mean().item() - a.mean().item() * b.mean().item()) < 0.015
    again = sample_action_keep_mask((400, 16), p_drop=0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep, again)
    assert (
        sample_action_keep_mask((3, 3), p_drop=0.0).all() and not sample_action_keep_mask((3, 3), 1.0).any()
    )
    with pytest.raises(ValueError, match="p_drop"):
        sample_action_keep_mask((2, 2), p_drop=1.5)


@pytest.mark.parametrize(
    ("spec", "actions"),
    [
        (ActionSpec(type="continuous", dim=3), torch.randn(2, 5, 3)),
        (ActionSpec(type="discrete", dim=7), torch.randint(0, 7, (2, 5))),
        (ActionSpec(type="multi_hot", dim=4), torch.randint(0, 2, (2, 5, 4)).bool()),
    ],
)
def test_encoder_per_frame_with_null(spec: ActionSpec, actions: torch.Tensor) -> None:
    torch.manual_seed(0)
    enc = ActionEncoder(spec, embed_dim=16, hidden_dims=(8, 12))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 0] = False
    emb = enc(actions, mask, 2, 5)
    assert emb.shape == (2, 5, 16)
    torch.testing.assert_close(emb[:, 0], enc.null_embedding.expand(2, 16))
    assert not torch.allclose(emb[:, 1], enc.null_embedding.expand(2, 16))
    # frame-local: changing frame 3's action changes frame 3 only
    other = actions.clone()
    other[:, 3] = (
        (other[:, 3] + 1) % spec.dim
        if spec.type == "discrete"
        else ~other[:, 3].bool()
        if spec.type == "multi_hot"
        else other[:, 3] + 1
    )
    emb2 = enc(other.to(actions.dtype), mask, 2, 5)
    torch.testing.assert_close(emb[:, [0, 1, 2, 4]], emb2[:, [0, 1, 2, 4]])
    assert not torch.allclose(emb[:, 3], emb2[:, 3])
    torch.testing.assert_close(enc(None, None, 2, 5), enc.null_embedding.expand(2, 5, 16))


def test_encoder_starts_as_null() -> None:
    enc = ActionEncoder(ActionSpec(type="continuous", dim=3), embed_dim=16, hidden_dims=(8, 12))
    torch.testing.assert_close(enc(torch.randn(1, 4, 3), None, 1, 4), torch.zeros(1, 4, 16))


def test_encoder_rejects_wrong_dtypes_and_ranges() -> None:
    cont = ActionEncoder(ActionSpec(type="continuous", dim=3), 16, (8, 12))
    with pytest.raises(ValueError, match="floating"):
        cont(torch.zeros(1, 4, 3, dtype=torch.long), None, 1, 4)
    disc = ActionEncoder(ActionSpec(type="discrete", dim=5), 16, (8, 12))
    with pytest.raises(ValueError, match="integer"):
        disc(torch.zeros(1, 4), None, 1, 4)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        disc(torch.tensor([[0, 1, 5, 2]]), None, 1, 4)
    mask = torch.tensor([[True, True, False, True]])
    disc(torch.tensor([[0, 1, -1, 2]]), mask, 1, 4)  # a placeholder id on a masked frame is fine
    with pytest.raises(ValueError, match=r"\(B, F\)"):
        disc(torch.zeros(1, 4, 5, dtype=torch.long), None, 1, 4)


def test_action_spec_from_space() -> None:
    class Space:
        type = "discrete"
        dim = 9
        names = ("a",)

    assert ActionSpec.from_space(Space()) == ActionSpec(type="discrete", dim=9)
    assert ActionSpec.from_space({"type": "multi_hot", "dim": 3, "names": None}).type == "multi_hot"
    with pytest.raises(ValueError, match="type"):
        ActionSpec.from_space({"type": "analog", "dim": 3})
