"""The README's Python one-liner really works (run as a person would, in a fresh process)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from helpers import ROOT


def readme_line(prefix: str) -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    return next(line for line in lines if line.startswith(prefix))


def test_readme_python_example_generates_an_image(tmp_path, model_cache):
    command = shlex.split(readme_line(".venv/bin/python -c "))
    (tmp_path / "assets").symlink_to(ROOT / "assets")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APP_CACHE_DIR": str(model_cache), "DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (344, 256)  # 512x384 sample, short side 256, multiples of 8
    seed, _ = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert seed == "1"


def test_readme_shows_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_keeps_every_section_a_user_looks_for():
    """An edit that replaces a span of the README must not take the sections after it along (it happened once:
    Reliability to Tests went missing)."""
    headings = [line[3:] for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("## ")]
    wanted = ["Configuration", "HTTP API", "Attention backends", "Speed", "Many machines with Ray Serve", "Reliability",
              "Security: sharing the URL", "Kaggle", "Troubleshooting", "Tests", "Layout"]
    assert [heading for heading in wanted if heading not in headings] == []
    links = re.findall(r"\]\((benchmarks/results/[^)]+|deploy/[^)]+)\)", (ROOT / "README.md").read_text())
    assert links and [link for link in links if not (ROOT / link).is_file()] == []


def test_readme_one_photo_three_ways_runs_and_each_way_repaints_what_it_says(tmp_path, model_cache):
    text = (ROOT / "README.md").read_text()
    block = text[text.index("**One photo, three ways**"):]
    block = block[block.index("```python\n") + len("```python\n"):]
    block = block[:block.index("```")]
    (tmp_path / "assets").symlink_to(ROOT / "assets")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APP_CACHE_DIR": str(model_cache), "DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines()[-3:])
    assert lines == {"found": "[(1, 'square', 'a red wooden box', False)]",
                     "regional": "[(1, 'square', 'a red wooden box', True), (2, 'triangle', 'a glass pyramid', True)]",
                     "soft": "[(1, 'square', 'a watercolor', False)]"}
    from PIL import Image

    for name in lines:
        with Image.open(tmp_path / f"{name}.png") as out:
            assert out.size == (344, 256)
