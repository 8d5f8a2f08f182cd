"""Keep freed memory for reuse instead of handing it back to the OS per response.

glibc serves blocks above a dynamic threshold (128 KiB at start) with mmap and
trims the heap top once it passes twice that, so every large response body
(1.5 MB of JSON for 10,000 rows, an Arrow or Parquet file) was mapped, faulted
in page by page and unmapped again: ~190 page faults and 0.2-1.7 ms per 10,000-row
JSON response (benchmarks/README.md). Fixed thresholds keep such blocks (up
to 16 MB) in the heap, where the next response reuses them; the cost is that
up to TRIM_THRESHOLD bytes of freed memory per malloc arena (the main thread's
and each busy thread's) stay resident instead of going back to the OS.

An operator's own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ (glibc's
environment knobs) win; elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024


def retain_freed_memory(threshold: int = TRIM_THRESHOLD) -> bool:
    """True when the thresholds were set (glibc, not overridden by the environment).

    `threshold` is both: the memory budget passes a smaller one when a worker's
    share of the container is small (ops/memory_budget.py)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, min(threshold, MMAP_THRESHOLD))) and bool(
        mallopt(_M_TRIM_THRESHOLD, threshold)
    )
