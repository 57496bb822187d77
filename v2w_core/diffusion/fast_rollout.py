"""GPU fast path for the streaming rollout: bf16 autocast, CUDA graphs, ``torch.compile``.

A denoising step of the newest frame is a few hundred small kernels; at batch 1 on a GPU it is bound
by the CPU launching them (DESIGN §3: 121 ms eager vs 31 ms replayed as a CUDA graph). The streaming
cache makes the step graph-capturable: its inputs have fixed shapes and the history it reads is a set
of tensors that :meth:`HistoryCache.copy_` refreshes in place once per generated frame. So:

* :meth:`FastStreamer.encode_history` runs the history forward under autocast into a *static* cache, one
  per cache shape (the shape changes only while the window fills up). With ``graph_encode`` the history
  forward itself is captured as a CUDA graph whose output *is* that static cache, so each generated frame
  replays it instead of launching the ~thousand kernels of a 15-frame forward (issue 19); otherwise it
  runs eagerly and its result is copied into the static cache;
* :meth:`FastStreamer.step_newest` copies its inputs into static buffers and replays a CUDA graph
  captured once per (static cache, input shapes), after warm-up iterations on a side stream;
* :meth:`FastStreamer.denoise_newest` does the same for a whole DDIM step: the model on both guidance
  branches, the guidance combination and the DDIM update, with the step's coefficients (a row of
  :func:`~v2w_core.diffusion.schedule.ddim_table`) and η-noise as static inputs, so one graph serves
  every step and the update's ~20 small kernels are replayed instead of launched (``graph_ddim``).

``torch.compile`` (optional) wraps the model's forward, for the step and (``compile_encode``) the history
forward, which then fills its cache from compiled code (``encode_history(forward=…)``). With
``mode="max-autotune-no-cudagraphs"`` the graph capture here is still ours, with ``"reduce-overhead"``
inductor captures its own graphs and ours is skipped. Compiled artefacts go to inductor's FX-graph cache
(on by default in recent torch; we set ``TORCHINDUCTOR_FX_GRAPH_CACHE=1`` and, if given,
``TORCHINDUCTOR_CACHE_DIR``) so a second process with the same model and shapes skips most of the compile
time.

Everything degrades to eager: no CUDA device, a capture that fails (e.g. a data-dependent check in
the forward) or ``cuda_graph=False`` all run :meth:`WorldModel.step_newest` under the same autocast.
Use it as ``rollout(model, ..., runner=FastStreamer(model, FastPathConfig(...)))``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from v2w_core.diffusion.rollout import denoise_newest
from v2w_core.models.streaming import FEW_QUERY_KERNELS, FewQueryKernel, HistoryCache

logger = logging.getLogger(__name__)

AutocastDtype = Literal["bfloat16", "float16"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True)
class FastPathConfig:
    """Options of the fast path; the defaults are plain fp32 with CUDA graphs where CUDA is available."""

    autocast: AutocastDtype | None = None
    cuda_graph: bool = True
    compile: CompileMode | None = None
    compile_cache_dir: str | None = None
    # torch.compile's backend: inductor on a GPU; "aot_eager" traces the same graphs without code
    # generation (the CPU tests' way of checking what the compiled path computes).
    compile_backend: str = "inductor"
    # Inductor freezing: parameters become constants of the compiled code, so parameter-only work folds
    # at compile time (the cross-attention K/V of the fixed null context in every transformer block) and
    # convolution weights are laid out for their kernels once. Weights must not change afterwards
    # (an in-place update is not seen): for serving and benchmarks, not for a model still training.
    # Measured on an H100 (paper-size UNet3D): 0.601 → 0.599 s per frame, 60 s more compile; off by default.
    freeze: bool = False
    # Extra inductor config entries (``torch._inductor.config`` names, e.g. ``coordinate_descent_tuning``,
    # ``combo_kernels``) on top of the mode's own: the knobs issue 19's profile asks about, measured one by
    # one by ``bench/rollout_gpu.py --modes compile_tuned --inductor …`` rather than guessed.
    inductor_config: dict[str, Any] | None = None
    # torch.compile's ``dynamic``: False compiles each batch size on its own (fastest kernels, one compile
    # per shape); None lets dynamo recompile once with a symbolic batch on the second size it sees.
    compile_dynamic: bool | None = False
    # Replay attention formulation, set on the model (``StreamState.few_query_kernel``, default "auto": the
    # broadcast reduction inside torch.compile, batched GEMMs eagerly); None keeps the model's setting.
    few_query_kernel: FewQueryKernel | None = None
    warmup_iters: int = 2
    # Capture guidance and the DDIM update in the step's graph (denoise_newest); False replays the model
    # alone and runs them eagerly (the path before issue 19, kept to measure against).
    graph_ddim: bool = True
    # Capture the history forward (encode_history) too: one graph per history shape, replayed once per
    # generated frame. Not with encode_batch_chunk (the chunks are written row by row).
    graph_encode: bool = True
    # With ``compile`` set, run the history forward through the compiled forward as well (its own graph:
    # the record phase and the history length are guarded on); False keeps it eager, as before issue 19.
    compile_encode: bool = True
    # Store 2-D conv weights (and so their activations) channels-last (NHWC): cuDNN's bf16 kernels are
    # NHWC, and on NCHW input it transposes before and after every conv. Changes the model in place.
    channels_last: bool = False
    # Run encode_history in chunks of this many rollouts and join the caches: a history forward over
    # B·15 frames at paper size needs tens of GiB of transient activations at B = 64.
    encode_batch_chunk: int | None = None


def set_conv_memory_format(model: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """Put every ``Conv2d`` weight in ``memory_format`` (``model.to(memory_format=…)`` fails on the 5-D
    temporal conv weights, and channels-last only pays for the 2-D convs)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=memory_format)


