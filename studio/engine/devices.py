"""Which devices the app serves on, and how a thread makes one of them its own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from studio.core.settings import Settings

# Torch's intra-op threads on the CPU. Ultralytics sets the calling thread's count to cores - 1 at its first CPU
# prediction (1 on two cores), and a worker thread inherits no setting: each use sets it back to this.
CPU_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def on_device(device: str) -> Iterator[None]:
    """Make `device` the calling thread's current one (CUDA streams, graphs and Ultralytics follow it); on the
    CPU, give the calling thread every core, before and after (Ultralytics lowers the count)."""
    if device.startswith("cuda"):
        with torch.cuda.device(device):
            yield
        return
    torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(CPU_THREADS)


def worker_devices(settings: Settings) -> list[str]:
    """The devices to serve on: `settings.device` alone when set, else each GPU of `settings.gpus` (default
    every visible one), else the CPU."""
    if settings.device:
        return [settings.device]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return ["cpu"]
    gpus = settings.gpus if settings.gpus is not None else tuple(range(count))
    missing = [gpu for gpu in gpus if gpu >= count]
    if missing:
        raise ValueError(f"GPUS names GPU {missing[0]}, but this machine has {count} (0 to {count - 1})")
    return [f"cuda:{gpu}" for gpu in gpus]


def describe(device: str, memory: bool = False) -> str:
    """`cpu`, or `cuda:0 (NVIDIA H200)`, with the memory in use when asked."""
    if not device.startswith("cuda"):
        return device
    text = f"{device} ({torch.cuda.get_device_name(device)}"
    if memory:
        free, total = torch.cuda.mem_get_info(device)
        text += f", {(total - free) / 2**30:.1f} of {total / 2**30:.1f} GiB used"
    return text + ")"
