"""Bad input before serving: unknown model URIs and models without actions are one-line errors, exit 2,
and nothing starts (the CLI returns before Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from v2w_core.play.cli import main
from v2w_core.play.errors import PlayError
from v2w_core.play.source import resolve_source


@pytest.mark.parametrize(("uri", "match"), [
    ("/nonexistent/model", "no model at /nonexistent/model"),
    ("asset://no_such_model", "no such packaged model"),
    ("asset://tiny_unet3d_vizdoom", "no action metadata"),
    ("models:/vid2world-tiny@champion", "MLFLOW_TRACKING_URI"),
])  # fmt: skip
def test_bad_model_uris(uri: str, match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(PlayError, match=match):
        resolve_source(uri)


def test_unreachable_tracking_server_is_one_line() -> None:
    # nothing listens on port 9 (discard): seconds, not MLflow's minutes of retries
    with pytest.raises(PlayError, match=r"cannot reach the tracking server http://127.0.0.1:9"):
        resolve_source("models:/m@champion", tracking_uri="http://127.0.0.1:9")


def test_cli_fails_in_one_line_before_serving(capsys: pytest.CaptureFixture[str], play_model_dir: Path) -> None:
    assert main(["--model", "asset://tiny_unet3d_vizdoom"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("v2w-play: error:") and "no action metadata" in err and "\n" not in err
    assert main(["--model", str(play_model_dir), "--episodes", "/nonexistent/manifest.parquet"]) == 2
    assert "cannot read the held-out episodes' manifest" in capsys.readouterr().err


def test_a_good_model_resolves(play_model_dir: Path, play_manifest: str) -> None:
    src = resolve_source(str(play_model_dir), episodes=play_manifest)
    assert src.config["action_space"] == {"type": "multi_hot", "dim": 3}
    assert src.eval_manifest == play_manifest and src.rollout is None


def test_history_encoding_reaches_the_sessions(play_model_dir: Path, play_manifest: str) -> None:
    """``--history-encoding incremental``: the engine's rollout config carries it (info says so) and a
    session keeps its window's cache between key presses; no flag keeps the registered config's."""
    from v2w_core.play.cli import build_parser, settings_from_args
    from v2w_core.play.engine import PlayEngine

    argv = ["--model", str(play_model_dir), "--episodes", play_manifest, "--device", "cpu", "--steps", "2"]
    assert settings_from_args(build_parser().parse_args(argv)).history_encoding is None
    settings = settings_from_args(build_parser().parse_args([*argv, "--history-encoding", "incremental"]))
    engine = PlayEngine(settings)
    assert engine.info()["history_encoding"] == "incremental"
    sid = engine.new_session(b"{}")["session"]
    for _ in range(2):
        engine.step(sid, b'{"action": [1, 0, 0]}')
    carry = engine.sessions.get(sid)._carry
    assert carry.cache is not None and carry.cache.appendable
    with pytest.raises(SystemExit):  # argparse: one line naming the choices, exit 2
        build_parser().parse_args([*argv, "--history-encoding", "sometimes"])
