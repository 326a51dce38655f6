"""Choose the attention implementation that really works here, before diffusers is imported.

Notebook images often carry an xformers or flash-attn built for another torch. Such a package can fail
at import (the seed of this project: "Current Torch with Flash-Attention 2.5.7 doesnt have a compatible
aten::_flash_attention_forward schema", raised by `import xformers.ops`, which diffusers runs at its own
import) or only at its first call. So every candidate is probed in a subprocess, with a timeout, by a
real attention call checked against a float32 reference. A package that fails is quarantined: hidden
from diffusers and transformers through `sys.modules`, so they behave as if it were not installed.

    report = prepare("auto")     # before the first `import diffusers`; never raises
    apply(pipe, report.chosen)   # once the pipeline is loaded

`python attention_backend.py [--json]` prints the same report.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

BACKENDS = ("flash-attn", "xformers", "sdpa", "sliced")
# The import name, distribution name and diffusers' availability flag of each optional package.
PACKAGES = {
    "flash-attn": ("flash_attn", "flash-attn", "_flash_attn_available"),
    "xformers": ("xformers", "xformers", "_xformers_available"),
}
# On sm_80+ PyTorch's SDPA dispatches to FlashAttention-2 / cuDNN kernels itself, and on a T4 its
# memory-efficient kernel is what xformers calls too: SDPA is never slower and needs nothing extra.
AUTO_ORDER = ("sdpa", "flash-attn", "xformers", "sliced")
PROBE_TIMEOUT_S = 90.0
MIN_FLASH_CAPABILITY = (8, 0)

_PROBE = r'''
import json, sys
name, device = sys.argv[1], sys.argv[2]
result = {"usable": False, "reason": "", "kernels": {}}

def cause(exc):
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]

def check(out, ref, tol):
    err = (out.float() - ref).abs().max().item()
    if not err <= tol:
        raise ValueError(f"wrong result: max error {err:.3g} against the float32 reference")
    return err

try:
    import torch
    dtype = torch.float16 if device == "cuda" else torch.float32
    tol = 2e-2 if dtype == torch.float16 else 1e-4
    gen = torch.Generator().manual_seed(0)
    # Self- and cross-attention shapes of SD1.5's first block: head dim 40, 77 text tokens.
    q = torch.randn(2, 8, 256, 40, generator=gen).to(device, dtype)
    k = torch.randn(2, 8, 77, 40, generator=gen).to(device, dtype)
    v = torch.randn(2, 8, 77, 40, generator=gen).to(device, dtype)
    ref = torch.softmax(q.float() @ k.float().transpose(-1, -2) / 40 ** 0.5, dim=-1) @ v.float()
    if name == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        import torch.nn.functional as F
        for kernel, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                                ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)):
            try:
                with sdpa_kernel(backend):
                    check(F.scaled_dot_product_attention(q, k, v), ref, tol)
                result["kernels"][kernel] = "ok"
            except Exception as exc:
                result["kernels"][kernel] = cause(exc)
        check(F.scaled_dot_product_attention(q, k, v), ref, tol)
        working = [k for k, v in result["kernels"].items() if v == "ok"]
        result.update(usable=True, reason="passed; kernels: " + ", ".join(working))
    elif name == "xformers":
        import xformers.ops
        out = xformers.ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        check(out.transpose(1, 2), ref, tol)
        if device == "cuda":
            result.update(usable=True, reason="passed a real attention call")
        else:
            result["reason"] = "works, but diffusers runs xformers only on a CUDA GPU"
    elif name == "flash-attn":
        import flash_attn
        capability = torch.cuda.get_device_capability() if device == "cuda" else None
        if capability is None or capability < (8, 0):
            where = f"compute capability {capability[0]}.{capability[1]}" if capability else "no CUDA GPU"
            result["reason"] = f"imports, but FlashAttention-2 needs an Ampere or newer GPU (here: {where})"
        else:
            out = flash_attn.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            check(out.transpose(1, 2), ref, tol)
            result.update(usable=True, reason="passed a real attention call")
except BaseException as exc:
    result["reason"] = cause(exc)
print("PROBE_RESULT " + json.dumps(result), flush=True)
'''


@dataclass
class Candidate:
    """One attention implementation and what its probe found."""

    name: str
    usable: bool
    reason: str
    version: str | None = None
    kernels: dict[str, str] = field(default_factory=dict)
    installed: bool = True


@dataclass
class BackendReport:
    """What `prepare` found and chose; `why` is written for a person."""

    requested: str
    chosen: str
    why: str
    candidates: list[Candidate]
    device: str
    environment: dict[str, Any]
    quarantined: list[str] = field(default_factory=list)

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table for a terminal or a notebook cell."""
        rows = [("candidate", "usable", "version", "reason")]
        rows += [(c.name, "yes" if c.usable else "no", c.version or "-", c.reason) for c in self.candidates]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3] for row in rows]
        env = ", ".join(f"{k} {v}" for k, v in self.environment.items())
        lines += ["", f"environment: {env}", f"chosen: {self.chosen} (requested: {self.requested})", f"why: {self.why}"]
        if self.quarantined:
            lines.append("quarantined (hidden from diffusers): " + ", ".join(self.quarantined))
        return "\n".join(lines)


