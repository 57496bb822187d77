"""bench/train_step.py's pure parts: issue 18's headline figures and the profile's kernel buckets."""

from __future__ import annotations

import pytest

from bench.train_step import headline, kernel_buckets


def _row(variant: str, step_s: float, mfu: float, peak: float) -> dict:
    return {"variant": variant, "step_time_s": step_s, "samples_per_s": 8 / step_s, "mfu": mfu,
            "peak_mem_gib": peak, "first_step_s": 12.0}  # fmt: skip


def _record(*rows: dict) -> dict:
    return {"preset": "paper", "device": "cuda", "world_size": 1, "batch_per_device": 8, "grad_ckpt": "layer",
            "compile_blocks": "layer", "results": list(rows),
            "machine": {"cpu": "x", "cores": 16, "cuda_device": "NVIDIA H100 80GB HBM3"}}  # fmt: skip


def test_headline_has_the_issue_figures_from_the_best_zero2_row() -> None:
    h = headline(_record(_row("torch", 2.0, 0.15, 47.6), _row("zero2", 1.8, 0.17, 47.7),
                         _row("zero2_dsadam", 1.7, 0.18, 48.0)))  # fmt: skip
    assert h["mfu"] == 0.18 and h["peak_gib"] == 48.0  # the faster ZeRO-2 engine
    assert h["mfu_torch"] == 0.15
    assert h["zero2_over_torch"] == pytest.approx(0.85)
    assert h["micro_batch"] == 8 and h["device"] == "NVIDIA H100 80GB HBM3"
    assert h["first_step_s"] == {"torch": 12.0, "zero2": 12.0, "zero2_dsadam": 12.0}


def test_headline_without_a_torch_row_or_with_failures() -> None:
    h = headline(_record(_row("zero2", 1.8, 0.17, 47.7), {"variant": "torch", "error": "out of memory"}))
    assert h["mfu"] == 0.17 and h["mfu_torch"] is None and h["zero2_over_torch"] is None
    assert h["errors"] == {"torch": "out of memory"}


def test_kernel_buckets_sort_kernels_by_what_they_do() -> None:
    kernels = [
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7", 100.0, 10),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", 30.0, 5),
        ("nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_NNT", 40.0, 20),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>", 20.0, 100),
        ("void at::native::elementwise_kernel<direct_copy_kernel_cuda>", 25.0, 50),
        ("void at::native::vectorized_layer_norm_kernel<c10::BFloat16>", 5.0, 3),
        ("triton_per_fused_add_native_group_norm_0", 7.0, 9),
        ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>", 3.0, 1),
        ("void at::native::vectorized_elementwise_kernel<GeluCUDAKernelImpl>", 2.0, 4),
    ]
    b = kernel_buckets(kernels)
    assert b["attention"] == {"ms": 100.0, "calls": 10}
    assert b["conv"]["ms"] == 30.0 and b["gemm"]["ms"] == 40.0
    assert b["copies / casts"] == {"ms": 45.0, "calls": 150}
    assert b["inductor (fused triton)"]["ms"] == 7.0 and b["norm"]["ms"] == 5.0
    assert b["optimizer"]["ms"] == 3.0 and b["other (eager)"]["ms"] == 2.0
    assert next(iter(b)) == "attention"  # largest first
    assert sum(v["ms"] for v in b.values()) == sum(k[1] for k in kernels)
