"""Typed, validated configuration.

Every component owns a small pydantic model deriving from :class:`StrictConfig`; an unknown key or a
bad value fails at load time with the offending key in the message, long before a cluster job starts.
Configs load from YAML and accept ``key.sub=value`` overrides (the pipeline's ``--set``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: The three causal weight-transfer rules of Vid2World §1.1 (DESIGN §1.1), the one definition of the causal
#: modes: every config field and function that takes one uses this type. Implemented in
#: :mod:`v2w_core.models.weight_transfer`; defined here because configs must not import torch.
CausalMode = Literal["shift", "masked", "extrapolative"]
CAUSAL_MODES: tuple[CausalMode, ...] = get_args(CausalMode)
#: Activation checkpointing granularities (v2w_core/models/checkpointing.py says what each keeps).
CheckpointGranularity = Literal["block", "layer", "selective"]
#: What WorldModel.compile_blocks compiles as one graph: each UNet block, or each layer inside them.
CompileRegions = Literal["block", "layer"]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class StrictConfig(BaseModel):
    """Base for all configs: unknown keys are errors, assignments are validated, instances are frozen."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_describe(err, source)) from None

    def updated(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` applied (``model_copy(update=...)`` does not validate)."""
        return type(self).model_validate({**dict(self), **changes})

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Self:
        """Load ``path`` and apply ``overrides``; a bad value is reported against the ``--set`` that put
        it there, not against the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" line {where.line + 1}" if where is not None else ""
            raise ConfigError(
                f"{path}{line}: not valid YAML ({getattr(err, 'problem', None) or err})"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        for item in overrides or []:
            apply_override(data, item)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_describe(err, str(path), overrides or [])) from None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (so 3, true, [1,2] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    dotted, raw = item.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {item!r} has an empty key")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw)


def _describe(err: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    """One line per problem; a key set by an override is blamed on ``--set <override>``."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            named = re.match(r"^([A-Za-z_][\w.]*): (.*)$", msg)
            if named and not loc:  # a whole-model check that names the key itself
                loc, msg = named.group(1).split("."), named.group(2)
                key = named.group(1)
        blamed = [o for o in overrides or [] if _override_covers(o, loc)]
        origin = f"--set {blamed[-1]}" if blamed else source
        lines.append(f"{origin}: {key}: {msg}")
    if len(lines) == 1:
        return f"invalid configuration: {lines[0]}"
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _override_covers(override: str, loc: list[str]) -> bool:
    keys = [k for k in override.split("=", 1)[0].strip().split(".") if k]
    n = min(len(keys), len(loc))
    return n > 0 and keys[:n] == loc[:n]


class NoiseScheduleConfig(StrictConfig):
    """Training/sampling noise schedule (DESIGN §1.2). Defaults are the paper's.

    Here, not in :mod:`v2w_core.diffusion.schedule` (which builds the schedulers), because a world model with
    ``network_output="x0"`` needs the schedule's ᾱ and the models sit below the diffusion layer."""

    num_train_timesteps: int = Field(1000, ge=2)
    beta_start: float = Field(0.00085, gt=0)
    beta_end: float = Field(0.012, gt=0, lt=1)
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    rescale_betas_zero_snr: bool = True
    prediction_type: Literal["v_prediction"] = "v_prediction"
    timestep_spacing: Literal["trailing", "leading", "linspace"] = "trailing"
    # Latents must not be clipped; pixel-space users may turn this on (x0 is then clamped to [-1, 1]).
    clip_sample: bool = False

    def diffusers_kwargs(self) -> dict:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "rescale_betas_zero_snr": self.rescale_betas_zero_snr,
            "prediction_type": self.prediction_type,
            "timestep_spacing": self.timestep_spacing,
            "clip_sample": self.clip_sample,
        }