def _distribution_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _run_probe(name: str, device: str, timeout_s: float) -> dict[str, Any]:
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, name, device], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"usable": False, "reason": f"the probe hung for more than {timeout_s:.0f} s", "kernels": {}}
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE_RESULT "):
            return json.loads(line[len("PROBE_RESULT "):])
    died = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    tail = proc.stderr.strip().splitlines()[-1:] or [""]
    return {"usable": False, "reason": f"the probe process died ({died}) {tail[0]}".strip()[:300], "kernels": {}}


def _environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        env.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(), capability=f"{major}.{minor}")
    return env


def _probe_all(device: str, timeout_s: float) -> list[Candidate]:
    candidates: dict[str, Candidate] = {}
    to_probe = ["sdpa"]
    for name, (module, dist, _) in PACKAGES.items():
        if _installed(module):
            to_probe.append(name)
        else:
            candidates[name] = Candidate(name, False, "not installed", _distribution_version(dist), installed=False)
    with concurrent.futures.ThreadPoolExecutor(len(to_probe)) as pool:
        results = dict(zip(to_probe, pool.map(lambda n: _run_probe(n, device, timeout_s), to_probe)))
    for name, result in results.items():
        version = _distribution_version(PACKAGES[name][1]) if name in PACKAGES else None
        candidates[name] = Candidate(name, bool(result["usable"]), result["reason"], version, result["kernels"])
    if device == "cpu" and candidates["sdpa"].usable:
        candidates["sdpa"].reason = "passed on the CPU"
    candidates["sliced"] = Candidate("sliced", True, "standard attention in slices; always works, slowest")
    return [candidates[name] for name in BACKENDS]


def quarantine(name: str) -> None:
    """Hide a broken optional package from diffusers and transformers, even after their import."""
    module, _, flag = PACKAGES[name]
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        del sys.modules[loaded]
    sys.modules[module] = None  # type: ignore[assignment]  # find_spec() -> None, import -> ModuleNotFoundError
    import_utils = sys.modules.get("diffusers.utils.import_utils")
    if import_utils is not None:
        setattr(import_utils, flag, False)


