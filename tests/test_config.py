"""The config base: unknown keys and bad values fail at load, naming the key; overrides parse as YAML."""

import pytest
from pydantic import ValidationError

from v2w_core.config import ConfigError, StrictConfig, apply_override


class Inner(StrictConfig):
    lr: float = 1e-5
    steps: int = 10


class Outer(StrictConfig):
    name: str = "run"
    inner: Inner = Inner()


def test_yaml_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ninner:\n  lr: 0.5\n")
    cfg = Outer.from_yaml(path, ["inner.steps=7", "name=b"])
    assert cfg == Outer(name="b", inner=Inner(lr=0.5, steps=7))


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError, match=r"inner\.lrr"):
        Outer.from_yaml(path)


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"inner\.steps"):
        Outer.from_dict({"inner": {"steps": "many"}})


def test_override_errors():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_override({}, "novalue")
    with pytest.raises(ConfigError, match="is a value"):
        apply_override({"name": "x"}, "name.sub=1")


def test_frozen():
    cfg = Outer()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.name = "other"  # type: ignore[misc]
