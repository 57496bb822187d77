"""The world model: a diffusers video UNet driven by our own per-frame top-level forward.

diffusers' ``UNet3DConditionModel`` and ``UNetSpatioTemporalConditionModel`` embed *one* timestep per
clip and broadcast it to every frame with ``repeat_interleave``. Diffusion forcing needs a noise level
per frame and Vid2World an action per frame, so this module replaces only the top of their forward:
per-frame embeddings (B·F, D) = time_embedding(time_proj(t_f)) + action_embedding(a_f), then the base's
own blocks (conv_in, transformer_in, down/mid/up blocks, conv_out) with their pretrained weights.
Conditioning the base expects but a world model does not have (text / CLIP image context, SVD's
added_time_ids and conditioning-latent channels) is fed as a learned or fixed null, identical for every
frame, so pretrained weights still apply and no information flows between frames through it.

The model predicts v (v-prediction) for every frame. See :mod:`v2w_core.models.causalize` for the causal
structure and :mod:`v2w_core.models.streaming` for the rollout cache.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import UNet3DConditionModel, UNetSpatioTemporalConditionModel
from pydantic import Field
from torch import nn
from torch.utils.checkpoint import checkpoint

from v2w_core.config import (
    CausalMode,
    CheckpointGranularity,
    CompileRegions,
    NoiseScheduleConfig,
    StrictConfig,
)
from v2w_core.models import checkpointing
from v2w_core.models.actions import ActionEncoder, ActionSpec, check_action_mask
from v2w_core.models.causalize import causalize_unet
from v2w_core.models.checkpointing import LAYER_LISTS, granularity, layers
from v2w_core.models.streaming import HistoryCache, StreamPhase, StreamState
from v2w_core.models.weight_transfer import check_causal_mode

logger = logging.getLogger(__name__)

Family = Literal["unet3d", "svd"]
BASE_CLASSES: dict[str, type[nn.Module]] = {
    "unet3d": UNet3DConditionModel,
    "svd": UNetSpatioTemporalConditionModel,
}
FAMILY_OF_CLASS = {cls.__name__: fam for fam, cls in BASE_CLASSES.items()}


class WorldModelConfig(StrictConfig):
    """Everything needed to rebuild a world model (recorded in its config.json).

    ``base`` holds the diffusers constructor arguments of the UNet. ``causal_mode`` is "none" for the
    bidirectional base (pretraining) and the causal mode (:data:`~v2w_core.config.CausalMode`) afterwards.
    """

    family: Family
    base: dict[str, Any]
    data_channels: int = Field(3, gt=0)
    patch_size: int = Field(1, ge=1)
    sample_size: tuple[int, int] = (64, 64)
    action_space: ActionSpec | None = None
    action_hidden_dims: tuple[int, int] | None = None
    causal_mode: Literal["none", CausalMode] = "none"
    extrapolation_window: int = Field(2, ge=1)
    context_tokens: int = Field(1, ge=1)
    added_time_ids: tuple[float, ...] = (6.0, 127.0, 0.02)
    #: Activation checkpointing while training: ``false``, ``"block"`` (``true``), ``"layer"`` or
    #: ``"selective"`` (:mod:`v2w_core.models.checkpointing` says what each holds in memory).
    gradient_checkpointing: bool | CheckpointGranularity = False
    #: What the network's output means. "v": the output is the v-prediction (the paper's, and every
    #: pretrained base's). "x0": the output is read as the clean frame and converted to v inside
    #: :meth:`WorldModel.forward` (``v = (√ᾱ·x_t − x̂0) / max(√(1−ᾱ), X0_MIN_SIGMA)``), so losses, samplers,
    #: streaming and guidance still see v. For pixel patches wide relative to the network (``tiny_unet3d``:
    #: 4×4×3 = 48 values per token, 64 channels) v-prediction must copy x_t's noise exactly and leaks it
    #: into every x0 estimate; predicting x0 does not (bench/denoiser_probe.py; JiT, Li & He 2025).
    network_output: Literal["v", "x0"] = "v"


#: Floor of √(1−ᾱ) in the x0 → v conversion: at the last few timesteps √(1−ᾱ) → 0.03 and an x0 error would
#: be amplified 30× in v (JiT clips the same denominator at 0.05).
X0_MIN_SIGMA = 0.05


def build_base(family: str, base: dict[str, Any]) -> nn.Module:
    """Instantiate the diffusers UNet of ``family`` from its constructor arguments."""
    if family not in BASE_CLASSES:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(BASE_CLASSES)}")
    cls = BASE_CLASSES[family]
    return cls.from_config({k: v for k, v in base.items() if not k.startswith("_")})


def base_config_dict(unet: nn.Module) -> dict[str, Any]:
    """A diffusers model's constructor arguments as plain JSON-able data (tuples become lists)."""
    out: dict[str, Any] = {}
    for key, value in dict(unet.config).items():
        if key.startswith("_"):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


