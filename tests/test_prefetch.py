"""Prefetching: the files the app loads are chosen per repository, fetched from a Hub (here a fake one on
loopback) with the total size up front, and not fetched again once cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.core.settings import Settings
from studio.engine.tiny_models import SHAPES_SEGMENTER, tiny_model_paths
from studio.serving import prefetch

from fake_hub import FakeHub

SD15_FILES = {
    "model_index.json": b"{}", "unet/config.json": b'{"unet": 1}',
    "unet/diffusion_pytorch_model.safetensors": b"u" * 4000,
    "unet/diffusion_pytorch_model.fp16.safetensors": b"U" * 2000, "vae/config.json": b'{"vae": 1}',
    "vae/diffusion_pytorch_model.fp16.safetensors": b"V" * 300, "text_encoder/model.fp16.safetensors": b"T" * 500,
    "tokenizer/merges.txt": b"#", "safety_checker/model.fp16.safetensors": b"S" * 900, "v1-5-pruned.ckpt": b"C" * 9000,
}
REPOS = {
    "sd/sd15": SD15_FILES,
    "cn/canny": {"config.json": b'{"cn": 1}', "diffusion_pytorch_model.safetensors": b"c" * 700,
                 "diffusion_pytorch_model.fp16.safetensors": b"C" * 350},
    "mb/taesd": {"config.json": b'{"taesd": 1}', "diffusion_pytorch_model.safetensors": b"t" * 100},
    "org/tcd": {"README.md": b"#", "pytorch_lora_weights.safetensors": b"L" * 130},
    "org/lcm": {"pytorch_lora_weights.safetensors": b"M" * 120},
}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    fake = FakeHub(REPOS)
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    yield fake
    fake.server.shutdown()


def settings(**overrides) -> Settings:
    values = dict(models="sd15", sd15_model="sd/sd15", controlnet_model="cn/canny", taesd_model="mb/taesd",
                  preset_lora_fast="org/tcd", preset_lora_turbo="org/lcm", yolo_model=str(Path(__file__)),
                  open_vocab_model=str(SHAPES_SEGMENTER))
    return Settings(**{**values, **overrides})


def test_the_files_chosen_are_the_ones_diffusers_loads_in_fp16():
    item = prefetch.wanted(settings())[0]
    listing = {name: len(data) for name, data in SD15_FILES.items()}
    assert sorted(prefetch.choose_files(item, listing, "fp16")) == [
        "model_index.json", "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt", "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors"]  # no fp32 copy, no .ckpt, no safety checker
    checker = prefetch.wanted(settings(safety_checker=True))[0]
    assert "safety_checker/model.fp16.safetensors" in prefetch.choose_files(checker, listing, "fp16")
    taesd = prefetch.wanted(settings())[2]
    assert list(prefetch.choose_files(taesd, {"config.json": 1, "diffusion_pytorch_model.safetensors": 9}, "fp16")) \
        == ["config.json", "diffusion_pytorch_model.safetensors"]  # no fp16 variant: the plain weights


def test_local_sources_are_left_alone(tmp_path):
    local = settings(sd15_model=str(tmp_path), taesd_model=None)
    assert [item.what for item in prefetch.wanted(local)] == ["ControlNet", "Fast preset's distillation LoRA",
                                                               "Turbo preset's distillation LoRA"]


def test_prefetch_fetches_everything_once_with_the_total_up_front(hub):
    said: list[str] = []
    first = prefetch.run(settings(), say=said.append)
    expected = {"sd/sd15/model_index.json", "sd/sd15/unet/config.json", "sd/sd15/vae/config.json",
                "sd/sd15/tokenizer/merges.txt", "sd/sd15/unet/diffusion_pytorch_model.fp16.safetensors",
                "sd/sd15/vae/diffusion_pytorch_model.fp16.safetensors", "sd/sd15/text_encoder/model.fp16.safetensors",
                "cn/canny/config.json", "cn/canny/diffusion_pytorch_model.fp16.safetensors", "mb/taesd/config.json",
                "mb/taesd/diffusion_pytorch_model.safetensors", "org/tcd/pytorch_lora_weights.safetensors",
                "org/lcm/pytorch_lora_weights.safetensors"}
    assert set(hub.downloads) == expected and len(hub.downloads) == len(expected)
    size = sum(len(REPOS[name.split("/")[0] + "/" + name.split("/")[1]]["/".join(name.split("/")[2:])])
               for name in expected)
    assert first == {"files": 13, "bytes": size, "fetched": size}
    assert said[0].startswith("13 files, 0.00 GB in all; 13 to fetch") and "0 already cached" in said[0]
    assert said[-2:] == [f"Detector: {Path(__file__)} is a local file.",
                         f"Open-vocabulary segmenter: {SHAPES_SEGMENTER} is a local file."]
    hub.downloads.clear()
    again = prefetch.run(settings(), say=said.append)
    assert hub.downloads == [] and again == {"files": 13, "bytes": size, "fetched": 0}
    assert "0 to fetch (0.00 GB), 13 already cached" in said[-3]


def test_the_tiny_set_is_built_not_fetched(tmp_path):
    said: list[str] = []
    counts = prefetch.run(Settings(models="tiny", cache_dir=tmp_path), say=said.append)
    assert counts["fetched"] == 0 and counts["files"] > 10 and counts["bytes"] > 0
    assert said == [f"Tiny model set: {counts['files']} files, {counts['bytes'] / 2**20:.1f} MB, built locally in "
                    f"{tiny_model_paths(tmp_path).sd15.parent} (nothing to fetch)."]
