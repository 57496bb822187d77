"""Training-step benchmark WITHOUT Ray: plain PyTorch (fused AdamW) vs DeepSpeed ZeRO-2 / ZeRO-3.

What it measures, per variant: median step time, samples/s, peak memory and MFU of one full optimizer
step of the Vid2World fine-tuning objective (causalized UNet + action encoder, diffusion forcing with a
noise level per frame and action drop). FLOPs are counted once with ``torch.utils.flop_counter`` on a
plain forward + backward of the same batch, so MFU compares every variant against the same useful work.

    python bench/train_step.py                       # tiny model, CPU (pixel 8×3×16×16 clips)
    python bench/train_step.py --preset paper        # ModelScope-size UNet3D (≈1.41 B), 16×4×40×64, bf16, GPU
    python bench/train_step.py --preset paper --nproc 2   # data-parallel scaling: each variant in a torchrun group

Only torch, diffusers and deepspeed (plus this repo's model code) are imported: no Ray, no MLflow, so it
runs on a bare GPU box. Results: a table on stdout and one record per run appended to
``bench/results/train_step.json`` (``bench/_record.py``): settings, rows, the machine and a ``headline``
(per variant: step ms, ratio to plain torch, samples/s, peak GiB, MFU).

Variants (``--variants``):
  torch        plain PyTorch: bf16 autocast, fp32 weights, fused AdamW (DDP when world > 1)
  zero2        DeepSpeed ZeRO-2 with our training config (v2w_core.train.deepspeed_config), torch fused AdamW
  zero2_dsadam ZeRO-2 with DeepSpeed's own FusedAdam (GPU) instead of torch's
  zero3        DeepSpeed ZeRO-3 with our training config
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._record import append_record, machine_info, machine_summary, new_record

logger = logging.getLogger("bench.train_step")

PRESETS: dict[str, dict[str, Any]] = {
    # Tiny: what the CPU tests train (the tiny_unet3d preset, ≈1.7 M params); pixels, 8 frames of 32×32.
    "tiny": {
        "model": "tiny_unet3d",
        "overrides": {"sample_size": [32, 32]},
        "frames": 8,
        "channels": 3,
        "hw": (32, 32),
        "batch": 2,
        "precision": "fp32",
        "steps": 6,
        "warmup": 2,
    },
    # Paper: ModelScope text-to-video UNet (≈1.41 B) on 16 frames of 4×40×64 latents, bf16.
    "paper": {
        "model": "modelscope_unet3d",
        "overrides": {},
        "frames": 16,
        "channels": 4,
        "hw": (40, 64),
        "batch": 2,
        "precision": "bf16",
        "steps": 10,
        "warmup": 3,
    },
}
ACTION_DIM = 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_dist(device_type: str) -> tuple[int, int]:
    """One process group for every variant (DeepSpeed needs one even on a single device)."""
    import torch.distributed as dist

    if "RANK" not in os.environ:  # single process: world of one on a private port
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )  # fmt: skip
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _build_model(
    preset: dict[str, Any], device: Any, grad_ckpt: str | None, compile_regions: str | None = None
) -> Any:
    from v2w_core.models.causalize import causalize
    from v2w_core.models.presets import PRESETS as MODEL_PRESETS
    from v2w_core.models.world_model import WorldModel, WorldModelConfig

    cfg = MODEL_PRESETS[preset["model"]]().model_dump()
    for k, v in preset["overrides"].items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    model = WorldModel(WorldModelConfig.model_validate(cfg))
    causalize(model, "extrapolative")
    model.set_action_space({"type": "continuous", "dim": ACTION_DIM})
    if grad_ckpt:
        model.enable_gradient_checkpointing(grad_ckpt)  # "block" or "layer"
    if compile_regions:  # the training loop's switch (model.compile_blocks, model.compile_regions)
        model.compile_blocks("inductor", regions=compile_regions)
    return model.to(device)


def _batch(preset: dict[str, Any], device: Any, seed: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    b, f, c, (h, w) = preset["batch"], preset["frames"], preset["channels"], preset["hw"]
    x0 = torch.randn(b, f, c, h, w, generator=g).to(device)
    actions = torch.randn(b, f, ACTION_DIM, generator=g).to(device)
    return x0, actions


def _count_flops(preset: dict[str, Any], device: Any) -> int:
    """Forward + backward FLOPs of one micro-batch on a plain (un-wrapped) model."""
    import torch

    from v2w_core.diffusion.losses import diffusion_forcing_loss
    from v2w_core.diffusion.schedule import NoiseSchedule
    from v2w_core.train.flops import count_flops

    # Counted at batch 1 and scaled (FLOPs are linear in the batch): the plain fp32-weight model at the
    # full batch may not fit next to nothing else where a ZeRO variant would (batch 4 on an H100).
    one = {**preset, "batch": 1}
    model = _build_model(one, device, grad_ckpt=None)
    x0, actions = _batch(one, device, 0)
    dtype = torch.bfloat16 if preset["precision"] == "bf16" else torch.float32
    schedule = NoiseSchedule()

    def run() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = diffusion_forcing_loss(model, x0, actions, schedule)
        loss.backward()

    flops = count_flops(run) * preset["batch"]
    model.zero_grad(set_to_none=True)
    model.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return flops


def _peak_mem_gib(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB (process-wide peak RSS)


def _run_variant(
    name: str, preset: dict[str, Any], device: Any, world: int, args: argparse.Namespace
) -> dict[str, Any]:
    import torch

    from v2w_core.diffusion.losses import diffusion_forcing_loss
    from v2w_core.diffusion.schedule import NoiseSchedule

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    dtype = torch.bfloat16 if preset["precision"] == "bf16" else torch.float32
    model = _build_model(preset, device, args.grad_ckpt, args.compile_blocks)
    schedule = NoiseSchedule()
    x0, actions = _batch(preset, device, int(os.environ.get("RANK", "0")) + 1)

    if name == "torch":
        net: Any = model
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, gradient_as_bucket_view=True, static_graph=True
            )
        if args.compile:
            net = torch.compile(net)
        opt = torch.optim.AdamW(
            model.parameters(),
            lr=1e-5,
            fused=device.type == "cuda",
            foreach=None if device.type == "cuda" else True,
        )

        def step() -> float:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss, _ = diffusion_forcing_loss(net, x0, actions, schedule)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())
    else:
        import deepspeed

        from v2w_core.train.config import TrainConfig
        from v2w_core.train.deepspeed_config import build_deepspeed_config, build_torch_optimizer

        cfg = TrainConfig.from_dict({
            "experiment": "bench", "storage_path": "/tmp", "zero_stage": 3 if name == "zero3" else 2,
            "precision": preset["precision"], "micro_batch_per_worker": preset["batch"],
            "optim": {"lr": 1e-5, "warmup_steps": 1, "implementation": "deepspeed" if name == "zero2_dsadam" else "torch"},
            "scaling": {"num_workers": world, "use_gpu": device.type == "cuda"},
        })  # fmt: skip
        opt = build_torch_optimizer(model.parameters(), cfg, device_type=device.type)
        engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=opt,
            model_parameters=model.parameters() if opt is None else None,
            config=_patched(build_deepspeed_config(cfg, world_size=world), args.ds_set),
            dist_init_required=False,
        )
        if args.compile:
            engine.compile()

        def velocity(x: Any, t: Any, a: Any = None, m: Any = None) -> Any:
            return engine(x.to(dtype), t, a.to(dtype) if a is not None else None, m)

        def step() -> float:
            loss, _ = diffusion_forcing_loss(velocity, x0, actions, schedule)
            engine.backward(loss)
            engine.step()
            return float(loss.detach())

    times: list[float] = []
    first_step_s = None
    for i in range(preset["warmup"] + preset["steps"]):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = step()  # float(loss) synchronises
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        first_step_s = dt if first_step_s is None else first_step_s
        print(f"[{name}] step {i} {1000 * dt:.1f} ms loss {loss:.4f}", file=sys.stderr, flush=True)
        if i >= preset["warmup"]:
            times.append(dt)
    profile = _profile(step, device, name) if args.profile else None
    result = {
        "variant": name,
        "step_time_s": statistics.median(times),
        "step_time_min_s": min(times),
        # the first step pays for compilation (--compile/--compile-blocks) and cuDNN autotuning
        "first_step_s": first_step_s,
        "profile": profile,
        "peak_mem_gib": _peak_mem_gib(device),
        "params": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
    }
    return result


def _patched(ds: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``--ds-set a.b=value`` overrides (YAML values) to the DeepSpeed config, for tuning runs."""
    import yaml

    for item in sets:
        dotted, _, raw = item.partition("=")
        node = ds
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(raw)
    return ds


