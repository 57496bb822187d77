"""Per-frame action conditioning (Vid2World §1.3).

An action becomes a vector in the UNet's time-embedding space and is *added* to that frame's timestep
embedding, so every frame carries its own (noise level, action) pair and the pretrained blocks need no
new inputs. Frames whose action is dropped (classifier-free training, frame 0, the unconditional guidance
branch) get a learned null embedding instead.

Alignment convention: recorded ``actions[t]`` is the action taken at frame t, and frame t+1 is its
result, so frame t is conditioned on ``a_{t-1}`` and frame 0 on the null action (:func:`align_actions`).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from v2w_core.config import StrictConfig

logger = logging.getLogger(__name__)

ActionType = Literal["continuous", "discrete", "multi_hot"]


class ActionSpec(StrictConfig):
    """What the model needs to know about an action space.

    ``dim`` is the vector size for continuous / multi-hot actions and the number of classes for discrete
    ones. It mirrors the data layer's ``ActionSpace`` (only type and dim matter to the model).
    """

    type: ActionType
    dim: int = Field(gt=0)

    @classmethod
    def from_space(cls, space: Any) -> ActionSpec:
        """Build from anything with ``.type`` and ``.dim`` (e.g. ``v2w_core.data.ActionSpace``) or a dict."""
        if isinstance(space, ActionSpec):
            return space
        if isinstance(space, dict):
            return cls.from_dict({"type": space["type"], "dim": space["dim"]})
        return cls.from_dict({"type": space.type, "dim": space.dim})


class ActionEncoder(nn.Module):
    """Maps per-frame actions (B, F, ...) to time-embedding-sized vectors (B, F, D).

    Continuous actions go through an MLP ``dim -> hidden[0] -> hidden[1] -> D`` (paper: 320, 1280, 1280);
    discrete ids through an embedding table and multi-hot vectors through a bias-free linear layer, each
    followed by the same two-layer head. The output layer and the null embedding start at zero so that
    adding the encoder to a pretrained base leaves its predictions unchanged at step 0.
    """

    def __init__(self, spec: ActionSpec, embed_dim: int, hidden_dims: tuple[int, int]) -> None:
        super().__init__()
        self.spec = spec
        self.embed_dim = embed_dim
        h0, h1 = hidden_dims
        if spec.type == "continuous":
            self.input = nn.Linear(spec.dim, h0)
        elif spec.type == "discrete":
            self.input = nn.Embedding(spec.dim, h0)
        else:
            self.input = nn.Linear(spec.dim, h0, bias=False)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(h0, h1), nn.SiLU(), nn.Linear(h1, embed_dim))
        self.null_embedding = nn.Parameter(torch.zeros(embed_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def check(self, actions: torch.Tensor, batch: int, frames: int) -> None:
        """Raise a ValueError naming the problem when ``actions`` do not fit this action space."""
        spec = self.spec
        if spec.type == "discrete":
            if actions.shape != (batch, frames):
                raise ValueError(
                    f"discrete actions must have shape (B, F) = ({batch}, {frames}) of integer ids, "
                    f"got {tuple(actions.shape)}"
                )
            if actions.dtype.is_floating_point or actions.dtype == torch.bool or actions.is_complex():
                raise ValueError(f"discrete actions must be an integer tensor, got dtype {actions.dtype}")
        else:
            if actions.shape != (batch, frames, spec.dim):
                raise ValueError(
                    f"{spec.type} actions must have shape (B, F, dim) = ({batch}, {frames}, {spec.dim}), "
                    f"got {tuple(actions.shape)}"
                )
            if spec.type == "continuous" and not actions.dtype.is_floating_point:
                raise ValueError(f"continuous actions must be a floating tensor, got dtype {actions.dtype}")
            if actions.is_complex():
                raise ValueError(f"actions must be real, got dtype {actions.dtype}")

    def forward(
        self, actions: torch.Tensor | None, mask: torch.Tensor | None, batch: int, frames: int
    ) -> torch.Tensor:
        """Embed ``actions`` (already aligned per frame); frames with ``mask`` False get the null embedding.

        ``actions=None`` means "no action anywhere" (every frame null). ``mask=None`` keeps every action.
        """
        null = self.null_embedding.expand(batch, frames, self.embed_dim)
        if actions is None:
            return null
        self.check(actions, batch, frames)
        keep = torch.ones(batch, frames, dtype=torch.bool, device=actions.device) if mask is None else mask
        if self.spec.type == "discrete":
            ids = torch.where(keep, actions.long(), torch.zeros_like(actions, dtype=torch.long))
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.spec.dim):
                raise ValueError(
                    f"discrete action ids must lie in [0, {self.spec.dim}), got range "
                    f"[{int(ids.min())}, {int(ids.max())}]"
                )
            h = self.input(ids)
        else:
            h = self.input(actions.to(self.null_embedding.dtype))
        emb = self.mlp(h)
        return torch.where(keep[..., None], emb, null)


def check_action_mask(mask: torch.Tensor | None, batch: int, frames: int) -> None:
    """``action_mask`` must be a (B, F) bool tensor; anything else is a caller bug worth stopping on."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"action_mask must be a bool tensor (True = use the action), got dtype {mask.dtype}")
    if mask.shape != (batch, frames):
        raise ValueError(f"action_mask must have shape (B, F) = ({batch}, {frames}), got {tuple(mask.shape)}")


def align_actions(recorded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift recorded actions so that frame t carries ``a_{t-1}``; frame 0 gets the null action.

    ``recorded`` is (B, T, ...) with ``recorded[:, t]`` the action taken at frame t. Returns
    ``(aligned, mask)``: ``aligned[:, t] = recorded[:, t-1]`` for t >= 1 and a zero placeholder at t = 0,
    and a (B, T) bool mask that is False at frame 0 (so the null embedding is used there). The last
    recorded action is dropped: it leads to a frame outside the clip.
    """
    if recorded.ndim < 2:
        raise ValueError(f"recorded actions must be (B, T, ...), got shape {tuple(recorded.shape)}")
    batch, frames = recorded.shape[:2]
    aligned = torch.zeros_like(recorded)
    aligned[:, 1:] = recorded[:, :-1]
    mask = torch.ones(batch, frames, dtype=torch.bool, device=recorded.device)
    mask[:, 0] = False
    return aligned, mask


def sample_action_keep_mask(
    shape: tuple[int, ...] | torch.Size,
    p_drop: float = 0.2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-frame independent action dropout for classifier-free guidance training.

    Returns a bool tensor of ``shape`` that is True (keep the action) with probability ``1 - p_drop``.
    AND it with the alignment mask so frame 0 stays null.
    """
    if not 0.0 <= p_drop <= 1.0:
        raise ValueError(f"p_drop must be in [0, 1], got {p_drop}")
    if device is None and generator is not None:
        device = generator.device
    return torch.rand(tuple(shape), generator=generator, device=device) >= p_drop
