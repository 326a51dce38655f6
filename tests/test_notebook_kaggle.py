"""The notebook as Kaggle runs it, not in its smoke shortcut.

A virtual environment holds what a Kaggle image has before the notebook runs: torch and torchvision (with numpy and
Pillow), the GUI `opencv-python`, a broken xformers wheel (built for another torch: it imports, then fails) and
Jupyter's kernel. The notebook then runs cell by cell in that environment: the install cell really installs
requirements_kaggle.txt from the package index, the prefetch cell fetches every weight from a Hub on loopback that
holds the tiny models as Hub repositories, and the launch cell starts the app on the real-model code path
(MODELS=sd15) and opens the tunnel through a fake ngrok agent, a real proxy on loopback that asks for the basic
auth ngrok would: the public URL is printed and the page answers behind it. The stop cell ends both.

It installs from the wheels `make test` downloads once into .venv/kaggle-wheels (tests/kaggle_env.py), with no
index: the same real install, a minute or two (marked `slow`; `make test` runs it, `make test-fast` does not).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import launch
from studio.engine.tiny_models import ensure_tiny_models

from fake_hub import FakeHub, folder_files
from fake_ngrok import fake_agent
from helpers import ROOT, free_port
from kaggle_env import GUI_OPENCV, PREINSTALLED, needed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

BROKEN_XFORMERS = ROOT / ".venv" / "broken-xformers"
WHEELS = ROOT / ".venv" / "kaggle-wheels"
TOKEN = "2kaggleTestToken_0123456789abcdefghijkLMNOP"
REPOS = {"SD15_MODEL": "tiny/sd15", "CONTROLNET_MODEL": "tiny/controlnet", "TAESD_MODEL": "tiny/taesd",
         "SD15_INPAINT_MODEL": "tiny/inpaint", "PRESET_LORA_FAST": "tiny/tcd-lora",
         "PRESET_LORA_TURBO": "tiny/lcm-lora"}

def link_tree(files: list[tuple[Path, Path]]) -> None:
    """Hard links (no copy of torch's gigabytes): pip replaces a file by a new one, it never writes into it."""
    for source, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(source, target)


@pytest.fixture(scope="module")
def kaggle_python(tmp_path_factory) -> Path:
    """A Python with what a Kaggle image has before the notebook's first cell (see the module's docstring)."""
    if not BROKEN_XFORMERS.is_dir() or not (WHEELS / ".filled").exists():
        pytest.skip("needs what `make test` puts in .venv: the broken xformers wheel and the Kaggle wheels")
    venv = tmp_path_factory.mktemp("kaggle") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    files = [(Path(dist.locate_file(f)), site / f) for dist in needed(PREINSTALLED) for f in dist.files or ()
             if ".." not in Path(f).parts and Path(dist.locate_file(f)).is_file()]
    files += [(path, site / path.relative_to(BROKEN_XFORMERS)) for path in BROKEN_XFORMERS.rglob("*") if path.is_file()]
    link_tree(files)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--find-links",
                    str(WHEELS), GUI_OPENCV], check=True)
    return python


@pytest.fixture
def hub(model_cache):
    paths = ensure_tiny_models(model_cache)
    lora = {"pytorch_lora_weights.safetensors": paths.distill_lora.read_bytes()}
    fake = FakeHub({"tiny/sd15": folder_files(paths.sd15), "tiny/controlnet": folder_files(paths.controlnet),
                    "tiny/taesd": folder_files(paths.taesd), "tiny/inpaint": folder_files(paths.inpaint),
                    "tiny/tcd-lora": lora, "tiny/lcm-lora": lora})
    yield fake
    fake.server.shutdown()


def kernel_for(python: Path, folder: Path) -> str:
    """A Jupyter kernel spec that starts `python`'s ipykernel; returns its name (JUPYTER_PATH points at it)."""
    spec = folder / "kernels" / "kaggle"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [str(python), "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"],
                                                  "display_name": "Kaggle-like Python", "language": "python"}))
    return "kaggle"


def printed(cell) -> str:
    return "\n".join(out.get("text", "") for out in cell.outputs)


def page_through(public_url: str, credentials: tuple[str, str] | None) -> int:
    request = urllib.request.Request(public_url + "/_stcore/health")
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(credentials).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_the_notebook_installs_fetches_launches_tunnels_and_stops_as_on_kaggle(
        kaggle_python, hub, tmp_path, monkeypatch):
    agent, record = fake_agent(tmp_path)
    port = free_port()
    environment = {**REPOS, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "PYNGROK_NGROK_PATH": str(agent),
                   "NGROK_AUTHTOKEN": TOKEN, "APP_PORT": str(port), "APP_STOP": "1", "DEVICE": "cpu",
                   "YOLO_MODEL": str(ROOT / "assets" / "shapes_segmenter.pt"),
                   "OPEN_VOCAB_MODEL": str(ROOT / "assets" / "shapes_segmenter.pt"),
                   "OUTPUTS_DIR": str(tmp_path / "out"),
                   "JUPYTER_PATH": str(tmp_path / "jupyter"), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                   "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELS)}  # the install cell: from the wheels alone
    for key in ("APP_SMOKE_TEST", "APP_MODE", "MODELS", "PYTHONPATH", "HF_HUB_OFFLINE", "APP_CACHE_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    torch_file = kaggle_python.parent.parent / "lib" / "python3.11" / "site-packages" / "torch" / "__init__.py"
    torch_inode = torch_file.stat().st_ino
    notebook = nbformat.read(ROOT / "notebooks" / "kaggle_demo.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name=kernel_for(kaggle_python, tmp_path / "jupyter"),
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    try:
        with client.setup_kernel():
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)
                if cell.cell_type == "code" and "launch.start(" in cell.source:
                    launched = printed(cell)
                    public_url = re.search(r"Public URL: (\S+)", launched).group(1)
                    user, password = re.search(r"User: (\S+)  Password: (\S+)", launched).groups()
                    assert page_through(public_url, (user, password)) == 200, "the page answers behind the tunnel"
                    assert page_through(public_url, None) == 401, "and only with the tunnel's password"
                    agent_pid = json.loads(record.read_text())["pid"]
    finally:
        launch.stop()
    text = "\n".join(printed(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "No GPU found" in text and "Smoke test" not in text
    assert torch_file.stat().st_ino == torch_inode, "the install cell left Kaggle's torch alone"
    listed = subprocess.run([str(kaggle_python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            check=True).stdout
    installed = {item["name"].lower(): item["version"] for item in json.loads(listed)}
    assert installed["diffusers"] == "0.42.1" and installed["streamlit"] == "1.67.0" and "opencv-python" in installed
    assert "opencv-python-headless" not in installed and installed["xformers"] == "0.0.35"
    assert re.search(r"^xformers\s+no\s+0\.0\.35", text, re.M) and "chosen: sdpa" in text, text
    planned, fetched = map(int, re.search(r"(\d+) files, [\d.]+ GB in all; (\d+) to fetch", text).groups())
    assert planned == fetched == len(set(hub.downloads)) > 10, "the prefetch cell fetched every file from the Hub"
    assert "is a local file" in text
    assert f"The app is ready at http://127.0.0.1:{port}" in text and "API job: done" in text
    assert TOKEN not in text
    assert "Stopped." in text and not alive(agent_pid)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5)
