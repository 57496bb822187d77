"""``python -m v2w_core.train``: config loading, overrides and fail-fast errors (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from v2w_core.train.__main__ import main


def test_check_prints_the_resolved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("experiment: cli\nstorage_path: s3://v2w/runs\n")
    assert main(["--config", str(cfg), "--set", "zero_stage=3", "--set", "optim.lr=1e-5", "--check"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["zero_stage"] == 3 and out["optim"]["lr"] == 1e-5 and out["optim"]["grad_clip"] == 0.5


@pytest.mark.parametrize(
    ("override", "needle"), [("zero_stage=4", "zero_stage"), ("optim.lrr=1", "optim.lrr")]
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, needle: str
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("experiment: cli\nstorage_path: /tmp/x\n")
    assert main(["--config", str(cfg), "--set", override, "--check"]) == 2
    assert needle in capsys.readouterr().err
