"""The CUDA-graph wrapper's CPU contract: where there is no CUDA tensor it steps aside, changes no pixel and
unwraps cleanly. What it does on a GPU (capture, replay, recapture) is tested in test_gpu.py."""

from __future__ import annotations

import os
import types

import numpy as np
import pytest

from inference_pipeline import GenerationRequest
from studio.engine import cuda_graphs


def test_on_the_cpu_the_wrapper_steps_aside_and_unwraps_cleanly(tiny_pipeline, photo):
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
    assert (stats.captures, stats.replays, stats.failures) == (0, 0, {})
    assert isinstance(tiny_pipeline.pipe.unet.forward, types.MethodType)
    assert isinstance(tiny_pipeline.pipe.controlnet.forward, types.MethodType)


@pytest.mark.slow  # every row of the benchmark on the tiny models: about two minutes on two cores
def test_pipeline_benchmark_script_writes_its_rows_and_table(tmp_path, model_cache):
    """The benchmark's plumbing on the tiny models (every row eager on the CPU, so its numbers mean nothing
    here; the fast path against eager is checked in test_gpu.py)."""
    import json
    import subprocess
    import sys

    from helpers import ROOT

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_pipeline.py", "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "APP_CACHE_DIR": str(model_cache)})  # the session's tiny models
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["torch"] and result["diffusers"]
    rows = {row["config"]: row for row in result["rows"]}
    assert {"seed-sliced", "diffusers-default", "project-default", "project-default-batch4", "project-fast",
            "project-turbo", "project-control-end-0.5"} <= set(rows)
    assert (rows["project-fast"]["preset"], rows["project-fast"]["steps"]) == ("fast", 4)
    assert (rows["project-turbo"]["preset"], rows["project-turbo"]["steps"]) == ("turbo", 2)
    assert rows["project-fast"]["max_abs_diff_vs_default"] is None  # another preset: nothing to compare with
    assert rows["diffusers-default"]["max_abs_diff_vs_default"] == 0.0  # the reference row
    assert rows["project-default"]["max_abs_diff_vs_default"] <= 1 / 255  # the project makes diffusers' pixels
    assert rows["project-fast-eager"]["max_abs_diff_vs_fast_path"] == 0.0  # compared with the project-fast row
    batch4 = rows["project-default-batch4"]
    pipeline_s = batch4["last_call_timings"]["total_s"]  # what the pipeline itself measured in its last call
    assert batch4["batch"] * batch4["seconds_per_image"] >= 0.8 * pipeline_s > 0, batch4  # a call of 4 images
    assert batch4["seconds_per_image"] < pipeline_s, "the bench's time per image is a quarter of a call"
    assert rows["project-default"]["fast_path"]["state"] == "off: CUDA graphs need a CUDA GPU"
    assert 0 < result["t4"]["non_gemm_share"] < 1 and result["t4"]["tflops"] == 42.7
    for row in result["rows"]:
        if row["config"].startswith("project"):
            assert row["tflops_per_image"] > 0 and row["t4_estimate_s"] > 0, row
    default, end_half = rows["project-default"]["evaluations"], rows["project-control-end-0.5"]["evaluations"]
    assert default == {"controlnet 4x8x8": 4, "unet 4x8x8": 4, "vae-decode 4x8x8": 1}  # 2 steps, CFG: batch 2
    assert end_half == {"controlnet 4x8x8": 2, "unet 4x8x8": 4, "vae-decode 4x8x8": 1}  # its first step only
    unet_calls = {config: sum(v for k, v in rows[config]["evaluations"].items() if k.startswith("unet"))
                  for config in ("project-regional-3-prompts", "project-objects-3-prompts")}
    assert unet_calls == {"project-regional-3-prompts": 4, "project-objects-3-prompts": 12}  # Fast: 4 steps a pass
    assert rows["project-control-end-0.5"]["tflops_per_image"] < rows["project-default"]["tflops_per_image"]
    assert rows["project-control-end-0.5"]["max_abs_diff_vs_default"] is None  # other settings than the default
    switch = result["preset_switch"]
    assert list(switch["switch_extra_s"]) == ["quality->fast", "fast->quality", "quality->turbo"]
    assert set(switch["steady_s"]) == {"quality", "fast", "turbo"} and min(switch["steady_s"].values()) > 0
    assert "| project-preset-switch | quality->fast | fast->quality | quality->turbo |" in proc.stdout
    assert "| config | size | batch | steps | s / image |" in proc.stdout


def test_a_forward_that_reads_back_to_the_host_is_caught_in_its_own_thread_only():
    """The check that runs before any capture (a failed capture would break PyTorch's CUDA state for good)."""
    import threading

    import torch

    x = torch.ones(4)
    with cuda_graphs.HostReads() as reads:
        (x * 2).sum()
    assert reads.found is None, "arithmetic stays on the device"
    other: list[float] = []
    with cuda_graphs.HostReads() as reads:
        worker = threading.Thread(target=lambda: other.append((x + 1).sum().item()))
        worker.start()
        worker.join()
        assert reads.found is None, "another thread's read is none of this mode's business"
        (x * 2).sum().item()
    assert reads.found == "_local_scalar_dense.default" and other == [8.0]
