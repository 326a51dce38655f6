"""attention_backend: broken packages are named, quarantined and survived; choices and outputs agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import attention_backend
from inference_pipeline import GenerationRequest

import broken_packages
from helpers import ROOT

SCHEMA_ERROR = "Current Torch with Flash-Attention 2.5.7 doesnt have a compatible aten::_flash_attention_forward schema"
NO_OPERATOR = "No operator found for `memory_efficient_attention_forward`"


def run_python(code: str, *paths: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def schema_xformers(tmp_path_factory) -> Path:
    return broken_packages.schema_xformers(tmp_path_factory.mktemp("schema-xformers"))


@pytest.fixture(scope="module")
def call_broken_xformers() -> Path:
    folder = broken_packages.REAL_BROKEN_XFORMERS
    assert (folder / "xformers").is_dir(), "the real broken xformers wheel is missing: run `make test`"
    return folder


@pytest.fixture(scope="module")
def broken_flash_attn(tmp_path_factory) -> Path:
    return broken_packages.undefined_symbol_flash_attn(tmp_path_factory.mktemp("flash-attn"))


# -- first, each broken package fails as in the wild when nothing protects diffusers ----------------------

def test_schema_xformers_breaks_the_diffusers_import_as_in_the_wild(schema_xformers):
    proc = run_python("from diffusers import StableDiffusionControlNetPipeline", schema_xformers)
    assert proc.returncode != 0
    assert "Failed to import diffusers.loaders.ip_adapter" in proc.stderr
    assert SCHEMA_ERROR in proc.stderr


def test_real_xformers_for_another_torch_imports_then_fails_at_its_first_call(call_broken_xformers):
    proc = run_python("""
        from diffusers import StableDiffusionControlNetPipeline
        import torch, xformers.ops
        print("diffusers imported", flush=True)
        q = torch.randn(1, 16, 2, 8)
        xformers.ops.memory_efficient_attention(q, q, q)
    """, call_broken_xformers)
    assert "diffusers imported" in proc.stdout
    assert proc.returncode != 0 and "NotImplementedError" in proc.stderr and NO_OPERATOR in proc.stderr


def test_flash_attn_with_an_undefined_symbol_fails_to_import(broken_flash_attn):
    proc = run_python("import flash_attn", broken_flash_attn)
    assert proc.returncode != 0
    assert f"undefined symbol: {broken_packages.MISSING_SYMBOL}" in proc.stderr


# -- then, with prepare(): named, quarantined, diffusers imports, the tiny pipeline generates -----------------

SURVIVE = """
    import json, sys
    import attention_backend
    report = attention_backend.prepare()
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image
    from inference_pipeline import GenerationRequest, InferencePipeline
    from studio.core.settings import Settings
    pipe = InferencePipeline(settings=Settings(models="tiny", cache_dir=sys.argv[-1], device="cpu"))
    result = pipe.generate(Image.new("RGB", (64, 64), "white"), GenerationRequest(steps=2, resolution=64, seed=3))
    print("RESULT " + json.dumps({"report": report.as_dict(), "size": result.images[0].size,
                                 "in_use": pipe.attention_in_use, "card": result.run_card["attention"]}))
"""


def start_survivor(model_cache: Path, *paths: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(SURVIVE), str(model_cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def outcome_of(survivor: subprocess.Popen) -> dict:
    stdout, stderr = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, stderr[-3000:]
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def candidate(outcome: dict, name: str) -> dict:
    return next(c for c in outcome["report"]["candidates"] if c["name"] == name)


CASES = ("schema-xformers", "call-broken-xformers", "undefined-symbol-flash-attn", "schema-xformers+flash-attn",
         "call-broken-xformers+flash-attn")


@pytest.fixture(scope="module")
def survivors(model_cache, schema_xformers, call_broken_xformers, broken_flash_attn):
    """Every case's fresh Python, started together: each spends most of its time importing on one core."""
    folders = {"schema-xformers": schema_xformers, "call-broken-xformers": call_broken_xformers,
               "flash-attn": broken_flash_attn, "undefined-symbol-flash-attn": broken_flash_attn}
    started = {case: start_survivor(model_cache, *(folders[part] for part in case.split("+"))) for case in CASES}
    yield started
    for survivor in started.values():
        survivor.kill()
        survivor.communicate()