def _choose(requested: str, candidates: list[Candidate]) -> tuple[str, str]:
    usable = {c.name: c for c in candidates if c.usable}
    fallback = next(name for name in AUTO_ORDER if name in usable)
    if requested == "auto":
        if fallback == "sdpa":
            return fallback, "PyTorch SDPA passed its probe; it is the fastest choice here and needs nothing extra."
        sdpa = next(c for c in candidates if c.name == "sdpa")
        return fallback, f"{fallback} is the best backend that passed its probe; SDPA failed ({sdpa.reason})."
    if requested in usable:
        return requested, f"{requested} was requested and passed its probe."
    reason = next((c.reason for c in candidates if c.name == requested), "unknown backend")
    return fallback, f"{requested} was requested but cannot be used ({reason}); using {fallback} instead."


_REPORTS: dict[tuple[str, str], BackendReport] = {}


def prepare(requested: str = "auto", device: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> BackendReport:
    """Probe, quarantine and choose. Never raises; call it before the first `import diffusers`."""
    try:
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        device = device.split(":")[0]
        key = (requested, device)
        if key not in _REPORTS:
            candidates = _probe_all(device, timeout_s)
            quarantined = [c.name for c in candidates if c.name in PACKAGES and c.installed and not c.usable]
            for name in quarantined:
                quarantine(name)
            chosen, why = _choose(requested, candidates)
            if quarantined:
                why += " Set aside as broken: " + "; ".join(
                    f"{c.name} {c.version} ({c.reason})" for c in candidates if c.name in quarantined) + "."
            _REPORTS[key] = BackendReport(requested, chosen, why, candidates, device, _environment(device),
                                          quarantined)
        return _REPORTS[key]
    except Exception as exc:  # the report must never stop the app from starting
        for name in PACKAGES:
            quarantine(name)
        return BackendReport(requested, "sliced", f"probing failed ({type(exc).__name__}: {exc}); using the safe "
                             "fallback", [Candidate("sliced", True, "always works")], device or "cpu",
                             {"python": platform.python_version()}, list(PACKAGES))


def attention_modules(pipe: Any) -> list[Any]:
    """The modules whose attention processors a backend replaces."""
    controlnet = getattr(pipe, "controlnet", None)
    controlnets = list(getattr(controlnet, "nets", [controlnet])) if controlnet is not None else []
    return [m for m in (pipe.unet, *controlnets, pipe.vae) if m is not None]


def apply(pipe: Any, backend: str) -> None:
    """Install `backend`'s attention processors on the UNet, the ControlNet(s) and the VAE."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor

    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    for module in attention_modules(pipe):
        if backend == "sliced" and module is pipe.vae:
            module.set_attn_processor(AttnProcessor())  # the VAE's one attention block passes temb, which
            continue                                    # SlicedAttnProcessor does not take
        if backend == "sdpa":
            module.set_attn_processor(AttnProcessor2_0())
        elif backend == "flash-attn":
            module.set_attn_processor(FlashAttnProcessor())
        elif backend == "xformers":
            module.set_attn_processor(AttnProcessor2_0())
            module.enable_xformers_memory_efficient_attention()
        else:
            module.set_attn_processor(SlicedAttnProcessor(slice_size=1))


class FlashAttnProcessor:
    """diffusers attention processor calling flash-attn's kernel; masked or non-half-precision attention,
    which that kernel cannot do, goes to SDPA."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0
        from flash_attn import flash_attn_func

        self._flash = flash_attn_func
        self._sdpa = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch

        if (attention_mask is not None or hidden_states.dtype not in (torch.float16, torch.bfloat16)
                or attn.spatial_norm is not None or hidden_states.ndim != 3):
            return self._sdpa(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch = hidden_states.shape[0]
        head_dim = attn.inner_dim // attn.heads
        query = attn.to_q(hidden_states).view(batch, -1, attn.heads, head_dim)
        key = attn.to_k(context).view(batch, -1, attn.heads, head_dim)
        value = attn.to_v(context).view(batch, -1, attn.heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = self._flash(query, key, value, softmax_scale=attn.scale).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Probe the attention backends and say which one the app uses.")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--request", default="auto", choices=("auto", *BACKENDS), help="the backend to ask for")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    report = prepare(args.request, args.device)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
