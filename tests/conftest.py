"""Shared fixtures: the tiny offline models are built by the test run itself, once per session; real servers and
one Ray instance are started on first use and shared by the whole session. A test is marked by what it uses
(`server`, `browser`, `ray`), so `make test-fast` can leave those out."""

from __future__ import annotations

import os
import subprocess
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
# The tests' Ray instances live on loopback for minutes: no token (Ray 2.60 turns token auth on by default once a
# token exists in ~/.ray, and a server started later then fails to join the session's head with it).
os.environ["RAY_AUTH_MODE"] = "disabled"
OUTPUTS = Path(_HOME) / "outputs"
os.environ["OUTPUTS_DIR"] = str(OUTPUTS)  # never the project's own outputs/ folder
# The page tests were written against Quality's defaults; on this CPU the page would open on Fast (START_PRESET's
# "auto"). Every in-process job queue and every server the tests start reads it; the test of "auto" sets its own.
os.environ["START_PRESET"] = "quality"
# The marker each fixture brings to the tests that use it, directly or through another fixture.
MARKED_BY = {"servers": "server", "browser": "browser", "ray_address": "ray"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in MARKED_BY.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)
    # The Ray tests last: once the session's Ray head runs, RAY_ADDRESS=auto finds it (Ray looks for running
    # processes), and the test of an unreachable cluster must run before that.
    items.sort(key=lambda item: item.get_closest_marker("ray") is not None)


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


@pytest.fixture(scope="session")
def scene() -> Image.Image:
    """The sample scene: a circle, two squares and a triangle, which the fixture detector finds."""
    from studio.core.image_io import load_image

    return load_image(Path(__file__).resolve().parents[1] / "assets" / "sample_scene.png")


@pytest.fixture(scope="session")
def found(tiny_pipeline, scene) -> list:
    """The sample scene's detections, numbered: 0 circle, 1 square, 2 triangle, 3 square."""
    return tiny_pipeline.detect(scene)


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


@pytest.fixture(scope="session")
def servers(model_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """Real servers with the tiny models, one per environment (tests/servers.py), stopped when the session ends."""
    from servers import Servers

    pool = Servers(tmp_path_factory.mktemp("servers"), {**os.environ, "APP_CACHE_DIR": str(model_cache),
                                                        "DEVICE": "cpu"})
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def ray_address() -> str:
    """One Ray instance for the session (`ray start --head` on loopback): the Ray tests and the Ray server join it
    by its address. Its files live in a folder of its own, so RAY_ADDRESS=auto still finds no cluster here."""
    pytest.importorskip("ray")
    from helpers import free_port

    port = free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run([*ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--include-dashboard", "false", "--disable-usage-stats",
                    "--temp-dir", tempfile.mkdtemp(prefix="ray-", dir="/tmp")],
                   check=True, capture_output=True, timeout=180)
    yield f"127.0.0.1:{port}"
    import ray as ray_api

    if ray_api.is_initialized():
        ray_api.shutdown()  # this process leaves first: a Ray driver whose head vanishes ends its process 60 s later
    subprocess.run([*ray, "stop", "--force"], check=False, capture_output=True, timeout=120)


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The pixel decoders Pillow starts from now on (one per decoded frame or tile), by codec name: a count of
    work done, where a stopwatch would measure the machine."""
    started: list[str] = []
    real = Image._getdecoder

    def counting(mode, decoder_name, *args, **kwargs):
        started.append(decoder_name)
        return real(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(Image, "_getdecoder", counting)
    return started
