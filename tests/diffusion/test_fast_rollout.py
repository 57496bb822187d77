"""The fast path (v2w_core.diffusion.fast_rollout) gives the plain streaming path's frames.

On CPU CUDA graphs are unavailable, so FastStreamer must fall back to eager and be exact; bf16 autocast
is checked against fp32 with a tolerance that bf16's 8-bit mantissa allows. The GPU test (marker
``gpu``) checks graph replay against eager on a CUDA device.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from diffusion_tiny import ACTION_DIM, SIZE, make_causal_model

from v2w_core.diffusion.fast_rollout import FastPathConfig, FastStreamer
from v2w_core.diffusion.rollout import RolloutCarry, RolloutConfig, rollout
from v2w_core.models.world_model import WorldModel

B, K, N = 2, 3, 3
# Same ops in the same order as the plain path: equal up to nothing (fp32, eager fallback).
EXACT = {"rtol": 1e-6, "atol": 1e-6}


def _inputs(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    context = torch.randn(B, K, 3, SIZE, SIZE, generator=g)
    actions = torch.randn(B, K + N - 1, ACTION_DIM, generator=g)
    return context.to(device), actions.to(device)


def _rollout(
    model: WorldModel, runner: FastStreamer | None, device: str = "cpu", steps: int = 3
) -> torch.Tensor:
    context, actions = _inputs(device)
    cfg = RolloutConfig(num_inference_steps=steps, window=4)  # K = 3: window slides after frame 1
    gen = torch.Generator(device=device).manual_seed(1)
    return rollout(model, context, actions, N, cfg, generator=gen, runner=runner)


@pytest.fixture(scope="module")
def plain(causal_model: WorldModel) -> torch.Tensor:
    return _rollout(causal_model, None)


def test_fast_path_falls_back_to_eager_on_cpu_and_is_exact(
    causal_model: WorldModel, plain: torch.Tensor
) -> None:
    runner = FastStreamer(causal_model, FastPathConfig(cuda_graph=True))
    torch.testing.assert_close(_rollout(causal_model, runner), plain, **EXACT)
    assert not runner._graphs and not runner._static  # nothing captured on CPU


def test_rollout_hands_whole_ddim_steps_to_a_runner_with_denoise_newest(
    causal_model: WorldModel, plain: torch.Tensor
) -> None:
    """The hook FastStreamer's one-graph step (model + guidance + DDIM update) plugs into: every step of
    every frame goes through it, with the step's coefficient row and noise, and the frames are unchanged."""
    from v2w_core.diffusion.rollout import denoise_newest

    calls: list[torch.Tensor] = []

    class Runner:
        encode_history = causal_model.encode_history

        def denoise_newest(self, *args: Any) -> torch.Tensor:
            calls.append(args[5])  # the coefficient row
            return denoise_newest(causal_model.step_newest, *args)

    torch.testing.assert_close(_rollout(causal_model, Runner()), plain, rtol=0, atol=0)  # type: ignore[arg-type]
    assert len(calls) == N * 3  # frames × DDIM steps
    assert all(c.shape == (5,) for c in calls) and not torch.equal(calls[0], calls[1])


def test_ddim_table_rows_give_ddim_step() -> None:
    from v2w_core.diffusion.schedule import NoiseSchedule, ddim_step, ddim_table, ddim_update

    ddim = NoiseSchedule().ddim(10)
    g = torch.Generator().manual_seed(0)
    for eta in (0.0, 1.0):
        table = ddim_table(ddim, eta)
        assert table.shape == (10, 5) and torch.isfinite(table).all()
        x = torch.randn(2, 1, 3, 4, 4, generator=g)
        for row, t in zip(table, ddim.timesteps, strict=True):
            v, z = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
            want = ddim_step(ddim, v, int(t), x, eta=eta, variance_noise=z)
            got = ddim_update(row, v, x, z if eta > 0 else None)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            x = want
        assert table[0, 0] == 0.0 and table[-1, 2] == 1.0  # zero terminal SNR; the last step lands on x0


