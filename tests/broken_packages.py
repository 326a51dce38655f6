"""Broken attention packages as notebooks really carry them, written into a folder for PYTHONPATH.

Each one fails the way the real package does, through the same mechanism where that can be had here:
- `schema_xformers`: an xformers whose `import xformers.ops` runs xformers' own schema check against the
  installed torch's real `aten::_flash_attention_forward` schema, built for the other side of the
  rng_state/philox change, and raises the seed's ImportError.
- the real xformers 0.0.35 wheel (installed by `make test` into .venv/broken-xformers): built for another
  torch, it imports and then raises NotImplementedError at its first call.
- `undefined_symbol_flash_attn`: a flash_attn whose CUDA extension is a real shared object with an
  unresolved torch symbol, so `import flash_attn` fails in the dynamic loader exactly as after a torch upgrade.
"""

from __future__ import annotations

import importlib.machinery
import subprocess
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_BROKEN_XFORMERS = ROOT / ".venv" / "broken-xformers"
MISSING_SYMBOL = "_ZN3c104cuda9SetDeviceEi"


def _dist_info(folder: Path, dist: str, module: str, version: str) -> None:
    info = folder / f"{module}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(module + "\n")


def schema_xformers(folder: Path) -> Path:
    package = folder / "xformers"
    (package / "ops" / "fmha").mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "0.0.23"\n')
    (package / "ops" / "__init__.py").write_text("from .fmha import memory_efficient_attention  # noqa: F401\n")
    (package / "ops" / "fmha" / "__init__.py").write_text(textwrap.dedent("""\
        from . import flash  # noqa: F401

        def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
            raise RuntimeError("unreachable: the import already failed")
        """))
    (package / "ops" / "fmha" / "flash.py").write_text(textwrap.dedent("""\
        from .torch_attention_compat import is_pt_flash_compatible

        FLASH_VERSION = "0.0.0"
        if is_pt_flash_compatible(force=True):
            FLASH_VERSION = "pt"
        """))
    (package / "ops" / "fmha" / "torch_attention_compat.py").write_text(textwrap.dedent('''\
        import torch
        from torch._C import parse_schema


        def is_pt_flash_compatible(force: bool) -> bool:
            if not hasattr(torch.nn.attention, "_get_flash_version"):
                return False
            FLASH_VERSION = torch.nn.attention._get_flash_version()
            fwd_schema_str = (
                "aten::_flash_attention_forward(Tensor query, Tensor key, Tensor value, "
                "Tensor? cum_seq_q, Tensor? cum_seq_k, SymInt max_q, SymInt max_k, float dropout_p, "
                "bool is_causal, bool return_debug_mask, *, float? scale=None, "
                "SymInt? window_size_left=None, SymInt? window_size_right=None, "
                "Tensor? seqused_k=None, Tensor? alibi_slopes=None) -> (Tensor output, Tensor softmax_logsumexp, "
                "Tensor philox_seed, Tensor philox_offset, Tensor debug_attn_mask)"
            )
            expected_fwd_schema = parse_schema(fwd_schema_str)
            current_schema = torch.ops.aten._flash_attention_forward.default._schema
            if not current_schema.is_backward_compatible_with(expected_fwd_schema):
                if force:
                    raise ImportError(
                        f"Current Torch with Flash-Attention {FLASH_VERSION} doesnt have "
                        "a compatible aten::_flash_attention_forward schema\\n"
                        f"EXPECTED:\\n{expected_fwd_schema}\\n"
                        f"but GOT:\\n{current_schema}"
                    )
                return False
            return True
        '''))
    _dist_info(folder, "xformers", "xformers", "0.0.23")
    return folder


def undefined_symbol_flash_attn(folder: Path) -> Path:
    package = folder / "flash_attn"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "2.5.7"\n\nfrom flash_attn.flash_attn_interface import '
                                         'flash_attn_func  # noqa: F401\n')
    (package / "flash_attn_interface.py").write_text("import flash_attn_2_cuda as flash_attn_gpu  # noqa: F401\n\n"
                                                     "def flash_attn_func(*args, **kwargs):\n"
                                                     "    return flash_attn_gpu.fwd(*args, **kwargs)\n")
    source = folder / "flash_attn_2_cuda.c"
    source.write_text(f"extern void {MISSING_SYMBOL}(int);\nvoid fwd(void) {{ {MISSING_SYMBOL}(0); }}\n")
    library = folder / ("flash_attn_2_cuda" + importlib.machinery.EXTENSION_SUFFIXES[0])
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    source.unlink()
    _dist_info(folder, "flash-attn", "flash_attn", "2.5.7")
    return folder
