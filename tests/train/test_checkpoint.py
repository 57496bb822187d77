"""DeepSpeed checkpoint round trip, integrity manifests and the weights-only loader (one rank, gloo).

A single-rank process group in the pytest process is enough to run the real DeepSpeed engine (ZeRO-2,
torch AdamW, WarmupLR) on a small torch module; the two-worker paths are in test_train_ray.py.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from v2w_core.train import checkpoint as ck
from v2w_core.train.config import TrainConfig
from v2w_core.train.deepspeed_config import build_deepspeed_config, build_torch_optimizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group; the rank variables DeepSpeed reads are set only while these tests run."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
            mp.setenv(k, v)
        if not dist.is_initialized():
            dist.init_process_group(
                "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
            )
        yield
    # DeepSpeed keeps a module-level handle on the group; leave it for the rest of this process.


def _engine(seed: int = 0):
    import deepspeed

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.SiLU(), torch.nn.Linear(32, 4))
    cfg = TrainConfig.from_dict(
        {
            "experiment": "ck",
            "storage_path": "/tmp",
            "zero_stage": 2,
            "micro_batch_per_worker": 4,
            "optim": {"lr": 1e-2, "warmup_steps": 3},
            "scaling": {"num_workers": 1},
        }
    )
    opt = build_torch_optimizer(model.parameters(), cfg, device_type="cpu")
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=opt, config=build_deepspeed_config(cfg, world_size=1), dist_init_required=False
    )
    ck.install_safe_loader(engine)
    return engine


def _train(engine, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 16, generator=g)
        loss = engine(x).pow(2).mean()
        engine.backward(loss)
        engine.step()


def _opt_state(engine) -> list[torch.Tensor]:
    inner = engine.optimizer.optimizer
    return [t.clone() for s in inner.state.values() for t in s.values() if isinstance(t, torch.Tensor)]


def test_round_trip_is_exact_and_manifest_verifies(process_group, tmp_path: Path) -> None:
    engine = _engine()
    _train(engine, 3)
    local = ck.save_checkpoint(
        engine,
        step=3,
        rank=0,
        world_size=1,
        client_state={"step": 3, "epoch": 1, "batch_in_epoch": 5},
        meta={"step": 3},
        parent=str(tmp_path),
    )
    assert ck.verify_checkpoint_dir(local, world_size=1) == []
    assert (local / ck.manifest_name(0)).is_file() and (local / ck.META_NAME).is_file()

    other = _engine(seed=123)  # different initial weights, fresh optimizer
    client = ck.load_into_engine(other, local)
    assert client["step"] == 3 and client["batch_in_epoch"] == 5
    for a, b in zip(engine.module.parameters(), other.module.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(_opt_state(engine), _opt_state(other), strict=True):
        assert torch.equal(a, b)
    assert engine.lr_scheduler.state_dict() == other.lr_scheduler.state_dict()
    assert engine.global_steps == other.global_steps == 3
    # Continuing both gives identical weights: nothing of the training state was lost.
    _train(engine, 2)
    _train(other, 2)
    for a, b in zip(engine.module.parameters(), other.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_truncated_or_missing_files_are_detected(process_group, tmp_path: Path) -> None:
    engine = _engine()
    _train(engine, 1)
    local = ck.save_checkpoint(
        engine, step=1, rank=0, world_size=1, client_state={}, meta={}, parent=str(tmp_path)
    )
    assert ck.verify_checkpoint_dir(local, world_size=2)  # world size changed → unusable
    victim = next(p for p in local.rglob("*optim_states.pt"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    problems = ck.verify_checkpoint_dir(local, world_size=1)
    assert any("bytes" in p for p in problems)
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert any("SHA-256" in p for p in ck.verify_checkpoint_dir(local, world_size=1))
    (local / ck.manifest_name(0)).unlink()
    assert any("manifest of rank 0 missing" in p for p in ck.verify_checkpoint_dir(local, world_size=1))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/v2w-pwned",))


def test_loader_refuses_pickled_code(process_group, tmp_path: Path) -> None:
    engine = _engine()
    _train(engine, 1)
    local = ck.save_checkpoint(
        engine, step=1, rank=0, world_size=1, client_state={}, meta={}, parent=str(tmp_path)
    )
    victim = next(p for p in local.rglob("*optim_states.pt"))
    torch.save({"optimizer_state_dict": _Evil()}, victim)
    with pytest.raises(pickle.UnpicklingError):
        ck.load_into_engine(_engine(), local)
    assert not Path("/tmp/v2w-pwned").exists()


def test_resume_candidates_newest_first(tmp_path: Path) -> None:
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    run = tmp_path / "exp"
    names = [
        ck.step_dir_name(2),
        ck.step_dir_name(4, "a1"),
        ck.step_dir_name(6, "a1"),
        ck.step_dir_name(6, "b2"),
    ]
    for name in names:
        (run / name).mkdir(parents=True)
    (run / "not_a_checkpoint").mkdir()
    latest = Checkpoint(str(run / ck.step_dir_name(6, "b2")), filesystem=pafs.LocalFileSystem())
    refs = ck.resume_candidates(latest)
    # The step re-done by a later attempt comes first, then the earlier attempt's copy of that step.
    assert [Path(r.path).name for r in refs] == [names[3], names[2], names[1], names[0]]
    assert [r.step for r in refs] == [6, 6, 4, 2]
    assert ck.resume_candidates(None) == []


def test_resume_candidates_include_checkpoints_ray_never_registered(tmp_path: Path) -> None:
    """A worker that dies right after reporting leaves a complete step the controller never registered."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    run = tmp_path / "exp"
    for name in (ck.step_dir_name(2, "a1"), ck.step_dir_name(4, "a1")):
        (run / name).mkdir(parents=True)
    fs = pafs.LocalFileSystem()
    registered = Checkpoint(str(run / ck.step_dir_name(2, "a1")), filesystem=fs)
    # Ray knows step 2 only; the listing adds step 4, newest first, without duplicating step 2.
    assert [r.step for r in ck.resume_candidates(registered, fs, str(run))] == [4, 2]
    # Ray registered nothing at all (the first report was lost): the listing alone resumes.
    assert [r.step for r in ck.resume_candidates(None, fs, str(run))] == [4, 2]
    assert ck.resume_candidates(None, fs, str(tmp_path / "missing")) == []

    class CountingFS(pafs.PyFileSystem):  # the run directory is listed once when Ray's registration is in it
        def __init__(self) -> None:
            self.listings: list[str] = []
            super().__init__(pafs.FSSpecHandler(__import__("fsspec").filesystem("file")))

        def get_file_info(self, paths_or_selector):  # type: ignore[override]
            if isinstance(paths_or_selector, pafs.FileSelector):
                self.listings.append(paths_or_selector.base_dir)
            return super().get_file_info(paths_or_selector)

    counting = CountingFS()
    registered = Checkpoint(str(run / ck.step_dir_name(2, "a1")), filesystem=counting)
    assert [r.step for r in ck.resume_candidates(registered, counting, str(run))] == [4, 2]
    assert counting.listings == [str(run)]
