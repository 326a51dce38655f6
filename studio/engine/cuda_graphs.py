"""Replay the UNet, the ControlNet and the VAE decode of a diffusers pipeline from CUDA graphs.

At batch 1 the GPU spends most of a denoising step waiting for Python and kernel launches; a CUDA
graph replays the whole forward pass with one launch. `enable(pipe)` wraps the `forward` of the UNet
and the ControlNet and the VAE's `decode` (a few-step run spends as long decoding as denoising): the first
call with a new input signature (shapes, dtypes, flags) is captured, later
calls copy their tensors into the captured inputs and replay. diffusers' own denoising loop is unchanged,
so control start/end, guess mode and every scheduler work as before; the ControlNet's float
`conditioning_scale` becomes a tensor so that changing it needs no new capture.

A replay returns the captured *static* output tensors: the next replay of the same graph (and of any graph
of the same size, which shares its memory pool) overwrites them. diffusers' loop consumes each output before
the next call; a caller that keeps an output longer must copy it first.

A module that reads values back to the host (`.item()`, `.cpu()`, `nonzero`, ...) cannot be captured, and a
capture that fails leaves PyTorch's CUDA random-number state and allocator in a state no later run recovers
from (every later capture, and Ultralytics' random numbers, then fail too). So the first warm-up call of each
signature runs under `HostReads`, a dispatch mode of the calling thread alone, and a module caught reading
back runs eagerly before any capture is tried; that one module, recorded in `GraphStats.failures`, while the
other modules keep replaying. Weights changed in place (a LoRA fused, the base weights copied back) need
no new capture; weights that moved to new memory do, and `refresh` finds out which.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

MAX_GRAPHS_PER_MODULE = 6  # per size: with and without CFG, with and without ControlNet residuals, a repaint
WARMUP_CALLS = 2
# PyTorch allows one capture at a time per process, and `torch.cuda.empty_cache()` frees memory on every GPU,
# which would break another GPU's capture: with one pipeline per GPU in its own thread, both take this lock.
CAPTURE_LOCK = threading.Lock()


@dataclass
class GraphStats:
    """What the fast path did, for the run card."""

    captures: int = 0
    replays: int = 0
    capture_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # module -> why it runs eagerly


# Operators that wait for the GPU and copy a value back to the host: not allowed inside a capture.
HOST_READ_OPS = ("_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "unique", "_unique2", "equal")


class HostReads(TorchDispatchMode):
    """Notes the first operator of a forward that reads back to the host (a scalar, a data-dependent shape, a copy
    to the CPU). A dispatch mode belongs to the calling thread: other threads' work is not looked at."""

    def __init__(self) -> None:
        super().__init__()
        self.found: str | None = None

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.found is None and reads_back(func.__name__.split(".")[0], args, kwargs):
            self.found = func.__name__
        return func(*args, **kwargs)


def reads_back(name: str, args: tuple, kwargs: dict) -> bool:
    """True for an operator that waits for the GPU and brings a value to the host."""
    if name in HOST_READ_OPS:
        return True
    if name == "_to_copy":  # .cpu(), .to("cpu")
        device = kwargs.get("device")
        return device is not None and torch.device(device).type == "cpu" and args[0].device.type == "cuda"
    if name == "copy_":  # cpu_tensor.copy_(cuda_tensor)
        return args[0].device.type == "cpu" and args[1].device.type == "cuda"
    return False


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    output: Any


@dataclass
class _Pools:
    """One memory pool per latent height and width, shared by every graph of that size (ControlNet and UNet
    with and without CFG, the VAE decode): they are replayed one after the other, never at once, and each
    output is consumed before the next replay."""

    handles: dict[tuple, Any] = field(default_factory=dict)

    def get(self, shape: tuple) -> Any:
        key = tuple(shape[-2:])
        if key not in self.handles:
            self.handles[key] = torch.cuda.graph_pool_handle()
        return self.handles[key]


