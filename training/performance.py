"""Process-level settings that make CPU training faster; none of them changes a number the model computes.

`tune_cpu_allocator()`: glibc's malloc hands every block above its mmap threshold (128 KiB, rising to at most
32 MiB) to its own `mmap` and gives it back with `munmap` when freed. A training step allocates and frees hundreds
of such tensors (a ViT's attention scores at batch 128: 43 MB each), so every one of them is page-faulted in again,
4 KiB at a time, on every step. Measured on this project's 2-core CPU (a KVM guest): a 43 MB elementwise multiply
took 42-52 ms with the defaults and 7 ms with freed memory kept in the process. This is what the usual advice to
run PyTorch on CPU with jemalloc or tcmalloc buys, without preloading a library.

The same effect from outside the process (e.g. for `accelerate launch`): set the environment variables
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647` before Python starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of unmapping it (process-wide, from now on).

    Large blocks come from the heap instead of fresh `mmap`s (`M_MMAP_MAX = 0`) and the heap's free top is only
    returned to the system beyond 2 GiB (`M_TRIM_THRESHOLD`). The resident memory stays at the process's peak.
    Returns whether the settings were applied (False off Linux / glibc, e.g. on macOS or musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it, and only glibc's mallopt takes these numbers
    except (OSError, AttributeError):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) & bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


__all__ = ["tune_cpu_allocator"]