def test_channels_last_convs_give_the_same_frames(plain: torch.Tensor) -> None:
    from v2w_core.diffusion.fast_rollout import set_conv_memory_format

    model = make_causal_model()  # its own copy: channels-last changes the weights' layout in place
    runner = FastStreamer(model, FastPathConfig(channels_last=True))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    # same arithmetic in another memory order: equal up to float summation order
    torch.testing.assert_close(_rollout(model, runner), plain, rtol=1e-4, atol=1e-4)
    set_conv_memory_format(model, torch.contiguous_format)
    assert all(m.weight.is_contiguous() for m in convs)


@pytest.mark.parametrize("kernel", ["gemm", "reduce"])
def test_few_query_attention_equals_masked_sdpa(monkeypatch: pytest.MonkeyPatch, kernel: str) -> None:
    """Branch r over the shared history plus its own newest key == SDPA over concatenated keys with a
    mask hiding the other branches' newest keys; also when the rows run in chunks; both formulations."""
    from v2w_core.models import attention_kernels
    from v2w_core.models.attention_kernels import chunked_rows, few_query_attention

    g = torch.Generator().manual_seed(0)
    q, k_new, v_new = torch.randn(3, 40, 4, 2, 16, generator=g)
    k_hist, v_hist = torch.randn(2, 40, 4, 7, 16, generator=g)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 7:] = torch.eye(2, dtype=torch.bool)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([k_hist, k_new], 2), torch.cat([v_hist, v_new], 2), attn_mask=mask, scale=0.25
    )
    args = (q, k_hist, v_hist, k_new, v_new)
    torch.testing.assert_close(
        few_query_attention(*args, scale=0.25, kernel=kernel), want, rtol=1e-5, atol=1e-5
    )
    monkeypatch.setattr(attention_kernels, "MAX_ATTENTION_BATCH", 16)  # rows in chunks of 16, 16, 8
    chunked = chunked_rows(few_query_attention, *args, scale=0.25, kernel=kernel)
    torch.testing.assert_close(chunked, want, rtol=1e-5, atol=1e-5)