class WorldModel(nn.Module):
    """Action-conditioned video denoiser with per-frame timesteps; causal after :func:`causalize`.

    ``forward(x, timesteps, actions, action_mask)`` maps a (B, F, C, H, W) clip with one noise level per
    frame to a (B, F, C, H, W) v-prediction. Constructing from a config whose ``causal_mode`` is not
    "none" applies the causal structure immediately (the weights are transferred from whatever the UNet
    holds, then usually overwritten by a loaded state dict).
    """

    def __init__(self, config: WorldModelConfig, unet: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.stream_state = StreamState()
        self.unet = unet if unet is not None else build_base(config.family, config.base)
        expected = BASE_CLASSES[config.family]
        if not isinstance(self.unet, expected):
            raise TypeError(
                f"family {config.family!r} needs a {expected.__name__}, got {type(self.unet).__name__}"
            )
        self._check_channels()
        if config.network_output == "x0":
            # ᾱ per train timestep (float32, on the model's device; the default schedule is the only one the
            # project trains with, see NoiseScheduleConfig)
            from diffusers import DDPMScheduler

            abar = DDPMScheduler(**NoiseScheduleConfig().diffusers_kwargs()).alphas_cumprod.float()
            self.register_buffer("x0_alphas_cumprod", abar, persistent=False)

        self.time_embed_dim: int = self.unet.time_embedding.linear_2.out_features
        cross_dim = self.unet.config.cross_attention_dim
        if isinstance(cross_dim, list | tuple):
            if len(set(cross_dim)) != 1:
                raise NotImplementedError(f"per-block cross_attention_dim {cross_dim} is not supported")
            cross_dim = cross_dim[0]
        # Null cross-attention context (the base's text / CLIP-image slot), shared by every frame.
        self.null_context = nn.Parameter(torch.zeros(config.context_tokens, cross_dim))
        cond = self._cond_channels()
        self.null_cond = nn.Parameter(torch.zeros(cond)) if cond else None
        if config.family == "svd":
            ids = torch.tensor(config.added_time_ids, dtype=torch.float32)
            expected_in = len(ids) * self.unet.config.addition_time_embed_dim
            if expected_in != self.unet.config.projection_class_embeddings_input_dim:
                raise ValueError(
                    f"added_time_ids has {len(ids)} values but the SVD base expects "
                    f"{self.unet.config.projection_class_embeddings_input_dim // self.unet.config.addition_time_embed_dim}"
                )
            self.register_buffer("added_time_ids", ids, persistent=False)

        self.action_encoder: ActionEncoder | None = None
        if config.action_space is not None:
            self.action_encoder = self._make_action_encoder(config.action_space)
        if config.causal_mode != "none":
            causalize_unet(self.unet, self.stream_state, config.causal_mode, config.extrapolation_window)
        if config.gradient_checkpointing:
            self.enable_gradient_checkpointing(config.gradient_checkpointing)

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_base(
        cls,
        unet: nn.Module,
        *,
        data_channels: int | None = None,
        action_space: ActionSpec | None = None,
        **overrides: Any,
    ) -> WorldModel:
        """Wrap a (pretrained) diffusers UNet as a bidirectional world model, keeping its weights.

        ``sample_size`` (the frame size in data space) defaults to the UNet's own ``sample_size`` times the
        patch size: the size the base was trained at, not WorldModelConfig's generic 64×64.
        """
        family = FAMILY_OF_CLASS.get(type(unet).__name__)
        if family is None:
            raise TypeError(
                f"unsupported base {type(unet).__name__}; expected one of {sorted(FAMILY_OF_CLASS)}"
            )
        native = getattr(unet.config, "sample_size", None)
        if "sample_size" not in overrides and native is not None:
            h, w = (native, native) if isinstance(native, int) else tuple(native)
            patch = overrides.get("patch_size", 1)
            overrides["sample_size"] = (h * patch, w * patch)
        config = WorldModelConfig(
            family=family,
            base=base_config_dict(unet),
            data_channels=data_channels if data_channels is not None else unet.config.out_channels,
            action_space=action_space,
            **overrides,
        )
        return cls(config, unet)

    def _check_channels(self) -> None:
        cfg, c = self.unet.config, self.config.data_channels * self.config.patch_size**2
        if cfg.out_channels != c:
            raise ValueError(f"base out_channels {cfg.out_channels} != data_channels * patch_size**2 = {c}")
        if self.config.family == "unet3d" and cfg.in_channels != c:
            raise ValueError(f"UNet3D in_channels {cfg.in_channels} != data_channels * patch_size**2 = {c}")
        if self.config.family == "svd" and cfg.in_channels < c:
            raise ValueError(f"SVD in_channels {cfg.in_channels} < data_channels * patch_size**2 = {c}")

    def _cond_channels(self) -> int:
        """Extra input channels SVD expects (the conditioning-image latent), fed a learned null."""
        if self.config.family != "svd":
            return 0
        return self.unet.config.in_channels - self.config.data_channels * self.config.patch_size**2

    def _make_action_encoder(self, spec: ActionSpec) -> ActionEncoder:
        hidden = self.config.action_hidden_dims
        if hidden is None:
            c0 = self.time_embed_dim // 4
            hidden = (c0, self.time_embed_dim)
        param = next(self.unet.parameters())
        return ActionEncoder(spec, self.time_embed_dim, hidden).to(device=param.device, dtype=param.dtype)

    def set_action_space(self, spec: ActionSpec | Any) -> None:
        """Add an action encoder (zero-initialised output: predictions are unchanged until it trains)."""
        spec = ActionSpec.from_space(spec)
        if self.action_encoder is not None:
            raise RuntimeError(f"model already has an action encoder for {self.action_encoder.spec}")
        self.action_encoder = self._make_action_encoder(spec)
        self.config = self.config.model_copy(update={"action_space": spec})

    def _set_causal(self, causal_mode: CausalMode, window: int) -> None:
        check_causal_mode(causal_mode)
        self.config = self.config.model_copy(
            update={"causal_mode": causal_mode, "extrapolation_window": window}
        )

    @property
    def is_causal(self) -> bool:
        return self.config.causal_mode != "none"

    def enable_gradient_checkpointing(self, enabled: bool | CheckpointGranularity = True) -> None:
        """Checkpoint activations while training (``torch.utils.checkpoint``): per UNet block (``True`` or
        ``"block"``), per layer inside the blocks (``"layer"``: less memory, the same recompute), per layer
        keeping the GEMM/conv/attention outputs (``"selective"``: little recompute), or not."""
        mode = granularity(enabled)
        self.config = self.config.model_copy(update={"gradient_checkpointing": mode or False})
        checkpointing.unwrap_layers(self.compiled_blocks())
        if mode in ("layer", "selective"):
            checkpointing.wrap_layers(
                self.compiled_blocks(), self.stream_state, selective=mode == "selective"
            )

    def compiled_blocks(self) -> list[nn.Module]:
        """The regions :meth:`compile_blocks` compiles: the base's blocks, in the order ``_run_unet`` runs
        them (UNet3D's ``transformer_in``, the down blocks, the mid block, the up blocks)."""
        unet = self.unet
        stem = [unet.transformer_in] if self.config.family == "unet3d" else []
        return [*stem, *unet.down_blocks, unet.mid_block, *unet.up_blocks]

    def compile_blocks(
        self, backend: str | None = "inductor", mode: str | None = None, regions: CompileRegions = "block"
    ) -> None:
        """``torch.compile`` the base's blocks in place (``nn.Module.compile``), or undo it (``backend=None``).

        Regional, not the whole model: a whole-model compile of the paper-size UNet3D did not finish within
        280 s on an H200 (issue 18); a graph break stays inside its region; gradient checkpointing (which
        wraps the same blocks, or layers) recomputes the compiled region; and the parameters keep their
        names, so checkpoints and exports are unchanged. ``regions``:

        * ``"block"``: one graph per block. Fusion spans the whole block, but a UNet's blocks all differ
          in shape, so every block is its own compilation: ≈ 40–60 s each for the paper-size UNet3D's
          forward on a 16-core H100 host, too slow to finish a cold compile in a 10-minute run (issue 18).
        * ``"layer"``: one graph per layer inside the blocks (:func:`~v2w_core.models.checkpointing.layers`)
          plus the stem. Layers of the same class and shape (the transformers and most resnets of one
          resolution level) reuse one compiled graph, so far fewer graphs are compiled; the blocks' glue
          (up/downsampling convs, skip concatenation) runs eagerly. Shapes stay static (``dynamic=False``)
          and the recompile limit is raised to fit the distinct layer shapes.

        Meant for training: streaming rollouts run eagerly or through :mod:`v2w_core.diffusion.fast_rollout`.
        """
        blocks = self.compiled_blocks()
        if backend is None:
            for module in [*blocks, *layers(blocks)]:
                module._compiled_call_impl = None  # what nn.Module.compile sets; None = the eager forward
            return
        if regions == "block":
            for block in blocks:
                block.compile(backend=backend, mode=mode)
            return
        if regions != "layer":
            raise ValueError(f"compile regions {regions!r}: use 'block' or 'layer'")
        stem = [b for b in blocks if not any(getattr(b, name, None) for name in LAYER_LISTS)]
        targets = [*stem, *layers(blocks)]
        # one cache entry per distinct (class, shape) of layer: more than Dynamo's default limit of 8
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(targets))
        for module in targets:
            module.compile(backend=backend, mode=mode, dynamic=False)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        actions: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v-prediction for every frame.

        Args:
            x: noisy clip (B, F, C, H, W).
            timesteps: per-frame noise levels (B, F), integer (or float) diffusion steps.
            actions: per-frame actions already aligned (frame t carries a_{t-1}): (B, F, dim) float for
                continuous, (B, F) integer ids for discrete, (B, F, dim) for multi-hot; None = all null.
            action_mask: (B, F) bool, False -> that frame uses the null action embedding.
        """
        batch, frames = self._check_inputs(x, timesteps, actions, action_mask)
        emb = self._frame_embeddings(timesteps, actions, action_mask, batch, frames)
        sample = x.flatten(0, 1)
        patch = self.config.patch_size
        if patch > 1:
            sample = F.pixel_unshuffle(sample, patch)
        out = self._run_unet(sample, emb, batch, frames)
        if patch > 1:
            out = F.pixel_shuffle(out, patch)
        out = out.reshape(batch, frames, *out.shape[1:])
        if self.config.network_output == "x0":
            out = self.x0_to_v(out, x, timesteps)
        return out

    def x0_to_v(self, x0_hat: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v that the clean-frame estimate ``x0_hat`` implies for ``x`` at per-frame ``timesteps``."""
        abar = self.x0_alphas_cumprod.float()[
            timesteps.round().long().clamp(0, len(self.x0_alphas_cumprod) - 1)
        ]
        abar = abar[..., None, None, None]
        sigma = (1 - abar).sqrt().clamp_min(X0_MIN_SIGMA)
        return ((abar.sqrt() * x.float() - x0_hat.float()) / sigma).to(x0_hat.dtype)

    def _check_inputs(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        actions: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[int, int]:
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            raise ValueError(f"x must be a (B, F, C, H, W) tensor, got shape {getattr(x, 'shape', type(x))}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"x must be floating point, got dtype {x.dtype}")
        batch, frames, channels = x.shape[:3]
        patch = self.config.patch_size
        if x.shape[-1] % patch or x.shape[-2] % patch:
            raise ValueError(f"frame size {tuple(x.shape[-2:])} is not divisible by patch_size {patch}")
        if channels != self.config.data_channels:
            raise ValueError(
                f"x has {channels} channels but the model expects {self.config.data_channels} "
                "(x must be (B, F, C, H, W), frames before channels)"
            )
        if not isinstance(timesteps, torch.Tensor) or timesteps.shape != (batch, frames):
            raise ValueError(
                f"timesteps must be a (B, F) = ({batch}, {frames}) tensor, one per frame, got "
                f"{getattr(timesteps, 'shape', type(timesteps))}"
            )
        if timesteps.dtype == torch.bool or timesteps.is_complex():
            raise ValueError(f"timesteps must be integer or float, got dtype {timesteps.dtype}")
        if actions is not None:
            if self.action_encoder is None:
                raise ValueError(
                    "actions were given but the model has no action space (call set_action_space)"
                )
            if actions.ndim < 2 or actions.shape[:2] != (batch, frames):
                raise ValueError(
                    f"actions must have one entry per frame: leading dims (B, F) = ({batch}, {frames}), got "
                    f"{tuple(actions.shape)}"
                )
            self.action_encoder.check(actions, batch, frames)
        check_action_mask(mask, batch, frames)
        return batch, frames

    def _frame_embeddings(
        self,
        timesteps: torch.Tensor,
        actions: torch.Tensor | None,
        mask: torch.Tensor | None,
        batch: int,
        frames: int,
    ) -> torch.Tensor:
        """(B·F, D): each frame's own timestep embedding plus its own action embedding."""
        unet = self.unet
        dtype = self.null_context.dtype
        t = timesteps.reshape(-1)
        emb = unet.time_embedding(unet.time_proj(t).to(dtype))
        if self.config.family == "svd":
            ids = self.added_time_ids.to(device=emb.device)
            aug = unet.add_time_proj(ids).reshape(1, -1).to(dtype)
            emb = emb + unet.add_embedding(aug)
        if self.action_encoder is not None:
            emb = emb + self.action_encoder(actions, mask, batch, frames).reshape(batch * frames, -1)
        return emb

    def _checkpointing(self) -> bool:
        return bool(self.config.gradient_checkpointing) and checkpointing.active(self, self.stream_state)

    def _call(self, module: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.config.gradient_checkpointing == "block" and self._checkpointing():
            return checkpoint(functools.partial(module, **kwargs), *args, use_reentrant=False)
        return module(*args, **kwargs)

    def _context(self, n: int) -> torch.Tensor:
        return self.null_context[None].expand(n, -1, -1)

    def _null_cond(self, sample: torch.Tensor) -> torch.Tensor:
        """``sample`` with SVD's conditioning-latent channels appended, filled with the learned null."""
        if self.null_cond is None:
            return sample
        cond = self.null_cond.to(sample.dtype)[None, :, None, None].expand(
            sample.shape[0], -1, *sample.shape[-2:]
        )
        return torch.cat([sample, cond], dim=1)

    def _run_unet(self, sample: torch.Tensor, emb: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """The base's own layers on (B·F, C, H, W) frames with per-frame embeddings ``emb``, both families.

        The block loop is diffusers' (down blocks collecting skips, mid block, up blocks consuming them,
        output norm and conv), with the same arguments as the base's own forward except ``emb``, which is
        per frame here. The families differ only where their diffusers forwards do:

        * how a block learns the frame count: UNet3D blocks take ``num_frames``; SVD blocks take an
          ``image_only_indicator`` (B, F), all zeros (every frame is a video frame, none a still image);
        * the stem: SVD appends its conditioning-latent channels (a learned null here) before ``conv_in``;
          UNet3D runs its temporal ``transformer_in`` after ``conv_in`` (SVD has none);
        * UNet3D's output norm is optional (``norm_num_groups=None``), SVD's always present.
        """
        unet = self.unet
        ctx = self._context(sample.shape[0])
        if self.config.family == "unet3d":
            per_frame: dict[str, Any] = {"num_frames": frames}
        else:
            sample = self._null_cond(sample)
            indicator = torch.zeros(batch, frames, dtype=sample.dtype, device=sample.device)
            per_frame = {"image_only_indicator": indicator}
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])

        h = unet.conv_in(sample)
        if self.config.family == "unet3d":
            h = self._call(unet.transformer_in, h, num_frames=frames, return_dict=False)[0]
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in unet.down_blocks:
            cross = {"encoder_hidden_states": ctx} if getattr(block, "has_cross_attention", False) else {}
            h, res = self._call(block, h, emb, **cross, **per_frame)
            skips += res
        h = self._call(unet.mid_block, h, emb, encoder_hidden_states=ctx, **per_frame)
        for i, block in enumerate(unet.up_blocks):
            res = skips[-len(block.resnets) :]
            skips = skips[: -len(block.resnets)]
            upsample_size = (
                skips[-1].shape[2:] if forward_upsample_size and i < len(unet.up_blocks) - 1 else None
            )
            cross = {"encoder_hidden_states": ctx} if getattr(block, "has_cross_attention", False) else {}
            h = self._call(block, h, res, emb, **cross, upsample_size=upsample_size, **per_frame)
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h)

    # ------------------------------------------------------------------ streaming

    @contextlib.contextmanager
    def _streaming(
        self,
        phase: StreamPhase,
        cache: HistoryCache,
        repeats: int,
        next_cache: HistoryCache | None = None,
    ) -> Iterator[None]:
        state = self.stream_state
        if state.phase != "off":
            raise RuntimeError("a streaming forward is already running on this model")
        state.phase, state.cache, state.repeats, state.next_cache = phase, cache, repeats, next_cache
        try:
            yield
        finally:
            state.phase, state.cache, state.repeats, state.next_cache = "off", None, 1, None

    def _require_causal(self, what: str) -> None:
        if not self.is_causal:
            raise RuntimeError(
                f"{what} needs a causal model (the history's activations must not depend on the newest frame); "
                "call causalize(model, mode) first"
            )

    @torch.no_grad()
    def encode_history(
        self,
        x_hist: torch.Tensor,
        t_hist: torch.Tensor,
        a_hist: torch.Tensor | None = None,
        mask_hist: torch.Tensor | None = None,
        *,
        forward: Callable[..., torch.Tensor] | None = None,
        appendable: bool = False,
    ) -> HistoryCache:
        """Run the history (B, F_h, C, H, W) once and cache what the newest frame needs from it.

        Cached per causal layer: temporal-conv inputs (last L-1 frames) and temporal-attention keys and
        values. Valid for every denoising step of the next frame as long as the history is unchanged.
        ``forward`` runs the pass instead of ``self.forward`` (the fast path's ``torch.compile``d forward,
        which fills the cache from compiled code). ``appendable`` also keeps what
        :meth:`append_history` needs to extend the cache by a frame (the convs' last inputs).
        """
        self._require_causal("encode_history")
        if x_hist.ndim != 5:
            raise ValueError(f"x_hist must be (B, F, C, H, W), got shape {tuple(x_hist.shape)}")
        cache = HistoryCache(batch_size=x_hist.shape[0], num_frames=x_hist.shape[1], appendable=appendable)
        with self._streaming("record", cache, 1):
            (forward or self.forward)(x_hist, t_hist, a_hist, mask_hist)
        logger.debug("encoded history: %d frames, %.1f MiB", cache.num_frames, cache.nbytes() / 2**20)
        return cache

    def step_newest(
        self,
        x_new: torch.Tensor,
        t_new: torch.Tensor,
        a_new: torch.Tensor | None,
        mask_new: torch.Tensor | None,
        cache: HistoryCache,
    ) -> torch.Tensor:
        """v-prediction for the newest frame (n·B, 1, C, H, W) given a cached history of batch B.

        Equals the last frame of ``forward`` over history + newest frame. A batch of n·B shares the
        history: row i·B + b of ``x_new`` continues history row b (``torch.cat([h] * n)`` order), so the
        conditional and unconditional guidance branches run as one batch; the causal layers broadcast the
        cache over the n branches (no tiled copies). Allocates nothing that depends on the history length
        beyond the cache it reads, so a call with fixed input shapes and a fixed cache (see
        :meth:`HistoryCache.copy_`) can be captured as a CUDA graph.
        """
        self._require_causal("step_newest")
        if not isinstance(cache, HistoryCache):
            raise TypeError(f"cache must be a HistoryCache from encode_history, got {type(cache).__name__}")
        if x_new.ndim != 5 or x_new.shape[1] != 1:
            raise ValueError(
                f"x_new must be (n*B, 1, C, H, W), one new frame, got shape {tuple(x_new.shape)}"
            )
        if x_new.shape[0] % cache.batch_size:
            raise ValueError(
                f"x_new batch {x_new.shape[0]} is not a multiple of the history batch {cache.batch_size}"
            )
        with self.replaying(cache, x_new.shape[0] // cache.batch_size):
            return self.forward(x_new, t_new, a_new, mask_new)

    @torch.no_grad()
    def append_history(
        self,
        cache: HistoryCache,
        x_new: torch.Tensor,
        t_new: torch.Tensor,
        a_new: torch.Tensor | None,
        mask_new: torch.Tensor | None,
        *,
        max_frames: int,
        forward: Callable[..., torch.Tensor] | None = None,
    ) -> HistoryCache:
        """The history cache extended by one frame (B, 1, C, H, W), keeping its newest ``max_frames``.

        The incremental history mode: one single-frame forward against ``cache`` (its output is not
        needed) instead of re-encoding the whole window. While the history still fits ``max_frames`` the
        result equals ``encode_history`` over the longer history (same noised frames), up to reduction
        order. Once frames are dropped it is not: the kept frames' activations still reflect the dropped
        ones (and keep their original frame indices), where a re-encode would start the window afresh —
        docs/streaming.md measures the difference. ``cache`` must come from ``encode_history(...,
        appendable=True)`` (or an earlier append); it is left unchanged.
        """
        self._require_causal("append_history")
        if not isinstance(cache, HistoryCache) or not cache.appendable:
            raise ValueError("append_history needs a cache from encode_history(..., appendable=True)")
        if x_new.ndim != 5 or x_new.shape[1] != 1 or x_new.shape[0] != cache.batch_size:
            raise ValueError(
                f"x_new must be (B, 1, C, H, W) with B = {cache.batch_size}, got shape {tuple(x_new.shape)}"
            )
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        out = HistoryCache(
            batch_size=cache.batch_size, num_frames=min(cache.num_frames + 1, max_frames), appendable=True
        )
        with self._streaming("append", cache, 1, out):
            (forward or self.forward)(x_new, t_new, a_new, mask_new)
        if missing := cache.entries.keys() - out.entries.keys():
            raise RuntimeError(f"append_history: layers {sorted(missing)} did not extend their cache entries")
        return out

    def replaying(self, cache: HistoryCache, repeats: int) -> contextlib.AbstractContextManager[None]:
        """Context in which ``forward`` on (repeats·B, 1, ...) newest frames replays ``cache``.

        ``step_newest`` without its input checks, for callers that wrap ``forward`` themselves
        (``torch.compile``, CUDA-graph capture in :mod:`v2w_core.diffusion.fast_rollout`).
        """
        self._require_causal("replaying")
        return self._streaming("replay", cache, repeats)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
