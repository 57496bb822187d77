"""The transfer experiment (issue 17): the --local path end to end, resume, the variants, the export limits,
the report's headline, the --parallel/probe CLI path and the Ray fan-out with MLflow nested runs.

Tiny sizes: 16×16 ViZDoom frames, a perturbed tiny_unet3d base made here, 2 fine-tuning steps."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import transfer as tr

ROOT = Path(__file__).resolve().parents[2]


def tiny_cfg(base: str, **changes) -> tr.TransferConfig:
    data = {
        "name": "transfer-test",
        "data": {"source": "vizdoom", "source_options": {"episode_length": 16, "height": 16, "width": 16},
                 "seed": 2, "episodes": 14, "eval_fraction": 0.3, "clip_length": 8, "stride": 8, "workers": 1},
        "base": {"uri": base},
        "finetune": {"steps": 2, "seeds": [0], "batch": 2, "warmup_steps": 1, "min_steps": 1, "checkpoint_every": 50},
        "evaluate": {"context_frames": 4, "horizon": 4, "max_episodes": 2, "chunks_per_episode": 1,
                     "chunk_stride": None, "num_inference_steps": 2, "curve_points": 1, "curve_chunks": 2,
                     "strip_chunks": 1, "batch": 8},
        "ray": {"cpus_per_branch": 1, "experiment": "transfer-test"},
    }  # fmt: skip
    for key, value in changes.items():
        section, _, field = key.partition("__")
        data[section][field] = value
    return tr.TransferConfig.from_dict(data)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> str:
    """A bidirectional tiny_unet3d at 16×16 with perturbed weights (temporal convs are not the identity,
    so the causal modes' weight transfers give different models)."""
    from v2w_core.models.io import save_world_model
    from v2w_core.models.testing import tiny_world_model

    path = tmp_path_factory.mktemp("transfer-base") / "base"
    save_world_model(tiny_world_model(action_space=None, sample_size=(16, 16)), str(path))
    return str(path)


@pytest.fixture(scope="module")
def local_run(base_dir, tmp_path_factory):
    """One --local run (in-process) of all six variants; its directory and the train_local calls it made."""
    out = tmp_path_factory.mktemp("transfer-local")
    cfg = tiny_cfg(base_dir)
    res = tr.run_local(cfg, out / "run", config_path=out / "unused.yaml", device="cpu", export=out / "export")
    return cfg, out, res


def _conv_net(path: Path, dims: int) -> str:
    """A random conv feature network (PLUMBING ONLY, not FVD's I3D / FID's Inception)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(dims)
    k = (3,) * dims
    state = {}
    for i, (cin, cout) in enumerate([(3, 8), (8, 16)]):
        state[f"layers.{i}.weight"] = torch.randn(cout, cin, *k, generator=g) * 0.3
        state[f"layers.{i}.bias"] = torch.randn(cout, generator=g) * 0.1
    save_file(state, str(path), metadata={"v2w_arch": "conv2d_pool" if dims == 2 else "conv3d_pool"})
    return str(path)


# ------------------------------------------------------------------------------------------- config
def test_gpu_config_fits_the_return_limits():
    cfg = tr.load_config(ROOT / "configs" / "transfer-vizdoom.yaml")
    assert [v.name for v in cfg.variants] == ["shift_ag", "masked", "extrapolative", "masked_ag", "extrap_ag",
                                              "scratch_ag"]
    assert len(cfg.finetune.seeds) == 3 and len(cfg.branches()) == 18
    assert cfg.data.seed not in (0, 1)  # not the demo's, not the base's pretraining data
    assert max(cfg.export_sizes_mib().values()) <= 16
    assert cfg.evaluate.context_frames + cfg.evaluate.horizon == 16  # FVD's clip
    tr.load_config(ROOT / "configs" / "transfer-tiny.yaml")
    with pytest.raises(Exception, match="exceed"):
        tr.load_config(ROOT / "configs" / "transfer-vizdoom.yaml", ["evaluate.max_episodes=40"])


# ---------------------------------------------------------------------------------------- variants
def test_variants_really_differ(base_dir):
    cfg = tiny_cfg(base_dir)
    space = {"type": "multi_hot", "dim": 3}
    by = {v.name: v for v in cfg.variants}
    models = {n: tr.build_variant_model(cfg, by[n], 0, base_dir, space).eval()
              for n in ("shift_ag", "masked", "extrapolative", "scratch_ag")}
    assert {m.config.causal_mode for m in models.values()} == {"shift", "masked", "extrapolative"}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 16, 16, generator=g)
    t = torch.full((1, 4), 500)
    outs = {}
    with torch.no_grad():
        for n, m in models.items():
            outs[n] = m(x, t, None, None)
    names = list(outs)
    for i, a in enumerate(names):  # the weight transfers give different functions
        for b in names[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b], atol=1e-5), (a, b)
    # scratch is the base's architecture with a random init: same parameter names and shapes, other values
    base_sd = models["extrapolative"].state_dict()
    scratch_sd = models["scratch_ag"].state_dict()
    assert base_sd.keys() == scratch_sd.keys()
    spatial = [k for k in base_sd if "conv_in" in k and k.endswith("weight")]
    assert spatial and all(not torch.equal(base_sd[k], scratch_sd[k]) for k in spatial)
    # pretrained variants keep the base's spatial weights exactly
    shift_sd = models["shift_ag"].state_dict()
    assert all(torch.equal(base_sd[k], shift_sd[k]) for k in spatial)
    # AG: action dropout in training and guidance at sampling; without: neither
    for v in cfg.variants:
        tcfg = tr.train_config(cfg, v, 0, 2, base_dir, space, "cpu")
        assert (tcfg.action_drop_prob > 0) == v.ag
        assert (tr.eval_protocol(cfg, ag=v.ag).rollout.guidance_scale is not None) == v.ag


# ------------------------------------------------------------------------------------ local, end to end
def test_local_run_end_to_end(local_run):
    cfg, out, res = local_run
    run = out / "run"
    assert res["failures"] == []
    rec = json.loads((run / "record" / "done.json").read_text())
    train_ids = set(tr.load_arrays(run / "record" / "train.safetensors")[1]["episode_ids"])
    assert rec["heldout_ids"] and not (set(rec["heldout_ids"]) & train_ids)  # held-out never trained on
    assert all("-s2-" in i for i in rec["heldout_ids"])  # data seed 2
    results = {}
    for v, s in cfg.branches():
        r = json.loads((run / "runs" / tr.branch_name(v.name, s) / "result.json").read_text())
        results[v.name] = r
        assert r["steps"] == 2 and r["planned_steps"] == 2
        assert [p["step"] for p in r["curve"]] == [0, 2]
        assert len(r["drift"]["psnr"]) == cfg.evaluate.horizon
        assert "ctrl_psnr_gain_db" in r["metrics"] and "copy_last_psnr_mean" in r["metrics"]
        assert (run / "runs" / tr.branch_name(v.name, s) / "strip.png").stat().st_size > 0
    assert len({r["weights_sha"] for r in results.values()}) == 6
    assert results["masked"]["action_drop_prob"] == 0 and results["masked_ag"]["action_drop_prob"] > 0
    # the export: ≤ 8 flat files, ≤ 16 MiB, uint8 rollouts of every variant, no pickles
    files = sorted(p.name for p in (out / "export").iterdir())
    assert len(files) == 8 and all((out / "export" / f).stat().st_size <= 16 * 2**20 for f in files)
    assert files == sorted(["results.json", "heldout.safetensors.gz",
                            *[f"rollouts-{v.name}.safetensors.gz" for v in cfg.variants]])
    arrays, meta = tr.load_arrays(out / "export" / "rollouts-extrap_ag.safetensors.gz")
    n = len(meta["chunk_ids"])
    assert arrays["gen/s0"].dtype == np.uint8 and arrays["gen/s0"].shape == (n, 4, 16, 16, 3)
    held, _ = tr.load_arrays(out / "export" / "heldout.safetensors.gz")
    assert held["frames"].shape == (n, 8, 16, 16, 3) and held["untrained"].shape == (n, 4, 16, 16, 3)
    summary = json.loads((out / "export" / "results.json").read_text())
    assert summary["missing"] == [] and set(summary["runs"]) == {f"{v.name}-s0" for v in cfg.variants}
    assert summary["gpu_seconds"] > 0 and summary["device"]


def test_rerun_skips_done_steps(local_run, monkeypatch):
    cfg, out, _ = local_run
    calls = []
    monkeypatch.setattr("v2w_core.train.local.train_local", lambda *a, **k: calls.append(1))
    monkeypatch.setattr("v2w_core.data.inmemory.record_episodes", lambda *a, **k: calls.append(2))
    before = (out / "run" / "record" / "done.json").stat().st_mtime_ns
    res = tr.run_local(cfg, out / "run", config_path=out / "unused.yaml", device="cpu", export=out / "export2")
    assert res["failures"] == [] and calls == []
    assert (out / "run" / "record" / "done.json").stat().st_mtime_ns == before
    assert len(list((out / "export2").iterdir())) == 8


def test_interrupted_branch_resumes_from_its_checkpoint(base_dir, local_run, monkeypatch):
    _, out, _ = local_run
    cfg = tiny_cfg(base_dir, finetune__steps=4, finetune__checkpoint_every=50)
    run = out / "run"  # record/ is reused: only this branch runs
    variant = next(v for v in cfg.variants if v.name == "extrap_ag")
    from v2w_core.train import local

    real = local.train_local

    def stop_after_first_step(*a, **k):
        return real(*a, **{**k, "time_budget_s": 1e-9})  # out of time after step 1: state saved

    monkeypatch.setattr(local, "train_local", stop_after_first_step)
    with pytest.raises(tr.OutOfTime):
        tr.run_branch(cfg, run, variant, 7, 4, device="cpu")
    rd = run / "runs" / "extrap_ag-s7"
    assert json.loads((rd / "ckpt" / "state.json").read_text())["step"] == 1
    assert not (rd / "result.json").exists()
    monkeypatch.setattr(local, "train_local", real)
    r = tr.run_branch(cfg, run, variant, 7, 4, device="cpu")
    assert r["resumed_from"] == 1 and r["steps"] == 4
    assert [p["step"] for p in r["curve"]] == [0, 4]  # the step-0 point kept, not recomputed twice


def test_deadline_exports_what_is_done(base_dir, tmp_path):
    cfg = tiny_cfg(base_dir, finetune__seeds=[0])
    res = tr.run_local(cfg, tmp_path / "run", config_path=tmp_path / "x.yaml", device="cpu", deadline_s=1e-3,
                       export=tmp_path / "export")
    assert len(res["failures"]) == 6
    summary = json.loads((tmp_path / "export" / "results.json").read_text())
    assert len(summary["missing"]) == 6 and summary["runs"] == {}


# ------------------------------------------------------------------------------------------- report
def test_report_writes_record_with_headline_and_docs(local_run, tmp_path):
    from bench.transfer import main as report

    _, out, _ = local_run
    results = tmp_path / "transfer.json"
    fvd, fid = _conv_net(tmp_path / "fvd.safetensors", 3), _conv_net(tmp_path / "fid.safetensors", 2)
    argv = [str(out / "export"), "--metrics", "fvd,fid", "--weights", f"fvd={fvd}", "--weights", f"fid={fid}",
            "--out", str(results), "--docs", str(tmp_path / "docs"), "--cache", str(tmp_path / "cache")]
    assert report(argv) == 0
    (record,) = json.loads(results.read_text())
    h = record["headline"]
    assert h["primary_metric"] == "fvd"
    assert set(h["variants"]) == set(tr.PAPER_FVD)
    for row in h["variants"].values():
        assert row["mean"] is not None and row["mean"] >= 0 and row["seeds"] == 1
    assert isinstance(h["ordering_matches_paper"], bool)
    assert h["extrap_ag_vs_scratch_ratio"] == pytest.approx(
        h["variants"]["extrap_ag"]["mean"] / h["variants"]["scratch_ag"]["mean"])
    assert h["seeds"] == [0] and h["finetune_steps"] == 2 and h["device"] and h["gpu_seconds"] > 0
    assert h["copy_last"]["fvd"] is not None and h["untrained"]["fvd"] is not None
    assert h["machine"]
    doc = (tmp_path / "docs" / "transfer.md").read_text()
    assert "Honest reading" in doc and "extrap_ag" in doc and "quality_vs_steps.png" in doc
    assert len(list((tmp_path / "docs" / "transfer").glob("strip-*.png"))) == 6
    # a second report reads every run's metrics from the cache
    t = time.perf_counter()
    assert report(argv) == 0
    assert len(json.loads(results.read_text())) == 2 and time.perf_counter() - t < 30


def test_export_arrays_are_compressed_safetensors_and_old_exports_still_read(tmp_path):
    """The export is gzip-compressed safetensors (uint8 game frames halve: 6 variants x 3 seeds fit the
    64 MiB that one GPU call returns); exports of earlier runs (plain .safetensors) still load."""
    import numpy as np

    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (4, 1, 64, 64, 3), dtype=np.uint8), 8, axis=1)  # static: compresses
    tr._save_arrays(tmp_path / "a.safetensors.gz", {"gen": frames}, {"chunk_ids": ["c0"]})
    tr._save_arrays(tmp_path / "b.safetensors", {"gen": frames}, {"chunk_ids": ["c1"]})
    assert (tmp_path / "a.safetensors.gz").stat().st_size < frames.nbytes / 2
    for name, cid in (("a.safetensors.gz", "c0"), ("b.safetensors", "c1")):
        arrays, meta = tr.load_arrays(tmp_path / name)
        assert np.array_equal(arrays["gen"], frames) and meta == {"chunk_ids": [cid]}
    assert tr.export_file(tmp_path, "a").name == "a.safetensors.gz"
    assert tr.export_file(tmp_path, "b").name == "b.safetensors"


def test_mean_ci95():
    from pipelines.transfer_report import mean_ci95

    m, ci = mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and ci == pytest.approx([2 - 4.303 / np.sqrt(3), 2 + 4.303 / np.sqrt(3)])
    assert mean_ci95([5.0]) == (5.0, None)


# ------------------------------------------------------------------------------- --parallel, the CLI
@pytest.mark.slow
def test_cli_parallel_with_probe(base_dir, tmp_path):
    """--parallel 2: probes and branches as subprocesses; steps fitted to the budget, the same for all."""
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    data = json.loads(tiny_cfg(base_dir, finetune__steps=0, finetune__time_budget_s=20,
                               finetune__probe_steps=(2, 6)).model_dump_json())
    data["variants"] = data["variants"][-2:]  # extrap_ag, scratch_ag: the CLI path, not every variant again
    cfg_path.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "pipelines/transfer.py", "--config", str(cfg_path), "--local", "--out",
           str(tmp_path / "run"), "--parallel", "2", "--device", "cpu", "--export", str(tmp_path / "export")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    probe = json.loads((tmp_path / "run" / "probe" / "done.json").read_text())
    assert probe["fitted"] and probe["steps"] >= 1 and len(probe["probes"]) == 2
    summary = json.loads((tmp_path / "export" / "results.json").read_text())
    assert {r["steps"] for r in summary["runs"].values()} == {probe["steps"]}
    assert len(list((tmp_path / "export").iterdir())) == 4  # results, heldout, 2 variants


# -------------------------------------------------------------------------------------- Ray + MLflow
@pytest.mark.slow
def test_ray_fan_out_with_mlflow(base_dir, tmp_path, ray_cluster, mlflow_stack):
    import mlflow

    cfg = tiny_cfg(base_dir, ray__experiment=f"transfer-test-{int(time.time())}")
    res = tr.run_ray(cfg, tmp_path / "run", tracking_uri=mlflow_stack.mlflow_uri)
    assert set(res["results"]) == {f"{v.name}-s0" for v in cfg.variants}
    assert len(list((tmp_path / "run" / "export").iterdir())) == 8
    client = mlflow.MlflowClient(mlflow_stack.mlflow_uri)
    parent = client.get_run(res["tracking"]["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["finetune_steps"] == 2
    children = client.search_runs([res["tracking"]["experiment_id"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(f"{v.name}-s0" for v in cfg.variants)
    for c in children:
        assert c.info.status == "FINISHED" and "psnr_mean" in c.data.metrics
        assert [m.step for m in client.get_metric_history(c.info.run_id, "curve_psnr")] == [0, 2]


def test_local_path_imports_no_ray_or_mlflow():
    """A lent GPU box has neither: the --local path (and the report) import them only on the Ray path."""
    code = ("import sys; import pipelines.transfer, pipelines.transfer_report, bench.transfer; "
            "from v2w_core.train.local import train_local; from v2w_core.eval import compute_metrics; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow', 'deepspeed', 'boto3'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