@pytest.mark.slow  # each case a fresh Python that imports diffusers and generates: about 10 s a case
@pytest.mark.parametrize("case", CASES)
def test_prepare_names_quarantines_and_the_pipeline_still_generates(case, survivors):
    parts = case.split("+")
    outcome = outcome_of(survivors[case])
    report = outcome["report"]
    expected_causes = {"schema-xformers": ("xformers", SCHEMA_ERROR),
                       "call-broken-xformers": ("xformers", "NotImplementedError: " + NO_OPERATOR),
                       "undefined-symbol-flash-attn": ("flash-attn", broken_packages.MISSING_SYMBOL),
                       "flash-attn": ("flash-attn", broken_packages.MISSING_SYMBOL)}
    if case == "call-broken-xformers+flash-attn":
        # The real xformers imports flash_attn when it is installed, so the broken flash_attn breaks it too.
        expected_causes["call-broken-xformers"] = ("xformers", broken_packages.MISSING_SYMBOL)
    for part in parts:
        name, cause = expected_causes[part]
        entry = candidate(outcome, name)
        assert entry["usable"] is False and cause in entry["reason"]
        assert name in report["quarantined"]
        assert name in report["why"] and cause in report["why"]
    assert report["chosen"] == "sdpa"
    assert outcome["in_use"] == "sdpa" and outcome["card"]["quarantined"] == report["quarantined"]
    assert outcome["size"] == [64, 64]


def test_quarantine_after_diffusers_was_imported_clears_its_flag():
    proc = run_python("""
        import diffusers.utils.import_utils as iu
        iu._xformers_available = True  # as if a broken xformers had been seen at diffusers' import
        import attention_backend, importlib.util
        attention_backend.quarantine("xformers")
        print(iu.is_xformers_available(), importlib.util.find_spec("xformers"))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "None"]


# -- choosing -----------------------------------------------------------------------------------------------

def test_unusable_request_falls_back_with_a_reason():
    report = attention_backend.prepare("xformers", "cpu")
    assert report.requested == "xformers" and report.chosen == "sdpa"
    assert "xformers was requested but cannot be used (not installed)" in report.why


def test_usable_request_is_honoured():
    report = attention_backend.prepare("sliced", "cpu")
    assert report.chosen == "sliced" and "requested and passed" in report.why


def test_report_lists_every_candidate_with_versions():
    report = attention_backend.prepare("auto", "cpu")
    assert [c.name for c in report.candidates] == ["flash-attn", "xformers", "sdpa", "sliced"]
    assert report.candidate("sdpa").usable and report.environment["torch"] == torch.__version__


def test_cli_prints_a_table_and_json():
    table, as_json = (subprocess.Popen([sys.executable, "attention_backend.py", *args], stdout=subprocess.PIPE,
                                       text=True, cwd=ROOT) for args in ((), ("--json", "--request", "xformers")))
    printed = table.communicate(timeout=120)[0]
    assert table.returncode == 0
    assert "candidate" in printed and "chosen: sdpa" in printed and "why:" in printed
    data = json.loads(as_json.communicate(timeout=120)[0])
    assert data["requested"] == "xformers" and data["chosen"] == "sdpa"
    assert {c["name"] for c in data["candidates"]} == {"flash-attn", "xformers", "sdpa", "sliced"}


# -- applying: outputs agree; a backend that fails at its first real call falls back -------------------------

def test_every_cpu_backend_agrees_with_sdpa_on_the_tiny_model(tiny_pipeline, photo):
    request = GenerationRequest(prompt="a red box", steps=3, resolution=64, seed=11)
    outputs = {}
    try:
        for backend in ("sdpa", "sliced"):
            attention_backend.apply(tiny_pipeline.pipe, backend)
            outputs[backend] = np.asarray(tiny_pipeline.generate(photo, request).images[0], dtype=np.int16)
    finally:
        attention_backend.apply(tiny_pipeline.pipe, "sdpa")
    assert np.abs(outputs["sliced"] - outputs["sdpa"]).max() <= 2


def test_flash_attn_processor_matches_sdpa(monkeypatch):
    """The processor's layout and scale handling, with PyTorch's math kernel standing in for flash-attn's."""
    import types

    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    def flash_attn_func(q, k, v, softmax_scale=None):  # flash-attn's layout: (batch, seq, heads, dim)
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2), scale=softmax_scale)
        return out.transpose(1, 2)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    torch.manual_seed(0)
    self_attn = Attention(query_dim=64, heads=4, dim_head=16).to(torch.bfloat16)
    cross_attn = Attention(query_dim=64, cross_attention_dim=32, heads=4, dim_head=16).to(torch.bfloat16)
    hidden = torch.randn(2, 50, 64, dtype=torch.bfloat16)
    context = torch.randn(2, 7, 32, dtype=torch.bfloat16)
    for attn, ctx in ((self_attn, None), (cross_attn, context)):
        expected = AttnProcessor2_0()(attn, hidden, ctx)
        got = attention_backend.FlashAttnProcessor()(attn, hidden, ctx)
        assert got.shape == expected.shape
        assert torch.allclose(got.float(), expected.float(), atol=2e-2)


