"""FLOP counting and model-FLOPs utilisation (MFU), shared by the train loop and the benchmark.

MFU = (model FLOPs of one optimizer step) / (step time × peak dense FLOP/s of the devices). The FLOPs are
counted once, by running one forward + backward under ``torch.utils.flop_counter.FlopCounterMode`` on the
real input shape, so convolutions, attention and the per-frame embeddings are all included and nobody
has to maintain a hand formula per architecture. Activation recomputation (gradient checkpointing) is
*not* counted as useful work, as MFU conventionally does not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# Peak dense tensor-core FLOP/s (no sparsity) per device, for bf16/fp16 and for tf32 (our fp32 runs).
_PEAK = {
    "H200": (989e12, 494e12),
    "H100 SXM": (989e12, 494e12),
    "H100 80GB HBM3": (989e12, 494e12),
    "H100 NVL": (835e12, 418e12),
    "H100 PCIe": (756e12, 378e12),
    "H100": (989e12, 494e12),
    "GH200": (989e12, 494e12),
    "B200": (2250e12, 1100e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "A10G": (70e12, 35e12),
    "L4": (121e12, 60e12),
}


def peak_flops_for(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s for a CUDA device name, or None if unknown (MFU is then not reported)."""
    for key, (half, tf32) in _PEAK.items():
        if key in device_name:
            return half if precision in ("bf16", "fp16") else tf32
    return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of whatever ``fn`` runs (call it with a forward and ``backward()`` inside)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def mfu(
    flops_per_step: float, step_time_s: float, peak_flops_per_device: float | None, devices: int
) -> float | None:
    if not peak_flops_per_device or step_time_s <= 0:
        return None
    return flops_per_step / (step_time_s * peak_flops_per_device * devices)
