"""The CUDA-graph fast path: on the CPU it must step aside and leave the pixels untouched."""

from __future__ import annotations

import types

import numpy as np

import cuda_graphs
from inference_pipeline import GenerationRequest


def test_graphed_forwards_fall_back_to_eager_on_the_cpu(tiny_pipeline, photo):
    request = GenerationRequest(prompt="a red box", steps=3, resolution=64, seed=21, controlnet_scale=0.7,
                                control_end=0.5)
    expected = np.asarray(tiny_pipeline.generate(photo, request).images[0])
    stats = cuda_graphs.enable(tiny_pipeline.pipe)
    try:
        assert isinstance(tiny_pipeline.pipe.unet.forward, cuda_graphs.GraphedForward)
        got = np.asarray(tiny_pipeline.generate(photo, request).images[0])
    finally:
        cuda_graphs.disable(tiny_pipeline.pipe)
    assert np.array_equal(got, expected)
    assert (stats.captures, stats.replays, stats.failure) == (0, 0, None)
    assert isinstance(tiny_pipeline.pipe.unet.forward, types.MethodType)
    assert isinstance(tiny_pipeline.pipe.controlnet.forward, types.MethodType)


def test_run_card_says_why_the_fast_path_is_off(tiny_pipeline, photo):
    card = tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, seed=1)).run_card
    assert card["fast_path"] == {"state": "off: CUDA graphs need a CUDA GPU"}


def test_pipeline_benchmark_runs_on_the_tiny_models(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_pipeline.py", "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["torch"] and result["diffusers"]
    rows = {row["config"]: row for row in result["rows"]}
    assert {"seed-sliced", "diffusers-default", "project-default", "project-default-batch4"} <= set(rows)
    for row in rows.values():
        assert row["seconds_per_image"] > 0 and row["steps_per_second"] > 0 and row["warmup_s"] >= 0
        assert row["max_abs_diff_vs_default"] <= 0.02  # same seed, same inputs: the same picture
    assert "| config | size | batch | s / image |" in proc.stdout
