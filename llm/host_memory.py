"""Host malloc settings that stop XLA:CPU from page-faulting its buffers on every call."""

from __future__ import annotations

import ctypes
import sys

# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_applied = False


def retain_freed_memory() -> bool:
    """Make glibc keep freed host memory mapped for reuse; True where it applies (glibc).

    XLA:CPU allocates an executable's temporary buffers afresh on every call: 1.1 GB for
    the `small` train step at batch 16 x 256. glibc serves a block that large with its own
    mmap and unmaps it when freed, so every step page-faults each page in again (~270k
    faults, ~15% of that step on a 2-core VM). With one malloc arena, no mmap and no
    trimming, the freed block stays mapped and the next step reuses it. The cost: the
    process keeps its high-water mark of host memory until it exits.

    Call it before the first JAX computation: threads that already own a malloc arena keep
    theirs. The scripts in `scripts/` call it first thing; accelerators are unaffected
    (their buffers are not host malloc).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc: leave it as it is
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # A trim threshold of -1 is SIZE_MAX once glibc widens it: never trim.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    _applied = all(mallopt(option, value) == 1 for option, value in settings)
    return _applied