class GraphedForward:
    """Stands in for `module.forward` (or the VAE's `decode`): captures once per input signature, then replays."""

    def __init__(self, module: torch.nn.Module, forward: Callable[..., Any], pools: _Pools, stats: GraphStats,
                 scalar_kwargs: tuple[str, ...] = ()) -> None:
        self.eager = forward
        self.pools = pools
        self.stats = stats
        self.scalar_kwargs = scalar_kwargs
        self.graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._scalars: dict[tuple, torch.Tensor] = {}
        self.module = module
        self.module_name = model_name(module)
        self.failure: str | None = None
        self.weights = self._weight_pointers()

    def _weight_pointers(self) -> tuple[int, ...]:
        return tuple(p.data_ptr() for p in self.module.parameters())

    def weights_moved(self) -> bool:
        """True when a parameter now lives in other memory than the captured graphs read."""
        return self._weight_pointers() != self.weights

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sample = args[0] if args else kwargs.get("sample")
        if (self.failure is not None or not isinstance(sample, torch.Tensor) or sample.device.type != "cuda"
                or torch.cuda.is_current_stream_capturing()):
            return self.eager(*args, **kwargs)
        for name in self.scalar_kwargs:
            if isinstance(kwargs.get(name), (int, float)):
                kwargs[name] = self._scalar(name, sample).fill_(float(kwargs[name]))
        leaves, spec = tree_flatten((args, kwargs))
        signature = (spec, tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x
                                 for x in leaves))
        try:
            captured = self.graphs.get(signature)
        except TypeError:  # an unhashable argument: nothing to key a graph on
            return self.eager(*args, **kwargs)
        if captured is None:
            captured = self._capture(signature, leaves, spec, tuple(sample.shape))
            if captured is None:
                return self.eager(*args, **kwargs)
        self.graphs.move_to_end(signature)
        for static, tensor in zip(captured.inputs, (x for x in leaves if isinstance(x, torch.Tensor))):
            static.copy_(tensor)
        captured.graph.replay()
        self.stats.replays += 1
        return captured.output

    def _scalar(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A persistent 0-d tensor: `fill_` sets it without the host sync that `torch.tensor(x, device=...)` costs."""
        key = (name, like.device, like.dtype)
        if key not in self._scalars:
            self._scalars[key] = torch.zeros((), device=like.device, dtype=like.dtype)
        return self._scalars[key]

    def _capture(self, signature: tuple, leaves: list[Any], spec: Any, shape: tuple) -> _Captured | None:
        started = time.perf_counter()
        static_leaves = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = tree_unflatten(static_leaves, spec)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # lazy initialisation and autotuning must happen outside the capture
                with HostReads() as reads:
                    self.eager(*args, **kwargs)
                if reads.found is not None:
                    raise RuntimeError(f"it reads values back to the host ({reads.found}), which a capture cannot do")
                for _ in range(WARMUP_CALLS - 1):
                    self.eager(*args, **kwargs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # Our own stream: torch.cuda.graph's default capture stream is made once per process, on whichever
            # GPU captured first. thread_local: other threads (other GPUs, previews) may allocate meanwhile.
            with CAPTURE_LOCK, torch.cuda.graph(graph, pool=self.pools.get(shape), stream=side,
                                                capture_error_mode="thread_local"):
                output = self.eager(*args, **kwargs)
        except Exception as exc:  # found before the capture, or (unforeseen) the capture itself failed
            with contextlib.suppress(RuntimeError):  # a failed capture can leave an error for the next sync too
                torch.cuda.synchronize()
            lines = str(exc).splitlines() or [""]
            self.failure = self.stats.failures[self.module_name] = f"{type(exc).__name__}: {lines[0][:200]}"
            return None
        if len(self.graphs) >= MAX_GRAPHS_PER_MODULE:
            self.graphs.popitem(last=False)
        inputs = [leaf for leaf in static_leaves if isinstance(leaf, torch.Tensor)]
        self.graphs[signature] = captured = _Captured(graph, inputs, output)
        self.stats.captures += 1
        self.stats.capture_seconds += time.perf_counter() - started
        return captured


# What is wrapped: (the pipeline's component, its method, the float keyword arguments turned into tensors).
GRAPHED = (("controlnet", "forward", ("conditioning_scale",)), ("unet", "forward", ()), ("vae", "decode", ()))


def eager(method: Callable[..., Any]) -> Callable[..., Any]:
    """The plain method behind a graphed one (for calls that must not be captured)."""
    return method.eager if isinstance(method, GraphedForward) else method


def enable(pipe: Any, compile: bool = False, extra_unets: tuple = ()) -> GraphStats:
    """Wrap the UNet's and the ControlNet's forward and the VAE's decode (and the forward of each of
    `extra_unets`, such as an inpainting checkpoint's UNet); returns the shared statistics.

    With `compile`, the captured forwards are torch.compile'd first (inductor's fused kernels, without
    its own CUDA graphs, whose reused outputs clash with the ControlNet feeding the UNet); the
    compilation runs during the first capture of each shape and takes minutes."""
    stats, pools = GraphStats(), _Pools()
    for module, method, scalars in _wrapped(pipe, extra_unets):
        forward = getattr(module, method)
        forward = torch.compile(forward) if compile else forward
        setattr(module, method, GraphedForward(module, forward, pools, stats, scalars))
    return stats


def _wrapped(pipe: Any, extra_unets: tuple) -> list[tuple[Any, str, tuple[str, ...]]]:
    """(module, method, float keyword arguments turned into tensors) for everything graphed."""
    return [(getattr(pipe, name), method, scalars) for name, method, scalars in GRAPHED] + \
        [(unet, "forward", ()) for unet in extra_unets]


def model_name(module: torch.nn.Module) -> str:
    """The diffusers class a module is, as run cards name it: `ControlNetModel` also for the project's
    `GatedControlNet` subclass, so a card reads the same with or without the gate."""
    library = next((cls for cls in type(module).__mro__ if cls.__module__.startswith("diffusers.")), type(module))
    return library.__name__


def disable(pipe: Any, extra_unets: tuple = ()) -> None:
    """Back to plain eager forwards (drops every captured graph)."""
    for module, method, _ in _wrapped(pipe, extra_unets):
        module.__dict__.pop(method, None)


def moved(pipe: Any, extra_unets: tuple = ()) -> list[str]:
    """The graphed modules whose weights moved to other memory since they were wrapped (their graphs are stale)."""
    return [model_name(module) for module, method, _ in _wrapped(pipe, extra_unets)
            if isinstance(module.__dict__.get(method), GraphedForward) and module.__dict__[method].weights_moved()]
