"""The shape of the code: entry points at the top, one package in four layers whose imports point one way
(page -> serving -> engine -> core), a core that needs no torch, and short functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

ENTRY_POINTS = {"app", "inference_pipeline", "attention_backend", "launch"}
LAYERS = ("core", "engine", "serving", "page")
HEAVY = ("torch", "diffusers", "transformers", "ultralytics", "peft", "accelerate", "streamlit")
MAX_FUNCTION_LINES = 60


def modules(layer: str) -> list[Path]:
    return sorted((ROOT / "studio" / layer).glob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_only_the_entry_points_sit_at_the_top():
    assert {path.stem for path in ROOT.glob("*.py")} <= ENTRY_POINTS


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_one_way(layer):
    above = {f"studio.{name}" for name in LAYERS[LAYERS.index(layer) + 1:]} | ENTRY_POINTS - {"attention_backend"}
    for path in modules(layer):
        back = {name for name in imported(path) if name.split(".")[0] in above or
                any(name == up or name.startswith(up + ".") for up in above)}
        assert not back, f"studio/{layer}/{path.name} imports {sorted(back)}, a layer above it"


def test_core_never_names_a_heavy_library():
    for path in modules("core"):
        heavy = {name for name in imported(path) if name.split(".")[0] in HEAVY}
        assert not heavy, f"studio/core/{path.name} imports {sorted(heavy)}"


def test_every_core_module_imports_with_torch_and_the_model_libraries_unimportable():
    names = [f"studio.core.{path.stem}" for path in modules("core") if path.stem != "__init__"]
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in HEAVY)
    proc = subprocess.run([sys.executable, "-c", f"import sys; {blocked}; import {', '.join(names)}; print('ok')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def project_files() -> list[Path]:
    return [path for path in ROOT.rglob("*.py") if not {"tests", ".venv"} & set(path.relative_to(ROOT).parts)]


def test_no_function_outside_the_tests_is_longer_than_sixty_lines():
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in project_files() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_the_inference_pipeline_class_stays_small():
    tree = ast.parse((ROOT / "studio" / "engine" / "pipeline.py").read_text())
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "InferencePipeline")
    assert cls.end_lineno - cls.lineno + 1 <= 250


def test_the_public_names_still_come_from_inference_pipeline():
    proc = subprocess.run([sys.executable, "-c", "from inference_pipeline import InferencePipeline, GenerationRequest, "
                           "GenerationResult, load_image, InvalidImageError; print(GenerationRequest().steps)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "20", proc.stderr
