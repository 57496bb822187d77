"""``v2w-ingest`` end to end on a local directory: generate, shard, manifest, append, refuse duplicates."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from v2w_core.data.ingest import main
from v2w_core.data.manifest import Manifest
from v2w_core.data.shards import ReadStats, iter_episodes
from v2w_core.data.sources import get_source


def test_ingest_appends_and_refuses_reused_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    out = str(tmp_path / "ds")
    common = ["--source", "bouncing-shapes", "--out", out, "--source-opt", "episode_length=6"]
    assert main([*common, "--episodes", "5", "--seed", "1", "--lossless", "--eval-fraction", "0.4"]) == 0
    assert "ingested 5 episodes of 'bouncing-shapes'" in capsys.readouterr().out
    assert (
        main([*common, "--episodes", "3", "--seed", "2", "--codec", "zstd", "--shard-size-mb", "0.01"]) == 0
    )
    manifest = Manifest.read(out)
    manifest.check()
    assert len(manifest) == 8
    assert {r["codec"] for r in manifest.rows()} == {"h264-lossless", "zstd"}
    assert len(manifest.shard_uris()) >= 3
    assert {r["split"] for r in manifest.rows()} == {"train", "eval"}
    stats = ReadStats()
    episodes = {e.episode_id: e for e in iter_episodes(manifest, stats=stats)}
    assert stats.reconciles and stats.read == 8
    src = get_source("bouncing-shapes", episode_length=6)
    for seed, n in ((1, 5), (2, 3)):
        for want in src.episodes(n, seed=seed):  # lossless: exactly what the source produced
            assert episodes[want.episode_id].content_hash() == want.content_hash()
    with caplog.at_level(logging.ERROR):
        assert main([*common, "--episodes", "2", "--seed", "1"]) == 2
    assert "already in" in caplog.text and "another seed" in caplog.text
    assert len(Manifest.read(out)) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "nope"], "unknown source 'nope'"),
        (["--source", "bouncing-shapes", "--lossless", "--codec", "h264"], "--lossless conflicts"),
        (["--source", "bouncing-shapes", "--eval-fraction", "1.5"], "writer.eval_fraction"),
        (["--source", "bouncing-shapes", "--source-opt", "size=3"], "size"),
        (["--source", "bouncing-shapes", "--source-opt", "nokey"], "key=value"),
    ],
)
def test_ingest_bad_arguments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, args: list[str], message: str
) -> None:
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--episodes", "1", "--seed", "0", "--out", str(tmp_path)]) == 2
    assert message in caplog.text
    assert not (tmp_path / "manifest.parquet").exists()


@pytest.mark.slow
def test_console_script(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("v2w-ingest")
    if not exe.exists():
        pytest.skip("package not installed into this environment (pip install -e .)")
    out = tmp_path / "cli"
    cmd = [str(exe), "--source", "bouncing-shapes", "--episodes", "2", "--seed", "0", "--out", str(out)]
    cmd += ["--source-opt", "episode_length=4"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ingested 2 episodes" in proc.stdout
    assert len(Manifest.read(str(out))) == 2
