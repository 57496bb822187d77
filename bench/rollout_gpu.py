"""Rollout speed on a GPU: full window vs. streaming cache vs. CUDA graph vs. torch.compile (issue 10).

Paper-size models with random weights, causalized (extrapolative): the ModelScope UNet3D
(``modelscope_unet3d``, 1.41 B parameters) and the SVD UNet (``svd_unet``, 1.5 B) on 4×40×64 latents,
window 16 (15 history frames + the new one), 50 DDIM steps, causal action guidance (s = 2.5, both
branches in one batch). Rows per family:

* seconds per generated frame at one rollout for: full-window eager, streaming eager, streaming + CUDA
  graph, streaming + graph + ``torch.compile`` (compile time reported; inductor's FX-graph cache is on,
  so a second run with the same ``--compile-cache`` skips most of it);
* batched rollouts (``--batches``, streaming + CUDA graph): frames/s, effective TFLOP/s (FLOPs counted
  with ``FlopCounterMode`` on one ``encode_history`` and one ``step_newest`` at batch 1, times B), peak
  memory;
* agreement: the bf16 fast path (graph) vs. fp32 eager streaming on the same noise, one frame.

Timed paths run bf16 weights under bf16 autocast (the DDIM arithmetic stays fp32). Only torch, diffusers,
einops, safetensors, pydantic and pyyaml are needed.

    python bench/rollout_gpu.py                      # both families, ~8 min on one H100
    python bench/rollout_gpu.py --preset tiny        # CPU smoke test of every code path
    python bench/rollout_gpu.py --families unet3d --batches 1,8 --modes full,stream,graph

Prints a table and appends one record per run to bench/results/rollout_gpu.json (``bench/_record.py``;
the run's record is rewritten in place after every row, so a run stopped at a time limit keeps what it
measured): settings, families, the machine (device, torch/CUDA/diffusers) and a ``headline`` (per family:
s/frame per path, the fastest, the highest effective TFLOP/s and the largest peak memory of the batched
rows, bf16-vs-fp32 agreement).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import logging
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "rollout_gpu.json"
ACTION_DIM = 4
# graph_model: only the model's step captured (the path before issue 19); graph / compile: the history
# forward and whole DDIM steps (model, guidance, update) captured too; compile_frozen: compile with
# inductor freezing (parameters as constants: parameter-only work folded at compile time)
# compile_<knob>: compile with extra inductor config (FastPathConfig.inductor_config), one mode per knob so
# a run sets each against plain compile (issue 19): coordinate-descent tuning of the generated reduction and
# pointwise kernels' block sizes; GEMM template autotuning with epilogue fusion (max-autotune's options);
# combo kernels (horizontal fusion of independent small kernels, the step being ~1,600 of them)
TUNED_INDUCTOR: dict[str, dict[str, Any]] = {
    "compile_cdt": {"coordinate_descent_tuning": True},
    "compile_autotune": {"max_autotune": True, "coordinate_descent_tuning": True},
    "compile_combo": {"combo_kernels": True},
}
# <mode>_incremental (stream, compile): that path with the incremental history cache
# (RolloutConfig.history_encoding): the context is encoded once, then each generated frame is appended by
# one single-frame forward; its s / frame is the steady state (one append + the denoising steps)
MODES = ("full", "stream", "stream_incremental", "graph_model", "graph", "compile", "compile_frozen",
         "compile_incremental", *TUNED_INDUCTOR)
COMPILED = ("compile", "compile_frozen", "compile_incremental", *TUNED_INDUCTOR)
logger = logging.getLogger("bench.rollout_gpu")


def _import_models_without_io() -> None:
    """Import v2w_core.models without its package __init__ when pyarrow is missing.

    ``v2w_core/models/__init__.py`` re-exports io.py, which imports ``v2w_core.storage`` and with it
    pyarrow (for s3://); the rollout path needs none of that. Registering the package module by hand
    lets the submodules import on a machine with only torch + diffusers + einops + pydantic + pyyaml.
    """
    if "v2w_core.models" in sys.modules:
        return
    try:
        import pyarrow.fs  # noqa: F401
    except ImportError:
        pass
    else:
        return
    import v2w_core

    pkg = types.ModuleType("v2w_core.models")
    pkg.__path__ = [str(Path(v2w_core.__file__).parent / "models")]
    sys.modules["v2w_core.models"] = pkg
    logger.info("pyarrow not installed: importing v2w_core.models submodules directly")


sys.path.insert(0, str(ROOT))
_import_models_without_io()

from torch.utils.flop_counter import FlopCounterMode

from bench._record import append_record, machine_info, machine_summary, new_record
from v2w_core.diffusion.fast_rollout import FastPathConfig, FastStreamer
from v2w_core.diffusion.rollout import RolloutConfig, rollout
from v2w_core.models.causalize import causalize
from v2w_core.models.presets import modelscope_unet3d, svd_unet, tiny_svd, tiny_unet3d
from v2w_core.models.world_model import WorldModel

PRESETS = {
    "paper": {"unet3d": modelscope_unet3d, "svd": svd_unet},
    "tiny": {"unet3d": tiny_unet3d, "svd": tiny_svd},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(family: str, preset: str, device: torch.device) -> tuple[WorldModel, WorldModel]:
    """(fp32 model, bf16 copy), built directly on ``device`` with random weights, causalized."""
    torch.manual_seed(0)
    with torch.device(device):
        model = WorldModel(PRESETS[preset][family](action_space={"type": "continuous", "dim": ACTION_DIM}))
        causalize(model, "extrapolative")
        # Tensors made with the legacy torch.Tensor([...]) constructor (SVD's AlphaBlender.mix_factor)
        # ignore the default-device context: move the stragglers.
        model.to(device)
        with torch.no_grad():  # the action head is zero-initialised: make guidance do something
            for p in model.action_encoder.mlp[-1].parameters():
                p.normal_(0, 0.02)
    model.eval().requires_grad_(False)  # inference only (FlopCounterMode's module hooks need this too)
    timed_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU: fp32 smoke test
    return model, copy.deepcopy(model).to(timed_dtype)


def inputs(model: WorldModel, batch: int, context: int, frames: int, device: torch.device) -> tuple[Any, ...]:
    g = torch.Generator(device="cpu").manual_seed(batch)
    c, (h, w) = model.config.data_channels, model.config.sample_size
    ctx = torch.randn(batch, context, c, h, w, generator=g).to(device)
    acts = torch.randn(batch, context + frames - 1, ACTION_DIM, generator=g).to(device)
    return ctx, acts


class TimedHistory:
    """A runner whose ``encode_history`` calls are timed (synchronised before and after), so a row can
    split a frame's time into the history forward and the denoising steps; everything else is the
    runner's own (``denoise_newest`` included, so the rollout takes the same path)."""

    def __init__(self, runner: Any, device: torch.device) -> None:
        self.runner, self.device = runner, device
        self.seconds = 0.0  # history forwards: encodes and appends
        self.append_seconds = 0.0
        self.appends = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)

    def _timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
        sync(self.device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sync(self.device)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        return out, seconds

    def encode_history(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self.runner.encode_history, *args, **kwargs)[0]

    def append_history(self, *args: Any, **kwargs: Any) -> Any:
        out, seconds = self._timed(self.runner.append_history, *args, **kwargs)
        self.append_seconds += seconds
        self.appends += 1
        return out


def encoding_of(mode: str) -> str:
    """The rollout's history encoding on a mode's path."""
    return "incremental" if mode.endswith("_incremental") else "recompute"


def timed_rollout(
    model: WorldModel,
    runner: Any,
    args: argparse.Namespace,
    batch: int,
    frames: int,
    mode: str,
    device: torch.device,
    history_encoding: str = "recompute",
) -> tuple[float, torch.Tensor]:
    """Seconds per generated frame (after a warm-up: one frame, two with the incremental cache so its
    append runs too), and the frames."""
    cfg = RolloutConfig(num_inference_steps=args.steps, window=args.context + 1, mode=mode,
                        history_encoding=history_encoding)  # fmt: skip
    ctx, acts = inputs(model, batch, args.context, max(frames, 2), device)
    gen = torch.Generator(device=device).manual_seed(1)
    warm = 2 if history_encoding == "incremental" else 1
    rollout(
        model, ctx, acts, warm, cfg.model_copy(update={"num_inference_steps": 2}), generator=gen, runner=runner
    )
    sync(device)
    gen = torch.Generator(device=device).manual_seed(1)
    t0 = time.perf_counter()
    out = rollout(model, ctx, acts, frames, cfg, generator=gen, runner=runner)
    sync(device)
    return (time.perf_counter() - t0) / frames, out


def history_split(
    model: WorldModel, runner: Any, args: argparse.Namespace, sec: float, path: str, device: torch.device,
    encoding: str,
) -> dict[str, float]:
    """The same rollout again with the history forwards timed alone: history ms per frame and denoising ms
    per step from ``sec`` (the untimed run's seconds per frame). With the incremental cache, the steady
    state — one append per frame instead of the first frame's encode — replaces ``seconds_per_frame``
    (the measured average, first encode included, stays as ``seconds_per_frame_with_encode``)."""
    timed = TimedHistory(runner, device)
    timed_rollout(model, timed, args, 1, args.frames, path, device, encoding)
    out = {"history_ms_per_frame": 1000 * timed.seconds / args.frames}
    out["denoise_ms_per_step"] = (1000 * sec - out["history_ms_per_frame"]) / args.steps
    if timed.appends:
        out["seconds_per_frame_with_encode"] = sec
        out["history_ms_per_frame"] = 1000 * timed.append_seconds / timed.appends
        out["seconds_per_frame"] = (out["history_ms_per_frame"] + args.steps * out["denoise_ms_per_step"]) / 1000
        out["ms_per_step"] = 1000 * out["seconds_per_frame"] / args.steps
    return out


@torch.no_grad()
def count_flops(model: WorldModel, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """FLOPs of one encode_history (batch 1) and one guided step_newest (batch 1, both branches)."""
    c, (h, w) = model.config.data_channels, model.config.sample_size
    dt = next(model.parameters()).dtype
    x = torch.randn(2, args.context + 1, c, h, w, device=device, dtype=dt)
    t = torch.full((2, args.context + 1), 20, device=device)
    a = torch.randn(2, args.context + 1, ACTION_DIM, device=device, dtype=dt)
    counter = FlopCounterMode(display=False)
    with counter:
        cache = model.encode_history(x[:1, :-1], t[:1, :-1], a[:1, :-1])
    encode = counter.get_total_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        model.step_newest(x[:, -1:], t[:, -1:], a[:, -1:], None, cache)
    step = counter.get_total_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, t, a)
    return {"encode_history": encode, "step_newest": step, "window_forward": counter.get_total_flops()}


@torch.no_grad()
def cache_gib(model: WorldModel, args: argparse.Namespace, device: torch.device) -> float:
    """Size of one rollout's history cache (temporal K/V + conv history terms): what bounds the batch."""
    c, (h, w) = model.config.data_channels, model.config.sample_size
    dt = next(model.parameters()).dtype
    x = torch.zeros(1, args.context, c, h, w, device=device, dtype=dt)
    t = torch.zeros(1, args.context, dtype=torch.long, device=device)
    a = torch.zeros(1, args.context, ACTION_DIM, device=device, dtype=dt)
    return model.encode_history(x, t, a).nbytes() / 2**30


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one row; an error (OOM, a compile failure) is recorded, not fatal, so one GPU run gives all rows."""
    try:
        return fn()
    except (RuntimeError, AssertionError, ValueError) as err:  # torch.OutOfMemoryError is a RuntimeError
        logger.exception("%s failed", name)
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}


def bench_family(
    family: str,
    args: argparse.Namespace,
    device: torch.device,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every row of one family; ``on_row(partial record)`` after each batched row (a run stopped at its
    time limit keeps what it measured)."""
    t0 = time.perf_counter()
    fp32, model = build(family, args.preset, device)
    sync(device)
    out: dict[str, Any] = {
        "family": family,
        "parameters": model.num_parameters(),
        "latent": [model.config.data_channels, *model.config.sample_size],
        "build_seconds": time.perf_counter() - t0,
    }
    logger.info("%s: %.2f B params, built in %.0f s", family, out["parameters"] / 1e9, out["build_seconds"])
    cl = args.channels_last
    kernel = args.few_query_kernel
    bf16 = (
        FastPathConfig(autocast="bfloat16", cuda_graph=False, channels_last=cl, few_query_kernel=kernel)
        if device.type == "cuda"
        else FastPathConfig(few_query_kernel=kernel)
    )
    graph_cfg = FastPathConfig(
        autocast=bf16.autocast, cuda_graph=True, encode_batch_chunk=args.encode_chunk, channels_last=cl,
        few_query_kernel=kernel,
    )

    def compile_cfg(**kw: Any) -> FastPathConfig:
        return FastPathConfig(
            autocast=bf16.autocast, cuda_graph=True, compile=args.compile_mode,
            compile_cache_dir=args.compile_cache, channels_last=cl, few_query_kernel=kernel,
            encode_batch_chunk=args.encode_chunk, compile_encode=args.compile_encode, **kw,
        )

    # ---- agreement: bf16 fast path vs. fp32 eager streaming, same noise, one frame (the fp32 frame is
    # kept for the fastest path's agreement below)
    reference: list[torch.Tensor] = []

    def agree(fast: torch.Tensor) -> dict[str, Any]:
        ref = reference[0]
        return {
            "rel_l2": ((fast - ref).norm() / ref.norm()).item(),
            "max_abs": (fast - ref).abs().max().item(),
            "ref_abs_max": ref.abs().max().item(),
        }

    def agreement() -> dict[str, Any]:
        reference.append(timed_rollout(fp32, None, args, 1, 1, "streaming", device)[1])
        return agree(timed_rollout(model, FastStreamer(model, graph_cfg), args, 1, 1, "streaming", device)[1])

    out["agreement_bf16_graph_vs_fp32_eager"] = guarded("agreement", agreement)
    fp32.to("meta")  # free the fp32 weights before the timed rows
    reset_peak(device)
    out["flops_batch1"] = flops = count_flops(model, args, device)
    out["history_cache_gib_per_rollout"] = cache_gib(model, args, device)
    per_frame_flops = flops["encode_history"] + args.steps * flops["step_newest"]

    # ---- one rollout, each path
    single: dict[str, Any] = {}
    runners: dict[str, FastStreamer] = {}
    for mode in args.modes:

        def row(mode: str = mode) -> dict[str, Any]:
            reset_peak(device)
            if mode == "full":
                runner, path = None, "full"
            elif mode in ("stream", "stream_incremental"):
                runner, path = FastStreamer(model, bf16), "streaming"
            elif mode == "graph_model":
                model_only = dataclasses.replace(graph_cfg, graph_ddim=False, graph_encode=False)
                runner, path = FastStreamer(model, model_only), "streaming"
            elif mode == "graph":
                runner, path = FastStreamer(model, graph_cfg), "streaming"
            else:
                cfg = compile_cfg(freeze=mode == "compile_frozen", inductor_config=TUNED_INDUCTOR.get(mode))
                runner, path = FastStreamer(model, cfg), "streaming"
            encoding = encoding_of(mode)
            if mode == "full" and device.type == "cuda":  # bf16 autocast for the reference path too
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    sec, _ = timed_rollout(model, runner, args, 1, args.frames, path, device)
            else:
                sec, _ = timed_rollout(model, runner, args, 1, args.frames, path, device, encoding)
            r = {
                "seconds_per_frame": sec,
                "ms_per_step": 1000 * sec / args.steps,
                "peak_gib": peak_gib(device),
            }
            if mode in COMPILED:
                r["compile_seconds"] = runner.compile_seconds
                r["inductor_config"] = TUNED_INDUCTOR.get(mode, {})
            if runner is not None:
                r.update(history_split(model, runner, args, sec, path, device, encoding))
                r["cuda_graphs"] = len(runner._graphs)
                r["history_graphs"] = len(runner._encode_graphs)
                runners[mode] = runner
            return r

        single[mode] = guarded(f"{family} {mode}", row)
        logger.info("%s %s: %s", family, mode, single[mode])
        out["single_rollout"] = single
        if on_row is not None:
            on_row(out)

    # ---- fewer DDIM steps on the fastest path: the same captured graphs (the step's coefficients are a
    # graph input), so only the step count changes. The exact paths and the incremental-cache paths (an
    # approximation once the window slides) are swept, agreed and reported apart.
    done = {m: r for m, r in single.items() if m in runners and "seconds_per_frame" in r}
    for suffix, group in (("", {m: r for m, r in done.items() if encoding_of(m) == "recompute"}),
                          ("_incremental", {m: r for m, r in done.items() if encoding_of(m) == "incremental"})):
        if not group or not args.steps_sweep:
            continue
        fastest = min(group, key=lambda m: group[m]["seconds_per_frame"])
        encoding = encoding_of(fastest)
        sweep = {str(args.steps): {"seconds_per_frame": group[fastest]["seconds_per_frame"]}}
        for steps in args.steps_sweep:

            def srow(steps: int = steps, fastest: str = fastest, encoding: str = encoding) -> dict[str, Any]:
                at = argparse.Namespace(**{**vars(args), "steps": steps})
                sec, _ = timed_rollout(model, runners[fastest], at, 1, args.frames, "streaming", device, encoding)
                if encoding == "incremental":  # the steady state, as in the row
                    sec = history_split(model, runners[fastest], at, sec, "streaming", device, encoding)
                    sec = sec["seconds_per_frame"]
                return {"seconds_per_frame": sec}

            sweep[str(steps)] = guarded(f"{family} {fastest} {steps} steps", srow)
            logger.info("%s %s at %d steps: %s", family, fastest, steps, sweep[str(steps)])
        out[f"steps_sweep{suffix}"] = {"path": fastest, "rows": sweep}
        if reference:  # the fastest path against the fp32 frame: what the headline's speed costs

            def fastest_agreement(fastest: str = fastest, encoding: str = encoding) -> dict[str, Any]:
                fast = timed_rollout(model, runners[fastest], args, 1, 1, "streaming", device, encoding)[1]
                return {"path": fastest, **agree(fast)}

            out[f"agreement_fastest{suffix}_vs_fp32_eager"] = guarded("fastest agreement", fastest_agreement)
        if on_row is not None:
            on_row(out)

    # ---- batched rollouts, streaming + CUDA graph (and compiled: one symbolic-batch compile for all sizes)
    for bmode in args.batched_modes:
        batched = []
        for b in args.compile_batches if bmode == "compile" else args.batches:

            def brow(b: int = b, bmode: str = bmode) -> dict[str, Any]:
                reset_peak(device)
                runner = FastStreamer(model, graph_cfg if bmode == "graph" else compile_cfg(
                    compile_dynamic=False if args.static_batched_compile else None))
                sec, _ = timed_rollout(model, runner, args, b, args.frames, "streaming", device)
                r = {
                    "seconds_per_frame": sec,
                    "frames_per_second": b / sec,
                    "effective_tflops": b * per_frame_flops / sec / 1e12,
                    "peak_gib": peak_gib(device),
                    "cuda_graphs": len(runner._graphs),
                }
                if bmode == "compile":
                    r["compile_seconds"] = runner.compile_seconds
                return r

            batched.append({"batch": b, **guarded(f"{family} {bmode} batch {b}", brow)})
            logger.info("%s %s batch %d: %s", family, bmode, b, batched[-1])
            if on_row is not None:
                on_row({**out, f"batched_{bmode}": batched})
        out[f"batched_{bmode}"] = batched
    return out


def fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def print_tables(record: dict[str, Any]) -> None:
    s = record["settings"]
    print(
        f"rollout_gpu: {record['machine']['device']}, torch {record['machine']['torch']}, window "
        f"{s['window']}, {s['steps']} DDIM steps, guidance 2.5 (2 branches), {s['precision']}"
    )
    print(f"{'family':<7} {'path':<8} {'s/frame':>9} {'ms/step':>9} {'peak GiB':>9} {'compile s':>10}")
    for fam in record["families"]:
        for mode, r in fam["single_rollout"].items():
            if "error" in r:
                print(f"{fam['family']:<7} {mode:<8} error: {r['error']}")
                continue
            print(
                f"{fam['family']:<7} {mode:<8} {r['seconds_per_frame']:>9.3f} {r['ms_per_step']:>9.1f} "
                f"{fmt(r['peak_gib'], '9.1f'):>9} {fmt(r.get('compile_seconds'), '10.0f'):>10}"
            )
    print(f"{'family':<7} {'batched':<8} {'batch':>5} {'s/frame':>9} {'frames/s':>9} {'TFLOP/s':>9} {'peak GiB':>9}")
    for fam in record["families"]:
        rows = [(k.removeprefix("batched_"), r) for k, v in fam.items() if k.startswith("batched_") for r in v]
        for bmode, r in rows:
            if "error" in r:
                print(f"{fam['family']:<7} {bmode:<8} {r['batch']:>5} error: {r['error']}")
                continue
            print(
                f"{fam['family']:<7} {bmode:<8} {r['batch']:>5} {r['seconds_per_frame']:>9.3f} "
                f"{r['frames_per_second']:>9.2f} "
                f"{r['effective_tflops']:>9.1f} {fmt(r['peak_gib'], '9.1f'):>9}"
            )
    for fam in record["families"]:
        a = fam["agreement_bf16_graph_vs_fp32_eager"]
        print(f"{fam['family']}: bf16 fast path vs fp32 eager: {a}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--families", default="unet3d,svd")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--batches", default="1,8,32,64", help="batched rollouts")
    parser.add_argument("--batched-modes", default="graph,compile",
                        help="batched rows: streaming + CUDA graph and/or + torch.compile (symbolic batch)")
    parser.add_argument("--few-query-kernel", choices=("auto", "gemm", "reduce"), default=None,
                        help="replay attention formulation (default: the model's StreamState.few_query_kernel, auto)")
    parser.add_argument("--compile-batches", default=None, help="batches of the compiled rows (default: --batches)")
    parser.add_argument("--static-batched-compile", action="store_true",
                        help="compile each batch size on its own (default: one symbolic-batch recompile)")
    parser.add_argument("--svd-batches", default="1,8,32", help="batches for the svd family")
    parser.add_argument("--svd-modes", default="full,stream,graph", help="modes for svd ('' = as --modes)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--frames", type=int, default=1, help="generated frames per timed rollout")
    parser.add_argument("--steps-sweep", default="20,10",
                        help="other DDIM step counts timed on the fastest one-rollout path ('' = none)")
    parser.add_argument("--context", type=int, default=15, help="history frames (window = context + 1)")
    parser.add_argument("--encode-chunk", type=int, default=8, help="encode_history batch chunk")
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode; our CUDA graph wraps it unless inductor graphs itself (reduce-overhead). "
        "max-autotune-no-cudagraphs autotunes every GEMM/conv shape (many minutes at paper size)",
    )
    parser.add_argument("--no-compile-encode", dest="compile_encode", action="store_false",
                        help="compile only the step, keep the history forward eager (the path before 2026-12-07)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="keep NCHW 2-D conv weights (default: channels-last, cuDNN's native bf16 layout)")
    parser.add_argument("--compile-cache", default=str(Path.home() / ".cache" / "v2w_inductor"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.modes = [m for m in args.modes.split(",") if m]
    args.steps_sweep = [int(n) for n in args.steps_sweep.split(",") if n]
    args.batched_modes = [m for m in args.batched_modes.split(",") if m]
    if args.device == "cpu":  # the CPU smoke test skips inductor (minutes of C++ compiles per shape)
        args.batched_modes = [m for m in args.batched_modes if m != "compile"]
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CPU run is a smoke test; OpenMP spin-waits on shared cores
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    head = new_record("rollout_gpu", machine=machine_info(("diffusers",), device=device_name))

    families: list[dict[str, Any]] = []
    for fam in [f for f in args.families.split(",") if f]:
        fam_args = copy.copy(args)
        fam_args.batches = [
            int(b) for b in (args.svd_batches if fam == "svd" else args.batches).split(",") if b
        ]
        fam_args.compile_batches = (
            fam_args.batches if args.compile_batches is None else [int(b) for b in args.compile_batches.split(",") if b]
        )
        if fam == "svd" and args.svd_modes:
            fam_args.modes = [m for m in args.svd_modes.split(",") if m]
        # families holds the finished ones until bench_family returns: a partial row joins them
        families.append(bench_family(
            fam, fam_args, device,
            on_row=lambda part: write_record(args, device, [*families, part], t_start, head),
        ))
        reset_peak(device)
        write_record(args, device, families, t_start, head)  # after each family: a killed run keeps its rows
    print_tables(write_record(args, device, families, t_start, head))
    print(f"appended to {args.out} in {time.perf_counter() - t_start:.0f} s")


def write_record(
    args: argparse.Namespace,
    device: torch.device,
    families: list[dict[str, Any]],
    t_start: float,
    head: dict[str, Any],
) -> dict[str, Any]:
    """This run's record (``head``: bench, time, run id, machine), replacing the one written after the
    previous row (same run id)."""
    record = {
        **head,
        "settings": {
            "preset": args.preset,
            "window": args.context + 1,
            "steps": args.steps,
            "generated_frames_timed": args.frames,
            "guidance_scale": 2.5,
            "guidance_rescale": 0.7,
            "precision": "bf16 weights + bf16 autocast (DDIM in fp32)" if device.type == "cuda" else "fp32",
            "compile_mode": args.compile_mode,
            "compile_encode": args.compile_encode,
            "few_query_kernel": args.few_query_kernel,
            "encode_batch_chunk": args.encode_chunk,
            "channels_last": args.channels_last,
            "argv": sys.argv[1:],
            "total_seconds": time.perf_counter() - t_start,
        },
        "families": families,
    }
    record["headline"] = headline(record)
    append_record(args.out, record)
    return record


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """Issue 19's figures first — ``seconds_per_frame`` (UNet3D, one rollout, the fastest exact path at the
    run's steps), ``seconds_per_frame_svd``, ``frames_per_second_at_steps`` (UNet3D, that path, the steps
    sweep), ``rel_l2_vs_fp32`` (UNet3D bf16 graph path vs fp32 eager), ``device``; the same two figures for
    the fastest incremental-history path (``*_incremental``: an approximation once the window slides,
    never the headline's exact figure) — then per family: seconds per
    frame of one rollout on each path (and its split: history forward ms per frame, denoising ms per
    step) and the fastest; over the batched rows the highest effective
    TFLOP/s and frames/s (with path and batch) and the largest peak memory; the bf16 fast path's relative
    L2 against fp32 eager. Rows that failed are left out."""
    out: dict[str, Any] = {"device": record["machine"]["device"], "steps": record["settings"]["steps"]}
    per_family: dict[str, Any] = {}
    for fam in record["families"]:
        single = {m: r for m, r in fam.get("single_rollout", {}).items() if "seconds_per_frame" in r}
        batched = [(k.removeprefix("batched_"), r) for k, v in fam.items() if k.startswith("batched_")
                   for r in v if "effective_tflops" in r]  # fmt: skip
        exact = [(m, r) for m, r in single.items() if encoding_of(m) == "recompute"]
        best = min(exact, key=lambda kv: kv[1]["seconds_per_frame"], default=None)
        incremental = [(m, r) for m, r in single.items() if encoding_of(m) == "incremental"]
        best_inc = min(incremental, key=lambda kv: kv[1]["seconds_per_frame"], default=None)
        top = max(batched, key=lambda mr: mr[1]["effective_tflops"], default=None)
        fastest = max(batched, key=lambda mr: mr[1]["frames_per_second"], default=None)
        peaks = [(m, r) for m, r in batched if r.get("peak_gib") is not None]
        peak = max(peaks, key=lambda mr: mr[1]["peak_gib"], default=None)
        agree = fam.get("agreement_bf16_graph_vs_fp32_eager", {})
        sweep, sweep_inc = fam.get("steps_sweep", {}), fam.get("steps_sweep_incremental", {})

        def fps(sweep: dict[str, Any]) -> dict[str, float]:
            return {n: round(1 / r["seconds_per_frame"], 2) for n, r in sweep.get("rows", {}).items()
                    if "seconds_per_frame" in r}  # fmt: skip

        per_family[fam["family"]] = {
            "seconds_per_frame": {m: round(r["seconds_per_frame"], 3) for m, r in single.items()},
            "ms_per_step": {m: round(r["ms_per_step"], 1) for m, r in single.items()},
            "history_ms_per_frame": {m: round(r["history_ms_per_frame"], 1) for m, r in single.items()
                                     if "history_ms_per_frame" in r},
            "denoise_ms_per_step": {m: round(r["denoise_ms_per_step"], 2) for m, r in single.items()
                                    if "denoise_ms_per_step" in r},
            "compile_seconds": {m: round(r["compile_seconds"]) for m, r in single.items() if m in COMPILED},
            "fastest_path": best[0] if best else None,
            "fastest_seconds_per_frame": round(best[1]["seconds_per_frame"], 3) if best else None,
            "frames_per_second_at_steps": fps(sweep),
            # the incremental history cache (an approximation once the window slides), apart
            "fastest_incremental_path": best_inc[0] if best_inc else None,
            "fastest_incremental_seconds_per_frame": round(best_inc[1]["seconds_per_frame"], 3) if best_inc else None,
            "frames_per_second_at_steps_incremental": fps(sweep_inc),
            "max_effective_tflops": round(top[1]["effective_tflops"], 1) if top else None,
            "max_effective_tflops_at": f"{top[0]} batch {top[1]['batch']}" if top else None,
            "max_frames_per_second": round(fastest[1]["frames_per_second"], 2) if fastest else None,
            "max_frames_per_second_at": f"{fastest[0]} batch {fastest[1]['batch']}" if fastest else None,
            "max_peak_gib": round(peak[1]["peak_gib"], 1) if peak else None,
            "max_peak_gib_at": f"{peak[0]} batch {peak[1]['batch']}" if peak else None,
            "agreement_rel_l2": agree.get("rel_l2"),
            "fastest_agreement_rel_l2": fam.get("agreement_fastest_vs_fp32_eager", {}).get("rel_l2"),
            "fastest_incremental_agreement_rel_l2": fam.get("agreement_fastest_incremental_vs_fp32_eager", {}).get(
                "rel_l2"
            ),
        }
    unet, svd = per_family.get("unet3d", {}), per_family.get("svd", {})
    out.update(
        seconds_per_frame=unet.get("fastest_seconds_per_frame"),
        seconds_per_frame_svd=svd.get("fastest_seconds_per_frame"),
        frames_per_second_at_steps=unet.get("frames_per_second_at_steps"),
        rel_l2_vs_fp32=unet.get("agreement_rel_l2"),
        rel_l2_fastest_vs_fp32=unet.get("fastest_agreement_rel_l2"),
        seconds_per_frame_incremental=unet.get("fastest_incremental_seconds_per_frame"),
        frames_per_second_at_steps_incremental=unet.get("frames_per_second_at_steps_incremental"),
        **per_family,
    )
    out["machine"] = machine_summary(record["machine"], f"torch {record['machine']['torch']}")
    return out


if __name__ == "__main__":
    main()
