"""Typed, validated configuration.

Every component owns a small pydantic model deriving from :class:`StrictConfig`; an unknown key or a
bad value fails at load time with the offending key in the message, long before a cluster job starts.
Configs load from YAML and accept ``key.sub=value`` overrides (the pipeline's ``--set``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


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

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Self:
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        for item in overrides or []:
            apply_override(data, item)
        return cls.from_dict(data, source=str(path))


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


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)
