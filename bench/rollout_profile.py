"""Where a streaming denoising step spends its GPU time, and what each fast-path option buys (issue 10).

One guided newest-frame step (both guidance branches in one batch) of the paper-size causal UNet3D on a
cached 15-frame history, bf16. Two parts:

* **kernel breakdown**: ``torch.profiler`` over eager steps; kernel time summed by category (GEMM,
  convolution, attention, normalisation, layout copies, elementwise) and the top kernels by time;
* **variants**: milliseconds per step replayed as a CUDA graph for: the default path; cuDNN autotuning
  (``cudnn.benchmark``); channels-last (NHWC) weights and activations; the replay attention as GEMMs or
  as a broadcast reduction (``_reduce``); ``torch.compile`` (its compile time too) — and per-step time
  at rollout batches 1–64 for ``--batch-variant``, with effective TFLOP/s. ``--profile-variants`` get a
  kernel breakdown too (compiled ones show inductor's fused kernels).

    python bench/rollout_profile.py                  # ~8 min on one H100/H200 (three cold compiles)
    python bench/rollout_profile.py --preset tiny    # CPU smoke test (no kernel table)

Prints tables and appends one record per run to bench/results/rollout_profile.json (``bench/_record.py``;
rewritten in place after every row): variants, batched rows, the machine and a ``headline`` (ms per step,
s per frame, TFLOP/s and compile seconds per variant, the fastest, kernel time of the profiled variants,
encode_history ms, batched TFLOP/s).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import rollout_gpu as rg

from bench._record import append_record, machine_info, machine_summary, new_record, rounded
from v2w_core.diffusion.fast_rollout import FastPathConfig, FastStreamer, set_conv_memory_format

RESULTS = ROOT / "bench" / "results" / "rollout_profile.json"
logger = logging.getLogger("bench.rollout_profile")

#: Kernel-name patterns per category, first match wins (cuBLAS/cuDNN/CUTLASS/inductor naming).
CATEGORIES = [
    # inductor's generated kernels first: their names list the fused ops ("triton_poi_fused_convolution_…")
    ("fused_reduction", r"triton_red|triton_per"),
    ("fused_pointwise", r"triton_poi"),
    ("attention", r"fmha|flash|attention|softmax"),
    ("convolution", r"conv|implicit_gemm|winograd|fprop|dgrad|xmma_fprop|cudnn"),
    ("layout", r"nchwToNhwc|nhwcToNchw|transpose|permute|copy|cat_|CatArray|contiguous"),
    ("gemm", r"gemm|cutlass|nvjet|sm90_xmma|cublas|matmul|splitK"),
    ("normalisation", r"norm|welford|RowwiseMoments"),
    ("reduction", r"reduce"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise"),
]


def category(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return cat
    return "other"


def setup(model, batch: int, context: int, device: torch.device, runner: FastStreamer):
    """History cache for ``batch`` rollouts and the guided newest-frame inputs (2·batch rows)."""
    c, (h, w) = model.config.data_channels, model.config.sample_size
    dt = next(model.parameters()).dtype
    g = torch.Generator(device="cpu").manual_seed(0)
    x_hist = torch.randn(batch, context, c, h, w, generator=g).to(device, dt)
    a = torch.randn(batch, context + 1, rg.ACTION_DIM, generator=g).to(device, dt)
    t_hist = torch.zeros(batch, context, dtype=torch.long, device=device)
    cache = runner.encode_history(x_hist, t_hist, a[:, :-1], None)
    x_new = torch.randn(2 * batch, 1, c, h, w, generator=g).to(device, dt)
    t_new = torch.full((2 * batch, 1), 500, dtype=torch.long, device=device)
    a_new = torch.cat([a[:, -1:], torch.zeros_like(a[:, -1:])])
    return cache, (x_new, t_new, a_new, None)


def time_steps(runner: FastStreamer, cache, inputs, device: torch.device, iters: int) -> float:
    """Milliseconds per step (after the first call, which captures/compiles)."""
    runner.step_newest(*inputs, cache)
    rg.sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        runner.step_newest(*inputs, cache)
    rg.sync(device)
    return 1000 * (time.perf_counter() - t0) / iters


def time_encode(model, args, device: torch.device, iters: int = 3) -> float:
    """Milliseconds of one eager ``encode_history`` (batch 1, channels-last, bf16 autocast): the per-frame
    cost a rollout pays besides its denoising steps (includes making the random inputs: small beside the
    15-frame forward at paper size)."""
    torch.backends.cudnn.benchmark = True
    runner = FastStreamer(model, variant_config("channels_last", args, device, cuda_graph=False))
    setup(model, 1, args.context, device, runner)  # warm-up (cuDNN autotune, allocator)
    rg.sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        setup(model, 1, args.context, device, runner)
    rg.sync(device)
    set_conv_memory_format(model, torch.contiguous_format)
    return 1000 * (time.perf_counter() - t0) / iters


def kernel_breakdown(runner: FastStreamer, cache, inputs, device: torch.device, steps: int) -> dict[str, Any]:
    """Per-step kernel time by category and the top kernels, from eager steps under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    runner.step_newest(*inputs, cache)  # warm-up (cuDNN autotune, allocator)
    rg.sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            runner.step_newest(*inputs, cache)
        rg.sync(device)
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        us = getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0)
        per_kernel[e.name][0] += us
        per_kernel[e.name][1] += 1
    by_cat: dict[str, float] = defaultdict(float)
    count_by_cat: dict[str, int] = defaultdict(int)
    for name, (us, n) in per_kernel.items():
        by_cat[category(name)] += us / steps / 1000
        count_by_cat[category(name)] += n // steps
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:25]
    return {
        "kernel_ms_per_step": sum(by_cat.values()),
        "kernels_per_step": sum(n for _, n in per_kernel.values()) // steps,
        "by_category_ms": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
        "kernels_by_category": dict(count_by_cat),
        "top_kernels": [
            {"name": name[:160], "category": category(name), "ms_per_step": us / steps / 1000,
             "calls_per_step": n // steps}
            for name, (us, n) in top
        ],
    }


VARIANTS = {
    "default": {},
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "channels_last": {"cudnn_benchmark": True, "channels_last": True},
    "channels_last_reduce": {"cudnn_benchmark": True, "channels_last": True, "kernel": "reduce"},
    "compile": {"cudnn_benchmark": True, "compile": "default"},
    "compile_channels_last": {"cudnn_benchmark": True, "channels_last": True, "compile": "default"},
    "compile_reduce": {"cudnn_benchmark": True, "channels_last": True, "compile": "default", "kernel": "reduce"},
    # one symbolic-batch compile serves every batch after the first two sizes (batched rows)
    "compile_reduce_dynamic": {"cudnn_benchmark": True, "channels_last": True, "compile": "default",
                               "kernel": "reduce", "dynamic": None},
    "compile_max_autotune": {"cudnn_benchmark": True, "channels_last": True,
                             "compile": "max-autotune-no-cudagraphs"},
    # issue 19: inductor freezing (parameter-only work folded: FastPathConfig.freeze), and inductor's
    # GEMM/conv template autotuning + coordinate-descent tuning of its reductions
    "compile_reduce_frozen": {"cudnn_benchmark": True, "channels_last": True, "compile": "default",
                              "kernel": "reduce", "freeze": True},
    "compile_max_autotune_reduce_frozen": {"cudnn_benchmark": True, "channels_last": True,
                                           "compile": "max-autotune-no-cudagraphs", "kernel": "reduce",
                                           "freeze": True},
}


def variant_config(name: str, args, device: torch.device, cuda_graph: bool) -> FastPathConfig:
    opts = VARIANTS[name]
    return FastPathConfig(autocast="bfloat16" if device.type == "cuda" else None,
                          cuda_graph=cuda_graph and device.type == "cuda", compile=opts.get("compile"),
                          compile_dynamic=opts.get("dynamic", False), freeze=bool(opts.get("freeze")),
                          few_query_kernel=opts.get("kernel", "gemm"),
                          channels_last=bool(opts.get("channels_last")),
                          compile_cache_dir=args.compile_cache, encode_batch_chunk=8)


def run_variant(model, name: str, args, device: torch.device, batch: int = 1) -> dict[str, Any]:
    opts = VARIANTS[name]
    torch.backends.cudnn.benchmark = bool(opts.get("cudnn_benchmark"))
    set_conv_memory_format(model, torch.contiguous_format)  # undo an earlier variant's channels-last
    runner = FastStreamer(model, variant_config(name, args, device, cuda_graph=True))
    rg.reset_peak(device)
    cache, inputs = setup(model, batch, args.context, device, runner)
    t0 = time.perf_counter()
    ms = time_steps(runner, cache, inputs, device, args.iters)
    out = {"ms_per_step": ms, "batch": batch, "first_call_and_timing_s": time.perf_counter() - t0,
           "peak_gib": rg.peak_gib(device), "cuda_graphs": len(runner._graphs)}
    if opts.get("compile"):
        out["compile_seconds"] = runner.compile_seconds
    if args.profile and batch == 1 and device.type == "cuda" and name in args.profile_variants:
        # Same options without our graph capture, so the profiler sees each kernel (a compiled variant
        # reuses the compiled code of this process: same shapes, same guards).
        plain = FastStreamer(model, variant_config(name, args, device, cuda_graph=False))
        out["kernels"] = kernel_breakdown(plain, cache, inputs, device, steps=3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(rg.PRESETS), default="paper")
    p.add_argument("--variants", default="channels_last,channels_last_reduce,compile_channels_last,compile_reduce")
    p.add_argument("--batches", default="1,8,32,64", help="batches timed for --batch-variant")
    p.add_argument("--batch-variant", default="compile_reduce_dynamic")
    p.add_argument("--profile-variants", default="channels_last,channels_last_reduce,compile_reduce",
                   help="variants whose batch-1 step gets a kernel breakdown (run without graph capture)")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--context", type=int, default=15)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--compile-cache", default=str(Path.home() / ".cache" / "v2w_inductor"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    args.profile_variants = set(args.profile_variants.split(","))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    t_start = time.perf_counter()
    _, model = rg.build("unet3d", args.preset, device)
    flops_args = argparse.Namespace(context=args.context)
    step_flops = rg.count_flops(model, flops_args, device)["step_newest"]  # guided, batch 1

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    record = new_record("rollout_profile", machine=machine_info(device=device_name), family="unet3d",
                        preset=args.preset, argv=sys.argv[1:], parameters=model.num_parameters(),
                        step_flops_batch1=step_flops, steps=args.steps, variants={}, batched=[])
    record["encode_history_ms"] = time_encode(model, args, device)
    logger.info("encode_history (batch 1, %d frames, eager bf16): %.1f ms", args.context,
                record["encode_history_ms"])
    for name in [v for v in args.variants.split(",") if v]:
        record["variants"][name] = rg.guarded(name, lambda name=name: run_variant(model, name, args, device))
        logger.info("%s: %s", name, {k: v for k, v in record["variants"][name].items() if k != "kernels"})
        write(record, args, t_start)  # a run stopped at its time limit keeps the rows so far
    for b in [int(b) for b in args.batches.split(",") if b]:
        row = rg.guarded(f"batch {b}", lambda b=b: run_variant(model, args.batch_variant, args, device, b))
        if "ms_per_step" in row:
            row["effective_tflops"] = b * step_flops / (row["ms_per_step"] / 1000) / 1e12
            row["ms_per_rollout_step"] = row["ms_per_step"] / b
        record["batched"].append({"batch": b, "variant": args.batch_variant, **row})
        logger.info("batch %d: %s", b, row)
        write(record, args, t_start)
    write(record, args, t_start)  # total_seconds; a run without rows still leaves its record
    print_tables(record, args.steps)
    print(f"appended to {args.out}")


def write(record: dict[str, Any], args, t_start: float) -> None:
    """This run's record, replacing the one written after the previous row (same run id)."""
    record["total_seconds"] = time.perf_counter() - t_start
    record["headline"] = headline(record)
    append_record(args.out, record)


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The figures bench/README.md quotes: per variant ms per step, seconds per frame at ``steps`` steps,
    TFLOP/s and compile seconds; the fastest variant; kernel ms and kernels per step of the profiled
    variants; eager encode_history ms; batched TFLOP/s per batch. Failed rows are left out."""
    ok = {n: r for n, r in record["variants"].items() if "ms_per_step" in r}
    flops, steps = record["step_flops_batch1"], record["steps"]
    best = min(ok.items(), key=lambda kv: kv[1]["ms_per_step"], default=None)
    return {
        "step_tflop": round(flops / 1e12, 3),
        "ms_per_step": {n: round(r["ms_per_step"], 2) for n, r in ok.items()},
        f"s_per_frame_at_{steps}_steps": {n: round(r["ms_per_step"] * steps / 1000, 3)
                                          for n, r in ok.items()},
        "tflops": {n: round(flops / (r["ms_per_step"] / 1000) / 1e12, 1) for n, r in ok.items()},
        "compile_seconds": {n: round(r["compile_seconds"]) for n, r in ok.items() if "compile_seconds" in r},
        "fastest_variant": best[0] if best else None,
        "fastest_ms_per_step": round(best[1]["ms_per_step"], 2) if best else None,
        "kernel_ms_per_step": {n: round(r["kernels"]["kernel_ms_per_step"], 2) for n, r in ok.items()
                               if r.get("kernels")},
        "kernels_per_step": {n: r["kernels"]["kernels_per_step"] for n, r in ok.items() if r.get("kernels")},
        "encode_history_ms": rounded(record.get("encode_history_ms"), 1),
        "batched_tflops": {str(r["batch"]): round(r["effective_tflops"], 1) for r in record["batched"]
                           if "effective_tflops" in r},
        "machine": machine_summary(record["machine"], f"torch {record['machine']['torch']}"),
    }  # fmt: skip


def print_tables(record: dict[str, Any], steps: int) -> None:
    print(f"rollout_profile: {record['machine']['device']}, torch {record['machine']['torch']}, "
          f"{record['parameters'] / 1e9:.2f} B params, step = {record['step_flops_batch1'] / 1e12:.2f} TFLOP")
    print(f"encode_history (batch 1, eager): {record.get('encode_history_ms', float('nan')):.1f} ms per frame")
    print(f"{'variant':<22} {'ms/step':>8} {'s/frame@' + str(steps):>11} {'TFLOP/s':>8} {'compile s':>9}")
    for name, r in record["variants"].items():
        if "error" in r:
            print(f"{name:<22} error: {r['error']}")
            continue
        tf = record["step_flops_batch1"] / (r["ms_per_step"] / 1000) / 1e12
        print(f"{name:<22} {r['ms_per_step']:>8.2f} {r['ms_per_step'] * steps / 1000:>11.3f} {tf:>8.1f} "
              f"{r.get('compile_seconds', 0):>9.0f}")
    print(f"batched: {record['batched'][0]['variant'] if record['batched'] else '-'}")
    print(f"{'batch':>5} {'ms/step':>8} {'ms/rollout-step':>15} {'TFLOP/s':>8} {'peak GiB':>8}")
    for r in record["batched"]:
        if "error" in r:
            print(f"{r['batch']:>5} error: {r['error']}")
            continue
        print(f"{r['batch']:>5} {r['ms_per_step']:>8.2f} {r['ms_per_rollout_step']:>15.2f} "
              f"{r['effective_tflops']:>8.1f} {rg.fmt(r['peak_gib'], '8.1f'):>8}")
    for name, r in record["variants"].items():
        k = r.get("kernels")
        if not k:
            continue
        print(f"kernels ({name}, no graph): {k['kernel_ms_per_step']:.2f} ms/step in {k['kernels_per_step']} kernels")
        for cat, ms in k["by_category_ms"].items():
            print(f"  {cat:<14} {ms:>7.2f} ms  {k['kernels_by_category'][cat]:>5} kernels")
        for t in k["top_kernels"][:15]:
            print(f"  {t['ms_per_step']:>7.3f} ms {t['calls_per_step']:>4}x [{t['category']}] {t['name'][:90]}")


if __name__ == "__main__":
    main()
