"""Batch runs over a folder (studio/serving/batch.py), with the tiny models on the CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from dataclasses import replace

import pytest
from PIL import Image

from inference_pipeline import GenerationRequest
from studio.core.run_card import read_run_card
from studio.serving.batch import photos_in, run

from helpers import ROOT, sample_scene


def folder_of_photos(folder, count: int, broken: str | None = None):
    folder.mkdir()
    for i in range(count):
        sample_scene((96 + 8 * i, 64)).save(folder / f"photo{i}.png")
    if broken:
        (folder / broken).write_text("not a picture")
    (folder / "notes.txt").write_text("not a photo: not even tried")
    return folder


def test_five_photos_one_broken_make_four_outputs_and_one_clear_error_line(tiny_pipeline, tmp_path, capsys):
    inputs = folder_of_photos(tmp_path / "in", 4, broken="photo2b.jpg")
    request = GenerationRequest(prompt="a red box", steps=2, resolution=64, seed=40)
    tally = run(tiny_pipeline, inputs, tmp_path / "out", request, progress=False)
    assert tally.summary() == "4 made, 0 already there, 1 failed."
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["photo2b.jpg: This file is not an image that can be read (PNG, JPEG, WebP or GIF)."]
    made = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert made == ["photo0.png", "photo1.png", "photo2.png", "photo3.png"]
    seeds = [read_run_card((tmp_path / "out" / name).read_bytes())["seed"] for name in made]
    assert seeds == [40, 41, 42, 44], "photo i of the sorted folder gets seed + i (the broken one is number 3)"
    assert [p.name for p in photos_in(inputs)][3] == "photo2b.jpg"
    again = run(tiny_pipeline, inputs, tmp_path / "out", request, progress=False)
    assert again.summary() == "0 made, 4 already there, 1 failed."


def test_unreadable_oversized_and_same_named_photos_each_get_a_line_or_a_file_of_their_own(
        tiny_pipeline, tmp_path, capsys, monkeypatch):
    inputs = folder_of_photos(tmp_path / "in", 2)
    sample_scene((96, 64)).save(inputs / "photo0.jpg")  # photo0.png's namesake
    sample_scene((96, 64)).save(inputs / "photo0.png.png")  # whose output name "photo0.png" already is
    (inputs / "unreadable.png").symlink_to("/proc/self/mem")  # a file the system refuses to read (EIO)
    (inputs / "huge.png").write_bytes(b"\0" * (2 * 2**20 + 1))
    monkeypatch.setattr(tiny_pipeline, "settings", replace(tiny_pipeline.settings, max_upload_mb=2))
    request = GenerationRequest(prompt="a red box", steps=1, resolution=64, seed=1)
    tally = run(tiny_pipeline, inputs, tmp_path / "out", request, progress=False)
    errors = sorted(capsys.readouterr().err.strip().splitlines())
    assert errors == ["huge.png: The file is 2 MB, more than the 2 MB allowed (MAX_UPLOAD_MB).",
                      "unreadable.png: The file cannot be read (Input/output error)."]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "photo0.jpg.png", "photo0.png-2.png", "photo0.png.png", "photo1.png"]
    assert tally.summary() == "4 made, 0 already there, 2 failed."


@pytest.mark.slow  # a batch process started, killed and started again: about 40 s
def test_a_killed_run_resumes_and_makes_only_the_missing_outputs(model_cache, tmp_path):
    inputs = folder_of_photos(tmp_path / "in", 5)
    outputs = tmp_path / "out"
    command = [sys.executable, "-m", "studio.batch", str(inputs), str(outputs), "--prompt", "a red box",
               "--preset", "quality", "--resolution", "256", "--models", "tiny"]
    env = {**os.environ, "APP_CACHE_DIR": str(model_cache), "DEVICE": "cpu"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(list(outputs.glob("*.png"))) < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs.glob("*.png")}
    assert 2 <= len(kept) < 5, "killed in the middle"
    for name in kept:
        Image.open(outputs / name).verify()  # whole files only
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip().splitlines()[-1] == f"{5 - len(kept)} made, {len(kept)} already there, 0 failed."
    assert sorted(p.name for p in outputs.iterdir()) == [f"photo{i}.png" for i in range(5)], "no leftovers"
    assert {name: (outputs / name).stat().st_ino for name in kept} == {n: v[0] for n, v in kept.items()}
