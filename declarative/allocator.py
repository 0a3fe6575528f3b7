"""allocator: glibc's malloc held at the ceiling of its own dynamic thresholds.

A layer call allocates and frees the same large temporaries (the batch's Newton matrices,
residuals and their terms: megabytes at a batch of 64 to 512) many times over. glibc serves
a block above M_MMAP_THRESHOLD by a fresh mmap, and returns the free top of its heap to the
system once it exceeds M_TRIM_THRESHOLD; both start at 128 KiB and rise only as the process
frees mmapped blocks (to the largest one's size, and twice that). Until they have risen far
enough, every call touches its temporaries' pages for the first time again: a page fault
each 4 KiB (BENCHMARKS.md: a thousand a call at a batch of 64, tens of thousands at 512).

`hold_freed_memory` sets both to where glibc's dynamic rule ends: M_MMAP_THRESHOLD at
DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on a 64-bit system) and M_TRIM_THRESHOLD twice that, the
state a process reaches once it has freed one 32 MiB block (mallopt(3)). Blocks up to
32 MiB then come from the heap, and up to 64 MiB of freed memory per malloc arena stays with
the process instead of going back to the system. It runs once per process, on a layer's
first solve, and changes nothing where malloc is not glibc's, where the user has tuned malloc
(any MALLOC_*_ variable, or GLIBC_TUNABLES naming glibc.malloc), or where
DECLARATIVE_MALLOPT=0.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

# mallopt(3)'s parameter numbers (malloc.h) and the values set
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)  # DEFAULT_MMAP_THRESHOLD_MAX
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

# the opt-out, and the environment variables by which a user tunes glibc's malloc
OPT_OUT = "DECLARATIVE_MALLOPT"
USER_TUNED = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
              "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST")

_done = False
_held = False
_lock = threading.Lock()


def _libc() -> ctypes.CDLL | None:
    """glibc, where it is this process's C library, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)  # (the process's own symbols: its C library's among them)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def wanted(environ: dict | os._Environ = os.environ) -> bool:
    """Whether `hold_freed_memory` may change malloc's thresholds (the environment's say)."""
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(name in environ for name in USER_TUNED):
        return False
    return "glibc.malloc" not in environ.get("GLIBC_TUNABLES", "")


def hold_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (module docstring), once per process. Returns
    whether they were set by this call."""
    global _done, _held
    if _done:
        return False
    with _lock:
        if _done:
            return False
        _done = True
        libc = _libc() if wanted() else None
        if libc is None:
            return False
        # (setting either ends glibc's own adjustment of both)
        mmap = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        trim = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        _held = mmap and trim
        return _held


def state() -> str:
    """What `hold_freed_memory` did in this process, in words (for benchmark reports)."""
    if not _done:
        return "untouched (no layer has solved yet)"
    if not _held:
        return "untouched"
    return (f"glibc M_MMAP_THRESHOLD {MMAP_THRESHOLD >> 20} MiB, "
            f"M_TRIM_THRESHOLD {TRIM_THRESHOLD >> 20} MiB")