#: Kernel-name patterns of the profile's buckets, first match wins (cuBLAS/cuDNN/CUTLASS/Triton names).
KERNEL_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")),
    ("conv", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "winograd")),
    ("gemm", ("gemm", "gemv", "nvjet", "cutlass", "xmma", "sm90_", "cublas")),
    ("optimizer", ("multi_tensor", "adam", "fused_adamw")),
    ("inductor (fused triton)", ("triton_",)),
    ("norm", ("norm",)),
    ("copies / casts", ("copy", "memcpy", "memset", "cast", "transpose", "nchw", "nhwc")),
    ("communication", ("nccl",)),
)


def kernel_buckets(kernels: list[tuple[str, float, int]]) -> dict[str, dict[str, float]]:
    """(name, device ms, calls) per kernel → ms and calls per bucket of :data:`KERNEL_BUCKETS`."""
    out: dict[str, dict[str, float]] = {}
    for name, ms, calls in kernels:
        low = name.lower()
        bucket = next((b for b, pats in KERNEL_BUCKETS if any(p in low for p in pats)), "other (eager)")
        slot = out.setdefault(bucket, {"ms": 0.0, "calls": 0})
        slot["ms"] += ms
        slot["calls"] += calls
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms"]))


def _profile(step: Any, device: Any, name: str) -> dict[str, Any]:
    """One step under torch.profiler: where the time goes (top ops by device and by host time, and the
    device time per kernel bucket, which the record keeps)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    wall_ms = 1000 * (time.perf_counter() - t0)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"--- profile {name}: top ops by {sort}")
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=70))
    if device.type != "cuda":
        return {"wall_ms": wall_ms}
    print(f"--- profile {name}: top ops by self_cpu_time_total")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=70))
    kernels = [
        (e.key, e.self_device_time_total / 1000, e.count)
        for e in prof.key_averages()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0
    ]
    buckets = kernel_buckets(kernels)
    device_ms = sum(b["ms"] for b in buckets.values())
    print(f"--- profile {name}: {device_ms:.1f} ms of kernels in a {wall_ms:.1f} ms profiled step")
    for bucket, b in buckets.items():
        print(
            f"  {bucket:<26}{b['ms']:>10.1f} ms {100 * b['ms'] / device_ms:>6.1f} % {int(b['calls']):>8} calls"
        )
    return {
        "wall_ms": round(wall_ms, 1),
        "kernel_ms": round(device_ms, 1),
        "buckets": {k: {"ms": round(v["ms"], 2), "calls": int(v["calls"])} for k, v in buckets.items()},
        "top_kernels": [(n, round(ms, 2), c) for n, ms, c in sorted(kernels, key=lambda k: -k[1])[:15]],
    }


def _child(args: argparse.Namespace) -> int:
    """Run one variant in this process (or this torchrun rank) and write its row as JSON (rank 0)."""
    import torch

    device_type = args.device
    os.environ.setdefault("DS_ACCELERATOR", device_type)
    preset = _preset(args)
    rank, world = _init_dist(device_type)
    device = torch.device("cpu")
    if device_type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    from v2w_core.train.flops import mfu, peak_flops_for

    flops = _count_flops(preset, device)
    peak = (
        peak_flops_for(torch.cuda.get_device_name(device), preset["precision"])
        if device.type == "cuda"
        else None
    )
    try:
        row = _run_variant(args.variants, preset, device, world, args)
        row["samples_per_s"] = preset["batch"] * world / row["step_time_s"]
        row["mfu"] = mfu(flops * world, row["step_time_s"], peak, world)
    except torch.OutOfMemoryError:
        row = {"variant": args.variants, "error": "out of memory"}
    row.update(
        flops_per_micro_batch=flops,
        peak_flops_per_device=peak,
        world_size=world,
        machine=machine_info(("diffusers", "deepspeed")),
    )
    if rank == 0:
        Path(args.child_out).write_text(json.dumps(row))
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


def _preset(args: argparse.Namespace) -> dict[str, Any]:
    preset = dict(PRESETS[args.preset])
    if args.batch:
        preset["batch"] = args.batch
    if args.steps:
        preset["steps"] = args.steps
    if args.device == "cpu":
        preset["precision"] = "fp32"  # bf16 convs on CPU measure the CPU's bf16 path, not training
    return preset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--variants", default="torch,zero2,zero2_dsadam,zero3")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument(
        "--nproc", type=int, default=1, help="processes (GPUs) per variant, launched with torchrun"
    )
    p.add_argument("--batch", type=int, default=None, help="micro batch per device (preset default)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument(
        "--grad-ckpt",
        nargs="?",
        const="block",
        choices=("block", "layer", "selective"),
        default=None,
        help="activation checkpointing per UNet block (bare flag), per layer inside the blocks, or per layer "
        "keeping GEMM/conv/attention outputs (selective)",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (engine.compile for DeepSpeed)"
    )
    p.add_argument(
        "--compile-blocks",
        nargs="?",
        const="block",
        choices=("block", "layer"),
        default=None,
        help="torch.compile per UNet block (bare flag) or per layer inside the blocks (train config "
        "model.compile_blocks, model.compile_regions)",
    )
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "train_step.json"))
    p.add_argument(
        "--profile", action="store_true", help="print a torch.profiler table of one step per variant"
    )
    p.add_argument(
        "--ds-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a DeepSpeed config key (e.g. zero_optimization.overlap_comm=false)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        return _child(args)

    # Each variant runs in its own process(es): DeepSpeed engines and CUDA caches from one variant must
    # not eat the memory (or skew the timing) of the next.
    import subprocess
    import tempfile

    preset = _preset(args)
    rows: list[dict[str, Any]] = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name == "zero2_dsadam" and args.device != "cuda":
            continue  # DeepSpeedCPUAdam is a separate JIT build; the CPU path uses torch AdamW
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            child_out = tmp.name
        launcher = [sys.executable]
        if args.nproc > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
        cmd = [*launcher, __file__, "--child", "--child-out", child_out, "--variants", name,
               "--preset", args.preset, "--device", args.device]  # fmt: skip
        for flag, value in (("--batch", args.batch), ("--steps", args.steps)):
            if value:
                cmd += [flag, str(value)]
        cmd += ["--grad-ckpt", args.grad_ckpt] if args.grad_ckpt else []
        cmd += ["--compile"] * args.compile + ["--profile"] * args.profile
        cmd += ["--compile-blocks", args.compile_blocks] if args.compile_blocks else []
        for item in args.ds_set:
            cmd += ["--ds-set", item]
        proc = subprocess.run(cmd, check=False)
        text = Path(child_out).read_text() if Path(child_out).exists() else ""
        Path(child_out).unlink(missing_ok=True)
        rows.append(json.loads(text) if text else {"variant": name, "error": f"exit code {proc.returncode}"})

    ok = [r for r in rows if "error" not in r]
    flops = ok[0]["flops_per_micro_batch"] if ok else None
    base = next((r for r in ok if r["variant"] == "torch"), None)
    world = args.nproc
    flops_txt = f"{flops / preset['batch']:.3g}" if flops else "?"
    print(f"\npreset={args.preset} device={args.device} world={world} batch/device={preset['batch']} "
          f"frames={preset['frames']} {preset['channels']}x{preset['hw'][0]}x{preset['hw'][1]} {preset['precision']} "
          f"grad_ckpt={args.grad_ckpt} compile={args.compile} compile_blocks={args.compile_blocks} "
          f"flops/sample={flops_txt}")  # fmt: skip
    print(f"{'variant':<14}{'step ms':>10}{'vs torch':>10}{'samples/s':>11}{'peak GiB':>10}{'MFU %':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<14}  {r['error']}")
            continue
        rel = r["step_time_s"] / base["step_time_s"] if base else float("nan")
        m = f"{100 * r['mfu']:.1f}" if r.get("mfu") is not None else "-"
        print(f"{r['variant']:<14}{1000 * r['step_time_s']:>10.1f}{rel:>10.2f}{r['samples_per_s']:>11.2f}"
              f"{r['peak_mem_gib']:>10.2f}{m:>8}")  # fmt: skip
    record = new_record(
        "train_step",
        # the machine as a rank saw it (its GPU); this process's when every variant failed
        machine=ok[0]["machine"] if ok else machine_info(("diffusers", "deepspeed")),
        preset=args.preset,
        device=args.device,
        world_size=world,
        batch_per_device=preset["batch"],
        frames=preset["frames"],
        frame_shape=[preset["channels"], *preset["hw"]],
        precision=preset["precision"],
        grad_ckpt=args.grad_ckpt,
        compile=args.compile,
        compile_blocks=args.compile_blocks,
        ds_set=args.ds_set,
        flops_per_micro_batch=flops,
        results=[{k: v for k, v in r.items() if k != "machine"} for r in rows],
    )
    record["headline"] = headline(record)
    append_record(args.out, record)
    print(f"appended to {args.out}")
    return 0 if ok else 1


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The figures the READMEs quote. Issue 18's: ``mfu`` (ZeRO-2, the real loop's engine: the better of
    ``zero2`` and ``zero2_dsadam``), ``mfu_torch``, ``zero2_over_torch`` (step time, same batch, same
    run), ``micro_batch``, ``peak_gib`` (that ZeRO-2 row), ``device``; then per variant: step ms, step
    time relative to plain torch (same world size), samples/s, peak GiB, MFU, first-step seconds
    (compilation); failed variants with their error."""
    ok = {r["variant"]: r for r in record["results"] if "error" not in r}
    base = ok.get("torch")
    zero2 = [ok[v] for v in ("zero2", "zero2_dsadam") if v in ok]
    best = min(zero2, key=lambda r: r["step_time_s"]) if zero2 else None

    def per(fn: Any) -> dict[str, Any]:
        return {v: fn(r) for v, r in ok.items()}

    def rounded(x: float | None, nd: int) -> float | None:
        return None if x is None else round(x, nd)

    return {
        "mfu": rounded(best.get("mfu"), 3) if best else None,
        "mfu_torch": rounded(base.get("mfu"), 3) if base else None,
        "zero2_over_torch": round(best["step_time_s"] / base["step_time_s"], 3) if best and base else None,
        "micro_batch": record["batch_per_device"],
        "peak_gib": round(best["peak_mem_gib"], 2) if best else None,
        "device": record["machine"].get("cuda_device") or record["device"],
        "grad_ckpt": record["grad_ckpt"],
        "compile_blocks": record.get("compile_blocks", False),
        "preset": record["preset"],
        "world_size": record["world_size"],
        "step_ms": per(lambda r: round(1000 * r["step_time_s"], 1)),
        "vs_torch": per(lambda r: round(r["step_time_s"] / base["step_time_s"], 2)) if base else {},
        "samples_per_s": per(lambda r: round(r["samples_per_s"], 2)),
        "peak_mem_gib": per(lambda r: round(r["peak_mem_gib"], 2)),
        "mfu_per_variant": per(lambda r: rounded(r.get("mfu"), 3)),
        "first_step_s": per(lambda r: rounded(r.get("first_step_s"), 1)),
        "errors": {r["variant"]: r["error"] for r in record["results"] if "error" in r},
        "machine": machine_summary(record["machine"], load=True),
    }


if __name__ == "__main__":
    sys.exit(main())
