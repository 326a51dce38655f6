"""InferencePipeline end to end with the tiny models: detection, control image, generation, run card."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference_pipeline import GenerationRequest, InferencePipeline, InvalidRequestError, ModelLoadError
from studio.core.run_card import png_with_run_card, read_run_card
from studio.core.settings import Settings
from studio.engine import tiny_models

from helpers import pixels


def test_two_images_at_64_in_four_steps(tiny_pipeline, photo):
    steps = []
    request = GenerationRequest(prompt="a red box", num_images=2, steps=4, resolution=64, seed=7)
    result = tiny_pipeline.generate(photo.resize((64, 64)), request, on_step=lambda s, t: steps.append((s, t)))
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    for image in result.images:  # a picture, not a flat or blown-out field
        values = np.asarray(image, dtype=np.float32)
        assert 5 < values.std() and ((values == 0) | (values == 255)).mean() < 0.2
    assert result.control_image.size == (64, 64)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.seed == 7 and result.seeds == [7, 8]
    assert not result.cancelled
    assert set(result.timings) == {"detect_s", "control_s", "generate_s", "total_s"}


def test_output_keeps_the_aspect_ratio(tiny_pipeline, photo):
    result = tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, seed=1))
    assert result.images[0].size == (64, 80)  # 80x96 input, short side 64, sides snapped to multiples of 8


def test_same_seed_same_pixels_other_seed_other_pixels(tiny_pipeline, photo):
    request = GenerationRequest(prompt="a red box", steps=4, resolution=64, seed=123)
    first = tiny_pipeline.generate(photo, request).images[0]
    again = tiny_pipeline.generate(photo, request).images[0]
    other = tiny_pipeline.generate(photo, GenerationRequest(prompt="a red box", steps=4, resolution=64, seed=124))
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other.images[0])).max() > 10


def test_missing_seed_is_drawn_and_reported(tiny_pipeline, photo):
    result = tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64))
    assert isinstance(result.seed, int) and 0 <= result.seed < 2**32
    assert result.run_card["seed"] == result.seed == result.run_card["request"]["seed"]
    replay = tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, seed=result.seed))
    assert np.array_equal(pixels(result.images[0]), pixels(replay.images[0]))


def test_cancel_stops_at_the_next_step_and_says_so(tiny_pipeline, photo):
    steps = []
    result = tiny_pipeline.generate(photo, GenerationRequest(steps=10, resolution=64, seed=1),
                                    on_step=lambda s, t: steps.append(s), should_cancel=lambda: len(steps) >= 3)
    assert result.cancelled
    assert result.images == []
    assert steps == [1, 2, 3]
    assert result.run_card["cancelled"] is True and result.run_card["steps_done"] == 3
    assert not tiny_pipeline.busy


def test_run_card_names_the_run_and_survives_the_png(tiny_pipeline, photo):
    result = tiny_pipeline.generate(photo, GenerationRequest(prompt="a tiny house", steps=2, resolution=64, seed=99))
    card = read_run_card(png_with_run_card(result.images[0], result.run_card))
    assert card["seed"] == 99
    assert card["request"]["steps"] == 2 and card["request"]["prompt"] == "a tiny house"
    assert card["models"]["set"] == "tiny"
    assert card["models"]["sd15"].endswith("sd15") and card["models"]["yolo"].endswith("shapes_segmenter.pt")
    assert card["scheduler"] == "AsyncUniPCMultistepScheduler"
    assert card["attention"]["chosen"] == "sdpa"
    assert card["versions"]["diffusers"] and card["versions"]["torch"]
    assert card["device"] == "cpu" and card["dtype"] == "float32"


def test_detect_returns_plain_detections(tiny_pipeline, photo):
    detections = tiny_pipeline.detect(photo, conf=0.0, iou=0.45)
    assert detections, "at confidence 0 the detector proposes low-scoring boxes too"
    assert all(0.0 <= d.confidence <= 1.0 and len(d.box) == 4 for d in detections)
    assert [d.confidence for d in detections] == sorted((d.confidence for d in detections), reverse=True)
    assert all(d.label == tiny_pipeline.detector.names[d.class_id] for d in detections)


def test_bad_requests_are_refused_with_the_setting_named():
    with pytest.raises(InvalidRequestError, match="steps"):
        GenerationRequest(steps=0)
    with pytest.raises(InvalidRequestError, match="control_start"):
        GenerationRequest(control_start=0.8, control_end=0.2)


@pytest.mark.parametrize("model_id", ["runwayml/stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5"])
def test_real_weights_without_a_hub_fail_fast_naming_the_id(model_id, tmp_path, monkeypatch):
    from huggingface_hub import constants

    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))  # a "Hub" that counts connections and hangs up on each
    connections: list[int] = []

    def hang_up() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            connections.append(1)
            client.close()

    threading.Thread(target=hang_up, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    settings = Settings(models="sd15", sd15_model=model_id, controlnet_model=model_id, cache_dir=tmp_path,
                        device="cpu")
    try:
        with pytest.raises(ModelLoadError) as error:
            InferencePipeline(settings=settings)
    finally:
        listener.close()
    assert connections == [], "offline (the tests set HF_HUB_OFFLINE): the cache decides, no download is tried"
    message = str(error.value)
    assert model_id in message
    assert "MODELS=tiny" in message and "CONTROLNET_MODEL" in message


def test_without_a_hub_every_missing_model_is_named_at_once(tmp_path):
    settings = Settings(models="sd15", cache_dir=tmp_path, device="cpu")  # the defaults; tests run offline
    with pytest.raises(ModelLoadError) as error:
        InferencePipeline(settings=settings)
    message = str(error.value)
    for source, variable in ((settings.sd15_model, "SD15_MODEL"), (settings.controlnet_model, "CONTROLNET_MODEL"),
                             (settings.yolo_model, "YOLO_MODEL")):
        assert f"'{source}' ({variable})" in message
    local = Settings(models="sd15", cache_dir=tmp_path, device="cpu", yolo_model=str(tiny_models.SHAPES_DETECTOR))
    with pytest.raises(ModelLoadError) as error:
        InferencePipeline(settings=local)
    assert "YOLO_MODEL" not in str(error.value), "a local detector file is not missing"


def test_prompts_longer_than_clip_reads_are_cut_with_a_warning(tiny_pipeline, photo):
    long_prompt = " ".join(["a red box"] * 30) + " and finally a zebra"
    result = tiny_pipeline.generate(photo, GenerationRequest(prompt=long_prompt, steps=1, resolution=64, seed=1))
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("The prompt is ") and "CLIP reads 75" in result.warnings[0]
    assert "zebra" in result.warnings[0] and result.run_card["warnings"] == result.warnings


def test_empty_prompts_are_allowed(tiny_pipeline, photo):
    request = GenerationRequest(prompt="", added_prompt="", negative_prompt="", steps=1, resolution=64, seed=1)
    result = tiny_pipeline.generate(photo, request)
    assert result.images and result.warnings == []


def test_loading_leaves_the_users_ultralytics_settings_file_alone(model_cache):
    """Ultralytics' usage events stay off through YOLO_OFFLINE, not by writing `sync: false` into the user's own
    settings file."""
    from ultralytics.utils import SETTINGS

    before = SETTINGS.file.read_bytes() if SETTINGS.file.exists() else None
    InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device="cpu"))
    after = SETTINGS.file.read_bytes() if SETTINGS.file.exists() else None
    assert after == before
    from ultralytics.utils.events import events

    assert not events.enabled


def test_the_detect_stage_is_named_only_when_the_detector_runs(tiny_pipeline, photo):
    request = GenerationRequest(steps=1, resolution=64, seed=1)
    stages: list[str] = []
    tiny_pipeline.generate(photo, request, on_stage=stages.append)
    assert stages == ["detect", "control", "generate"]
    stages.clear()
    tiny_pipeline.generate(photo, request, on_stage=stages.append, detections=[])  # the page's, handed over
    assert stages == ["control", "generate"]


def test_the_pipelines_run_on_the_device_they_were_given_without_diffusers_walk(tiny_pipeline, monkeypatch):
    """diffusers' `_execution_device` walks every module of every component at each call; the project's pipelines
    answer it with the device they were loaded on, which is what diffusers finds."""
    from diffusers import DiffusionPipeline
    from diffusers.hooks import group_offloading

    pipes = (tiny_pipeline.pipe, tiny_pipeline.denoiser.inpaint_pipeline())
    walked: list[str] = []
    walk = group_offloading._get_top_level_group_offload_hook
    monkeypatch.setattr(group_offloading, "_get_top_level_group_offload_hook",
                        lambda module: walked.append(type(module).__name__) or walk(module))
    assert [pipe._execution_device for pipe in pipes] == [torch.device("cpu")] * 2 and walked == []
    assert [DiffusionPipeline._execution_device.fget(pipe) for pipe in pipes] == [torch.device("cpu")] * 2
    assert "UNet2DConditionModel" in walked  # diffusers' own answer walks the components