def inductor_options(mode: CompileMode, freeze: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``torch.compile`` keyword arguments for inductor: ``mode=``, or, with freezing or ``extra`` config
    entries, the mode's own options plus those (torch.compile takes a mode or an options dict, not both)."""
    if not freeze and not extra:
        return {"mode": mode}
    from torch._inductor import list_mode_options

    options = {**list_mode_options(mode), **(extra or {})}
    if freeze:
        options["freezing"] = True
    return {"options": options}


def enable_compile_cache(cache_dir: str | None = None) -> None:
    """Turn on inductor's on-disk FX-graph cache (and pick its directory) before the first compile."""
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    if cache_dir:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache_dir)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor | None, ...]  # static buffers, refilled before each replay
    output: Any  # a step's tensor, or the history forward's HistoryCache (the static cache)


def _key(*tensors: torch.Tensor | None) -> tuple[Any, ...]:
    return tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in tensors)


class FastStreamer:
    """Drop-in for a causal :class:`~v2w_core.models.world_model.WorldModel`'s ``encode_history`` /
    ``step_newest`` in :func:`~v2w_core.diffusion.rollout.rollout` (``runner=``).

    Holds static caches and captured graphs; they stay valid as long as the model's weights are not
    replaced (in-place updates are fine). Memory: one static cache per distinct history length seen
    (only while the window fills up); :meth:`reset` drops them.
    """

    def __init__(self, model: Any, config: FastPathConfig | None = None) -> None:
        self.model = model
        self.config = config or FastPathConfig()
        self._graphs: dict[tuple[Any, ...], _Graph] = {}
        self._static: dict[tuple[Any, ...], HistoryCache] = {}
        self._graph_failed = False
        self._encode_graph_failed = False  # a failed history capture leaves the step graphs on
        self._encode_graphs: dict[tuple[Any, ...], _Graph] = {}
        self._pool: Any = None
        # wall time of the calls that compiled: each capture's first call, or the first uncaptured step
        self.compile_seconds = 0.0
        self._forward: Callable[..., torch.Tensor] = model.forward
        if self.config.channels_last:
            set_conv_memory_format(model, torch.channels_last)
        if (kernel := self.config.few_query_kernel) is not None:
            if kernel not in FEW_QUERY_KERNELS:
                raise ValueError(f"few_query_kernel must be one of {FEW_QUERY_KERNELS}, got {kernel!r}")
            model.stream_state.few_query_kernel = kernel
        if self.config.compile is not None:
            enable_compile_cache(self.config.compile_cache_dir)
            options: dict[str, Any] = {"backend": self.config.compile_backend}
            if self.config.compile_backend == "inductor":
                options.update(
                    inductor_options(self.config.compile, self.config.freeze, self.config.inductor_config)
                )
            self._forward = torch.compile(model.forward, dynamic=self.config.compile_dynamic, **options)

    def reset(self) -> None:
        """Forget captured graphs and static caches (frees their memory)."""
        self._graphs.clear()
        self._static.clear()
        self._encode_graphs.clear()

    # ------------------------------------------------------------------ helpers

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.config.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=getattr(torch, self.config.autocast))

    def _graphs_on(self, device: torch.device) -> bool:
        # reduce-overhead / max-autotune make inductor capture its own CUDA graphs: don't nest ours.
        own_graphs = self.config.compile in ("reduce-overhead", "max-autotune")
        return self.config.cuda_graph and device.type == "cuda" and not own_graphs and not self._graph_failed

    def _run(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        a: torch.Tensor | None,
        m: torch.Tensor | None,
        cache: HistoryCache,
    ) -> torch.Tensor:
        """One replay forward (what gets captured); output in the input's dtype for the fp32 sampler."""
        with (
            torch.no_grad(),
            self._autocast(x.device),
            self.model.replaying(cache, x.shape[0] // cache.batch_size),
        ):
            return self._forward(x, t, a, m).to(x.dtype)

    def _encode(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        a: torch.Tensor | None,
        m: torch.Tensor | None,
        appendable: bool = False,
    ) -> HistoryCache:
        """One history forward under autocast: ``model.encode_history``, through the compiled forward
        when compiling (``compile_encode``; without compile ``_forward`` is the model's own)."""
        with self._autocast(x.device):
            forward = self._forward if self.config.compile_encode else None
            return self.model.encode_history(x, t, a, m, forward=forward, appendable=appendable)

    # ------------------------------------------------------------------ the runner interface

    @torch.no_grad()
    def encode_history(
        self,
        x_hist: torch.Tensor,
        t_hist: torch.Tensor,
        a_hist: torch.Tensor | None = None,
        mask_hist: torch.Tensor | None = None,
        *,
        appendable: bool = False,
    ) -> HistoryCache:
        """``model.encode_history`` under autocast (in batch chunks); with graphs on, written in place into
        the static cache of these input shapes, whose addresses the captured graphs read: by replaying the
        captured history forward (``graph_encode``, unchunked), else by copying an eager result.
        ``appendable``: a cache that :meth:`append_history` can extend (the incremental mode)."""
        batch = x_hist.shape[0]
        chunk = self.config.encode_batch_chunk or batch
        graphs = self._graphs_on(x_hist.device)
        inputs = (x_hist, t_hist, a_hist, mask_hist)
        key = (*_key(*inputs), appendable)
        if graphs and self.config.graph_encode and chunk >= batch and not self._encode_graph_failed:
            if key not in self._encode_graphs:
                self._capture_encode(key, inputs, appendable)
            if (graph := self._encode_graphs.get(key)) is not None:
                return self._load_and_replay(graph, inputs)  # the static cache, rewritten in place
        static = self._static.get(key) if graphs else None
        for i in range(0, batch, chunk):
            rows = slice(i, i + chunk)
            part = self._encode(
                x_hist[rows],
                t_hist[rows],
                None if a_hist is None else a_hist[rows],
                None if mask_hist is None else mask_hist[rows],
                appendable,
            )
            if chunk >= batch:
                static = static.copy_(part) if static is not None else part
                break
            if static is None:
                static = HistoryCache.allocate_like(part, batch)
            static.write_rows_(part, i)  # in place, chunk by chunk: no second whole cache
            del part
        assert static is not None
        if graphs:  # the first cache of these input shapes stays: the captured graphs read its addresses
            self._static.setdefault(key, static)
        return static

    @torch.no_grad()
    def append_history(
        self,
        cache: HistoryCache,
        x_new: torch.Tensor,
        t_new: torch.Tensor,
        a_new: torch.Tensor | None,
        mask_new: torch.Tensor | None,
        *,
        max_frames: int,
    ) -> HistoryCache:
        """``model.append_history`` under autocast (through the compiled forward with ``compile_encode``);
        with graphs on, the result is copied into the static cache of its shapes (one per history length,
        so the step graphs captured on it stay valid). Not captured itself: one single-frame forward per
        generated frame, against the window re-encode it replaces."""
        with self._autocast(x_new.device):
            forward = self._forward if self.config.compile_encode else None
            new = self.model.append_history(cache, x_new, t_new, a_new, mask_new, max_frames=max_frames,
                                            forward=forward)  # fmt: skip
        if not self._graphs_on(x_new.device):
            return new
        key = ("append", new.signature())
        static = self._static.get(key)
        if static is None:
            self._static[key] = static = new
        else:  # ``new`` is fresh tensors (the forward is done reading ``cache``, which may be ``static``)
            static.copy_(new)
        return static

    def attach_history(self, cache: HistoryCache) -> HistoryCache:
        """A cache carried between rollouts (``RolloutCarry``) into the static cache of its shapes, which the
        step graphs read (with graphs off: the cache itself)."""
        if not self._graphs_on(self._device(cache)):
            return cache
        key = ("append", cache.signature())
        static = self._static.get(key)
        if static is None:
            self._static[key] = static = cache.clone()
        elif static is not cache:
            static.copy_(cache)
        return static

    def detach_history(self, cache: HistoryCache) -> HistoryCache:
        """A copy of ``cache`` that this runner's next history write cannot reach: a static cache is
        shared by every rollout of its shapes (another play session's frame would overwrite it)."""
        return cache.clone() if any(c is cache for c in self._static.values()) else cache

    @staticmethod
    def _device(cache: HistoryCache) -> torch.device:
        return next(t.device for ts in cache.entries.values() for t in ts)

    @torch.no_grad()
    def step_newest(
        self,
        x_new: torch.Tensor,
        t_new: torch.Tensor,
        a_new: torch.Tensor | None,
        mask_new: torch.Tensor | None,
        cache: HistoryCache,
    ) -> torch.Tensor:
        """``model.step_newest``, replayed from a CUDA graph when possible."""
        key = (id(cache), *_key(x_new, t_new, a_new, mask_new))
        graph = self._graphs.get(key)
        if graph is None and self._capturable(x_new, cache):
            # Validate once through the checked entry point (also a warm-up), then capture.
            with self._autocast(x_new.device):
                self.model.step_newest(x_new, t_new, a_new, mask_new, cache)
            step = lambda *ins: self._run(*ins, cache)
            graph = self._capture(key, (x_new, t_new, a_new, mask_new), step, "model step")
        if graph is None:
            if self.config.compile is None:
                with self._autocast(x_new.device):
                    return self.model.step_newest(x_new, t_new, a_new, mask_new, cache).to(x_new.dtype)
            # Clone: with inductor's own CUDA graphs the output lives in its pool until the next call.
            return self._timed_compile(lambda: self._run(x_new, t_new, a_new, mask_new, cache)).clone()
        return self._load_and_replay(graph, (x_new, t_new, a_new, mask_new)).clone()

    @torch.no_grad()
    def denoise_newest(
        self,
        x: torch.Tensor,
        t_new: torch.Tensor,
        a_new: torch.Tensor | None,
        mask_new: torch.Tensor | None,
        cache: HistoryCache,
        coefficients: torch.Tensor,
        noise: torch.Tensor | None,
        guidance: tuple[float, float] | None,
        clip_sample_range: float | None = None,
    ) -> torch.Tensor:
        """:func:`~v2w_core.diffusion.rollout.denoise_newest` (model, guidance, DDIM update), replayed as
        one CUDA graph per (static cache, shapes, guidance) when possible; else :meth:`step_newest` and the
        update eagerly."""
        inputs = (x, t_new, a_new, mask_new, coefficients, noise)
        key = ("denoise", id(cache), *_key(*inputs), guidance, clip_sample_range)
        graph = self._graphs.get(key)
        if graph is None and self.config.graph_ddim and self._capturable(x, cache):
            n = t_new.shape[0] // x.shape[0]
            with self._autocast(x.device):  # validate once through the checked entry point
                self.model.step_newest(torch.cat([x] * n), t_new, a_new, mask_new, cache)

            def step(xx: Any, tt: Any, aa: Any, mm: Any, coef: Any, z: Any) -> torch.Tensor:  # static copies
                return denoise_newest(self._run, xx, tt, aa, mm, cache, coef, z, guidance, clip_sample_range)

            graph = self._capture(key, inputs, step, "whole DDIM step")
        if graph is None:
            args = (x, t_new, a_new, mask_new, cache, coefficients, noise, guidance, clip_sample_range)
            return denoise_newest(self.step_newest, *args)
        return self._load_and_replay(graph, inputs).clone()

    def _capture_encode(
        self, key: tuple[Any, ...], inputs: tuple[torch.Tensor | None, ...], appendable: bool = False
    ) -> None:
        """Capture ``model.encode_history``; its output cache becomes the static cache of ``key`` (the step
        graphs read its addresses; each replay rewrites it in place). A failure encodes eagerly from now on
        and leaves the step graphs on."""
        encode = functools.partial(self._encode, appendable=appendable)
        graph = self._record(inputs, encode, "history forward")
        if graph is None:
            self._encode_graph_failed = True
            return
        self._encode_graphs[key] = graph
        self._static[key] = graph.output

    def _capturable(self, x: torch.Tensor, cache: HistoryCache) -> bool:
        """Graphs are on and ``cache`` is one of our static caches (the addresses a graph may read)."""
        return self._graphs_on(x.device) and any(c is cache for c in self._static.values())

    @staticmethod
    def _load_and_replay(graph: _Graph, inputs: tuple[torch.Tensor | None, ...]) -> Any:
        """Copy ``inputs`` into the graph's static buffers, replay, return its output (not a copy)."""
        for dst, src in zip(graph.inputs, inputs, strict=True):
            if dst is not None:
                dst.copy_(src)
        graph.graph.replay()
        return graph.output

    def _timed_compile(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        first = self.compile_seconds == 0.0
        t0 = time.perf_counter()
        out = fn()
        if first:
            self.compile_seconds = time.perf_counter() - t0
            logger.info("fast path: first compiled step took %.1f s (compile + run)", self.compile_seconds)
        return out

    def _capture(
        self,
        key: tuple[Any, ...],
        inputs: tuple[torch.Tensor | None, ...],
        fn: Callable[..., torch.Tensor],
        what: str,
    ) -> _Graph | None:
        """A step graph of ``fn`` under ``key`` (its first warm-up call timed as compilation); a failure
        turns graphs off."""
        graph = self._record(inputs, fn, what)
        if graph is None:
            self._graph_failed = True
            return None
        self._graphs[key] = graph
        return graph

    def _record(
        self, inputs: tuple[torch.Tensor | None, ...], fn: Callable[..., Any], what: str
    ) -> _Graph | None:
        """Capture ``fn(*static copies of inputs)`` as a CUDA graph in the shared pool, after
        ``warmup_iters`` calls on a side stream (the first one's time, compilation included, is added to
        ``compile_seconds`` when compiling); None (with a warning) if the capture fails."""
        static_in = tuple(None if t is None else t.clone() for t in inputs)
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                t0 = time.perf_counter()
                fn(*static_in)  # compiles here, if anything does
                if self.config.compile is not None:
                    torch.cuda.current_stream().synchronize()
                    self.compile_seconds += time.perf_counter() - t0
                for _ in range(max(0, self.config.warmup_iters - 1)):
                    fn(*static_in)
            torch.cuda.current_stream().wait_stream(stream)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = fn(*static_in)
        except RuntimeError as err:  # capture is an optimisation: fall back to eager, say why
            logger.warning(
                "fast path: CUDA graph capture of the %s failed (%s: %s); running it eagerly",
                what, type(err).__name__, err,
            )  # fmt: skip
            torch.cuda.synchronize()
            return None
        batch = inputs[0].shape[0]  # type: ignore[union-attr]
        logger.info("fast path: captured a CUDA graph of the %s for batch %d", what, batch)
        return _Graph(graph, static_in, out)