def test_auto_kernel_is_gemm_eagerly_and_a_reduction_inside_compile() -> None:
    """'auto' (the default) keeps the batched GEMMs in eager mode, where broadcasting would materialise
    the products, and gives torch.compile the broadcast form it fuses into one pass over K/V."""
    from torch.overrides import TorchFunctionMode

    from v2w_core.models.attention_kernels import few_query_attention
    from v2w_core.models.streaming import StreamState

    assert StreamState().few_query_kernel == "auto"
    g = torch.Generator().manual_seed(0)
    q, k_new, v_new = torch.randn(3, 6, 2, 2, 8, generator=g)
    k_hist, v_hist = torch.randn(2, 6, 2, 5, 8, generator=g)
    args = (q, k_hist, v_hist, k_new, v_new)

    class Calls(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[Any] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.seen.add(func)
            return func(*args, **(kwargs or {}))

    with Calls() as eager:
        want = few_query_attention(*args, scale=0.3)
    assert torch.matmul in eager.seen

    traced: list[Any] = []

    def backend(gm: torch.fx.GraphModule, _inputs: Any) -> Any:
        traced.extend(n.target for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    got = torch.compile(few_query_attention, backend=backend, fullgraph=True)(*args, scale=0.3)
    assert traced and torch.matmul not in traced
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_few_query_kernel_is_a_per_model_setting(causal_model: WorldModel) -> None:
    """FastPathConfig.few_query_kernel sets the runner's model only (two runners of two models in one
    process do not fight over a global), and an unknown name is refused."""
    other = copy.deepcopy(causal_model)
    FastStreamer(other, FastPathConfig(few_query_kernel="reduce"))
    assert other.stream_state.few_query_kernel == "reduce"
    assert causal_model.stream_state.few_query_kernel == "auto"
    with pytest.raises(ValueError, match="few_query_kernel must be one of"):
        FastStreamer(other, FastPathConfig(few_query_kernel="flash"))  # type: ignore[arg-type]


def test_bf16_autocast_stays_close_to_fp32(causal_model: WorldModel, plain: torch.Tensor) -> None:
    fast = _rollout(causal_model, FastStreamer(causal_model, FastPathConfig(autocast="bfloat16")))
    assert fast.dtype == plain.dtype
    # bf16 keeps ~3 significant digits; over 3 frames × 3 DDIM steps with η = 1 (same noise draws)
    # the relative error measured ~1e-2. Bound it at 5 %, far below the frames' own scale.
    rel = (fast - plain).norm() / plain.norm()
    assert rel < 5e-2, f"bf16 fast path deviates by {rel:.3%}"


@pytest.mark.parametrize("compile_encode", [True, False])
def test_compiled_path_runs_the_history_forward_through_the_compiled_forward(
    causal_model: WorldModel, plain: torch.Tensor, monkeypatch: pytest.MonkeyPatch, compile_encode: bool
) -> None:
    """With compile on, the history forward goes through the compiled forward (the model's eager forward
    never runs) unless compile_encode is off; the frames are the plain path's."""
    model = copy.deepcopy(causal_model)
    runner = FastStreamer(model, FastPathConfig(compile="default", compile_backend="aot_eager",
                                                compile_encode=compile_encode))  # fmt: skip
    eager_forwards: list[int] = []  # compiled code calls the forward it traced, not this attribute
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda *a: eager_forwards.append(1) or original(*a))
    torch.testing.assert_close(_rollout(model, runner), plain, rtol=1e-5, atol=1e-5)
    assert (len(eager_forwards) == 0) == compile_encode, f"{len(eager_forwards)} eager history forwards"


def test_freezing_keeps_the_modes_own_inductor_options() -> None:
    """torch.compile takes ``mode=`` or ``options=``, not both: with ``freeze`` the mode's options travel
    in the dict (max-autotune keeps its autotuning) next to ``freezing``."""
    from torch._inductor import list_mode_options

    from v2w_core.diffusion.fast_rollout import inductor_options

    assert inductor_options("default", freeze=False) == {"mode": "default"}
    frozen = inductor_options("max-autotune-no-cudagraphs", freeze=True)
    assert frozen == {"options": {**list_mode_options("max-autotune-no-cudagraphs"), "freezing": True}}
    assert frozen["options"]["max_autotune"] is True
    # extra config entries (the tuned bench mode) also travel in the dict, on top of the mode's own
    tuned = inductor_options("default", freeze=False, extra={"coordinate_descent_tuning": True})
    assert tuned == {"options": {**list_mode_options("default"), "coordinate_descent_tuning": True}}


@contextlib.contextmanager
def _ieee_fp32() -> Iterator[None]:
    """cuDNN convolutions run in TF32 by default on Ampere and later (``cudnn.allow_tf32``): two fp32 paths
    that pick different conv algorithms (eager vs. a traced graph's layouts) then differ by ~1e-3 per conv,
    0.005 after a 3-frame rollout (an H100, 2026-12-07). The GPU comparisons below run in IEEE fp32."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@_ieee_fp32()
def test_frozen_inductor_compile_equals_eager() -> None:
    """Freezing folds parameters into the compiled code; the history cache must stay an input (a frozen
    cache would replay the first window's history for every later frame: the sliding window catches it)."""
    model = make_causal_model().cuda()
    eager = _rollout(model, None, "cuda")
    runner = FastStreamer(model, FastPathConfig(compile="default", freeze=True))
    torch.testing.assert_close(_rollout(model, runner, "cuda"), eager, rtol=1e-3, atol=1e-3)
    assert runner._encode_graphs and runner._graphs and runner.compile_seconds > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@_ieee_fp32()
def test_cuda_graph_replay_equals_eager() -> None:
    model = make_causal_model().cuda()
    eager = _rollout(model, None, "cuda")
    runner = FastStreamer(model, FastPathConfig(cuda_graph=True))
    graphed = _rollout(model, runner, "cuda")
    # one graph per history length (the window fills), each a whole DDIM step: model, guidance, update
    assert runner._graphs and all(key[0] == "denoise" for key in runner._graphs), "no CUDA graph was captured"
    assert runner._encode_graphs and not runner._encode_graph_failed  # the history forward, one per length
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
    model_only = FastStreamer(model, FastPathConfig(cuda_graph=True, graph_ddim=False, graph_encode=False))
    torch.testing.assert_close(_rollout(model, model_only, "cuda"), eager, rtol=1e-4, atol=1e-4)
    assert model_only._graphs and not any(key[0] == "denoise" for key in model_only._graphs)
    assert not model_only._encode_graphs
    compiled = FastStreamer(model, FastPathConfig(compile="default", compile_backend="aot_eager"))
    torch.testing.assert_close(_rollout(model, compiled, "cuda"), eager, rtol=1e-4, atol=1e-4)
    assert compiled._encode_graphs and not compiled._encode_graph_failed  # compiled history forward, captured


def _carried_calls(model: WorldModel, runner: Any, device: str, carries: list[RolloutCarry]) -> list[torch.Tensor]:
    """Two play-session-like streams on one runner, interleaved frame by frame: each call generates one
    frame with its stream's carry (incremental history), its context the stream's newest window."""
    context, actions = _inputs(device)
    cfg = RolloutConfig(num_inference_steps=2, window=3, history_encoding="incremental")
    streams = [context, context.flip(0)]  # two different histories of the same shapes
    acts = [actions, actions.flip(0)]
    gens = [torch.Generator(device=device).manual_seed(s) for s in (1, 2)]
    for _ in range(N):
        for i, carry in enumerate(carries):
            frames = streams[i]
            lo = max(0, frames.shape[1] - cfg.window)
            a = acts[i][:, lo : frames.shape[1]]  # K + N - 1 recorded: enough for every call
            new = rollout(model, frames[:, lo:], a, 1, cfg, generator=gens[i], runner=runner, carry=carry)
            streams[i] = torch.cat([frames, new], dim=1)
    return [s[:, K:] for s in streams]


def test_carried_caches_are_private_to_their_stream(causal_model: WorldModel) -> None:
    """A runner's static cache is shared by every rollout of its shapes: detach_history hands a carry its
    own copy, attach_history (graphs off: the cache itself) puts it back. Two interleaved streams on one
    runner give the frames each gives on the model alone."""
    runner = FastStreamer(causal_model, FastPathConfig(cuda_graph=True))
    alone = _carried_calls(causal_model, None, "cpu", [RolloutCarry(), RolloutCarry()])
    shared = _carried_calls(causal_model, runner, "cpu", [RolloutCarry(), RolloutCarry()])
    for a, b in zip(shared, alone, strict=True):
        torch.testing.assert_close(a, b, **EXACT)
    cache = causal_model.encode_history(*_inputs()[:1], torch.zeros(B, K, dtype=torch.long), appendable=True)
    runner._static["x"] = cache
    private = runner.detach_history(cache)
    assert private is not cache and private.signature() == cache.signature()
    assert all(p.data_ptr() != c.data_ptr() for k in cache.entries for p, c in zip(private.entries[k], cache.entries[k]))
    assert runner.detach_history(private) is private and runner.attach_history(private) is private  # CPU: no graphs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@_ieee_fp32()
def test_interleaved_carried_streams_on_captured_graphs_equal_eager() -> None:
    """On CUDA the carried caches go through the static cache the step graphs read: two play sessions
    stepping in turn on one graph runner must not see each other's history."""
    model = make_causal_model().cuda()
    eager = _carried_calls(model, None, "cuda", [RolloutCarry(), RolloutCarry()])
    runner = FastStreamer(model, FastPathConfig(cuda_graph=True))
    graphed = _carried_calls(model, runner, "cuda", [RolloutCarry(), RolloutCarry()])
    assert runner._graphs, "no CUDA graph was captured"
    for a, b in zip(graphed, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_temporal_cross_attention_runs_in_row_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """SVD's per-pixel temporal cross-attention is chunked like the self-attention (no kernel grid overflow
    at large batch), with the same result."""
    from tests.models.conftest import clip, make_model
    from v2w_core.models import attention_kernels
    from v2w_core.models.attention_kernels import RowChunkedAttnProcessor
    from v2w_core.models.causalize import causalize

    model = causalize(make_model("svd"))
    wrapped = [
        m for m in model.modules() if isinstance(getattr(m, "processor", None), RowChunkedAttnProcessor)
    ]
    assert wrapped, "SVD's temporal cross-attentions should be wrapped"
    b = clip(batch=2, frames=3, seed=5)
    with torch.no_grad():
        whole = model(b["x"], b["timesteps"], b["actions"])
        # rows = 2·3·H·W, not a multiple of 7
        monkeypatch.setattr(attention_kernels, "MAX_ATTENTION_BATCH", 7)
        chunked = model(b["x"], b["timesteps"], b["actions"])
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