def test_backend_failing_at_its_first_real_call_falls_back_to_sdpa(tiny_pipeline, photo):
    class BrokenAtCall:
        def __call__(self, *args, **kwargs):
            raise NotImplementedError(NO_OPERATOR + " with inputs: query shape (2, 64, 4, 8)")

    request = GenerationRequest(steps=2, resolution=64, seed=5)
    expected = np.asarray(tiny_pipeline.generate(photo, request).images[0])
    tiny_pipeline.pipe.unet.set_attn_processor(BrokenAtCall())
    tiny_pipeline.denoiser.attention_in_use = "xformers"
    try:
        result = tiny_pipeline.generate(photo, request)
    finally:
        attention_backend.apply(tiny_pipeline.pipe, "sdpa")
        tiny_pipeline.denoiser.attention_in_use, tiny_pipeline.denoiser.attention_fallback = "sdpa", None
    assert np.array_equal(np.asarray(result.images[0]), expected)
    attention = result.run_card["attention"]
    assert attention["in_use"] == "sdpa"
    assert attention["fallback"].startswith("xformers failed at its first real call") and NO_OPERATOR in \
        attention["fallback"]


def test_an_error_outside_attention_is_not_blamed_on_the_backend(tiny_pipeline, photo):
    """Only errors raised inside the attention processors switch the backend; a failing VAE is the run's own."""
    vae = tiny_pipeline.pipe.vae
    tiny_pipeline.denoiser.attention_in_use = "xformers"

    def broken_decode(*args, **kwargs):
        raise RuntimeError("a VAE bug, not an attention one")

    vae.decode = broken_decode
    try:
        with pytest.raises(RuntimeError, match="a VAE bug"):
            tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, seed=5))
        assert tiny_pipeline.attention_in_use == "xformers" and tiny_pipeline.attention_fallback is None
    finally:
        del vae.decode
        tiny_pipeline.denoiser.attention_in_use = "sdpa"
    assert not tiny_pipeline.busy


def test_importing_the_pipeline_module_does_not_import_diffusers():
    proc = run_python("import sys, inference_pipeline, studio.engine.tiny_models, studio.serving.jobs; "
                      "print('diffusers' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.slow  # a benchmark script in a process of its own: make test runs it, make test-fast does not
def test_attention_benchmark_script_runs_on_the_tiny_shapes(tmp_path):
    out = tmp_path / "attention.json"
    proc = subprocess.run([sys.executable, "benchmarks/attention_backends.py", "--tiny", "--size", "64", "--steps",
                           "2", "--repeats", "1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {row["backend"]: row for row in data["rows"]}
    assert set(rows) == {"sdpa", "sliced"} and data["device"] == "cpu"
    assert rows["sdpa"]["max_abs_diff_vs_sdpa"] == 0.0 and rows["sliced"]["max_abs_diff_vs_sdpa"] < 1e-3
    assert all(row["finite"] and row["seconds_per_image"] > 0 for row in rows.values())
    assert "| backend | s / image |" in proc.stdout
