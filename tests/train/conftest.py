"""Shared helpers for the training tests.

``DS_ACCELERATOR=cpu`` is set before anything imports deepspeed: DeepSpeed picks its accelerator once per
process, and these tests run DeepSpeed in the pytest process (single-rank engine tests) and in Ray workers.
"""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
