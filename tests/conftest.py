"""Shared fixtures: the tiny offline models are built by the test run itself, once per session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Nothing in the tests may reach or reuse a real model cache.
_HOME = tempfile.mkdtemp(prefix="hf-home-")
os.environ["HF_HOME"] = _HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"  # no test may try the network
os.environ["YOLO_CONFIG_DIR"] = str(Path(_HOME) / "ultralytics")
OUTPUTS = Path(_HOME) / "outputs"
os.environ["OUTPUTS_DIR"] = str(OUTPUTS)  # never the project's own outputs/ folder


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_pipeline(model_cache: Path):
    from inference_pipeline import InferencePipeline
    from studio.core.settings import Settings

    # free LoRA paths: the LoRA tests load files they make; tests/test_security.py checks the offered list
    return InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device="cpu",
                                               allow_any_lora=True, outputs_dir=OUTPUTS))


@pytest.fixture
def photo() -> Image.Image:
    """A small scene with hard edges, so that Canny has something to find."""
    canvas = np.full((96, 80, 3), 230, np.uint8)
    canvas[20:60, 10:50] = (200, 40, 40)
    canvas[50:90, 40:75] = (30, 90, 200)
    return Image.fromarray(canvas)


@pytest.fixture
def app_env(model_cache, monkeypatch) -> None:
    """The environment the page runs under in tests: the tiny models, on the CPU, built once per run."""
    monkeypatch.setenv("MODELS", "tiny")
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("APP_CACHE_DIR", str(model_cache))
