"""Memory a visitor's photo used goes back to the system when the photo is let go.

glibc's malloc serves a large block from the heap of the thread that asks, once a block of that size was freed
before (its mmap threshold grows to the largest freed block, up to 32 MB), and keeps freed heap memory for later:
a 6000x4000 upload decoded in each of the API's pool threads left ~100 MB per thread resident after the call.
A fixed threshold of 1 MiB (mallopt M_MMAP_THRESHOLD, which also stops the growth) maps every large buffer
(decoded photos, Pillow's 16 MB blocks, numpy arrays) on its own, and unmaps it when freed. Elsewhere (macOS,
musl, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20
log = logging.getLogger(__name__)


def return_large_blocks() -> bool:
    """Map each allocation of 1 MiB or more separately, so freeing it returns it; True where glibc took it."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        taken = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):
        return False
    log.info("large allocations are mapped on their own (mmap threshold %d bytes): %s", MMAP_THRESHOLD_BYTES, taken)
    return taken
