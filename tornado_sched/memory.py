"""Process memory: give large freed blocks back to the OS.

glibc raises its mmap threshold to the size of the largest block freed so far (up to
32 MiB). scrypt (`auth.py`) allocates 16 MiB per password check, so after the first
one every later check takes its 16 MiB from the calling thread's malloc arena, and
the arena keeps it resident after the free: 16 MiB per worker thread that ever ran
scrypt, for the life of the process. A fixed threshold turns the adjustment off:
blocks of `MMAP_THRESHOLD` bytes or more are always mapped on their own and unmapped
when freed, and smaller ones behave as before.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 1024 * 1024

_done = False


def release_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix the C allocator's mmap threshold (glibc on Linux; elsewhere a no-op).

    Returns True when the allocator accepted it. Idempotent; call it before threads
    start allocating (an import of `auth` does)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the libc already loaded in this process
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = mallopt(M_MMAP_THRESHOLD, threshold) == 1
    if not _done:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused: large freed blocks may stay resident")
    return _done
