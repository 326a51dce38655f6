"""Select by name: the things a request names become detections with masks and ids, picked and repainted like the
detector's. Offline, on the smoke set's shapes segmenter behind the same interface (a name finds the classes it
contains) and on a tiny random-weight YOLOE built here, saved as an Ultralytics checkpoint and loaded back
through the loader a user's OPEN_VOCAB_MODEL goes through."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from inference_pipeline import GenerationRequest
from studio.core.detections import MAX_NAMES, names_to_find
from studio.core.errors import InvalidRequestError, ModelLoadError
from studio.core.settings import Settings
from studio.engine import tiny_models
from studio.engine.loading import ModelLoader
from studio.engine.name_finder import TEXT_ENCODER_FILES, TOKENIZER_PACKAGE, NameFinder
from studio.serving import prefetch

from helpers import pixels

YOLOE_NAMES = ("wooden door", "logo")


def test_names_are_split_on_commas_trimmed_lowered_and_given_once():
    assert names_to_find(" the Wooden  door, logo,,LOGO , ") == ("the wooden door", "logo")
    assert names_to_find("") == names_to_find(" , ") == ()


def test_a_request_names_at_most_max_names_things():
    assert GenerationRequest(find="door, logo").find_names == ("door", "logo")
    with pytest.raises(InvalidRequestError, match=f"at most {MAX_NAMES}"):
        GenerationRequest(find=", ".join(f"thing {i}" for i in range(MAX_NAMES + 1)))


def test_the_shapes_segmenter_finds_the_classes_a_name_contains(tiny_pipeline, scene):
    found = tiny_pipeline.detect(scene, names=("the red square", "circle", "door"))
    assert [(d.id, d.label, d.class_id) for d in found] == [(0, "circle", 1), (1, "the red square", 0),
                                                            (2, "the red square", 0)]
    assert all(d.polygon for d in found)
    squares = [d.box for d in tiny_pipeline.detect(scene) if d.label == "square"]
    assert np.allclose(sorted(d.box for d in found if d.class_id == 0), sorted(squares), atol=0.01)
    assert tiny_pipeline.detect(scene, names=("door",)) == []


def test_a_name_selected_object_is_repainted_alone(tiny_pipeline, scene):
    request = GenerationRequest(prompt="a toy", find="the square", regenerate="objects", objects=(1,), steps=2,
                                resolution=128, seed=3)
    result = tiny_pipeline.generate(scene, request)
    assert [(d.id, d.label) for d in result.detections] == [(0, "the square"), (1, "the square")]
    out = pixels(result)[0]
    photo = np.asarray(tiny_pipeline.preview_from(scene, result.detections, request).picture, np.int16)
    mask = np.asarray(result.mask) > 0
    other = np.zeros_like(mask)
    x1, y1, x2, y2 = (round(v * result.mask.size[0] / scene.size[0]) for v in result.detections[0].box)
    other[y1:y2, x1:x2] = True
    assert mask.any() and not (mask & other).any(), "only object #1's mask is repainted"
    assert np.abs(out - photo).max(axis=-1)[~mask].max() == 0, "outside the mask the photo is kept exactly"
    assert np.abs(out - photo).max(axis=-1)[mask].mean() > 10, "inside it is repainted"
    assert result.run_card["request"]["find"] == "the square"


@pytest.fixture(scope="module")
def yoloe(model_cache: Path) -> NameFinder:
    path = model_cache / "tiny-yoloe-seg.pt"
    if not path.exists():
        tiny_models.build_yoloe(path, YOLOE_NAMES)
    model = ModelLoader(Settings(models="tiny", cache_dir=model_cache, open_vocab_model=str(path)), "cpu",
                        torch.float32).open_vocab()
    return NameFinder(model, "cpu", contextlib.nullcontext)


def test_a_yoloe_checkpoint_finds_the_names_it_carries_with_masks_and_ids(yoloe, scene):
    assert yoloe.open_vocabulary and type(yoloe.model).__name__ == "YOLOE"
    found = yoloe(scene, ("logo", "wooden door"))
    assert found and {d.label for d in found} <= {"logo", "wooden door"}
    assert [d.id for d in found] == list(range(len(found)))
    assert all(d.polygon and len(d.polygon) >= 3 for d in found)
    assert {d.class_id for d in found} <= {0, 1} and all(("logo", "wooden door")[d.class_id] == d.label
                                                         for d in found)
    assert {d.label for d in yoloe(scene, ("logo",))} == {"logo"}, "one name: only it is found"


def test_a_name_the_checkpoint_lacks_needs_the_text_encoder_and_says_how_to_get_it(yoloe, scene):
    with pytest.raises(ModelLoadError) as error:
        yoloe(scene, ("a bicycle",))
    message = str(error.value)
    assert "text encoder" in message and "'a bicycle'" in message and TOKENIZER_PACKAGE in message
    assert "logo, wooden door" in message, "the names it can find without the encoder are listed"
    assert {d.label for d in yoloe(scene, ("logo",))} == {"logo"}, "the finder still works after the refusal"


def test_a_segmenter_that_cannot_be_loaded_says_what_to_do(model_cache, tmp_path):
    broken = tmp_path / "yoloe-broken.pt"
    broken.write_bytes(b"not a checkpoint")
    loader = ModelLoader(Settings(models="tiny", cache_dir=model_cache, open_vocab_model=str(broken)), "cpu",
                         torch.float32)
    with pytest.raises(ModelLoadError, match="OPEN_VOCAB_MODEL.*leave 'Find by name' empty"):
        loader.open_vocab()


def test_the_prefetch_fetches_a_yoloes_text_encoder_and_names_its_tokenizer(yoloe, model_cache, monkeypatch,
                                                                           tmp_path):
    from ultralytics import settings as yolo_settings

    monkeypatch.setitem(yolo_settings, "weights_dir", str(tmp_path))  # never the working folder's weights/
    encoder = tmp_path / TEXT_ENCODER_FILES["mobileclip2:b"]
    encoder.write_bytes(b"placed here: already fetched")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    lines = prefetch._fetch_open_vocab(str(model_cache / "tiny-yoloe-seg.pt"))
    assert lines[0].endswith("is a local file.")
    assert lines[1] == "Its text encoder: mobileclip2_b.ts already fetched."
    assert lines[2].endswith(f"pip install {TOKENIZER_PACKAGE}")
    shapes = str(tiny_models.SHAPES_SEGMENTER)
    assert prefetch._fetch_open_vocab(shapes) == [f"Open-vocabulary segmenter: {shapes} is a local file."]


def test_tripwire_ultralytics_text_encoder_files():
    """TEXT_ENCODER_FILES copies build_text_model's variants: a release that renames them breaks the prefetch."""
    import ultralytics

    source = (Path(ultralytics.__file__).parent / "nn" / "text_model.py").read_text()
    for variant, file in TEXT_ENCODER_FILES.items():
        assert f'"{variant.split(":")[0]}"' in source and f'"{file}"' in source, (variant, file)


def test_the_request_field_reaches_the_run_card_and_the_detections_cache(tiny_pipeline, scene):
    from studio.serving.previews import Previews

    previews = Previews(tiny_pipeline)
    base = GenerationRequest(steps=1)
    by_name = replace(base, find="triangle")
    labels = [d.label for d in previews.detections(scene, "scene", by_name)]
    assert labels == ["triangle"]
    assert [d.label for d in previews.detections(scene, "scene", base)] == ["circle", "square", "triangle", "square"]
