"""The Streamlit page, headless through AppTest, with the tiny models and the fixture detector.

AppTest runs the script but not the fragment timers: after Generate the tests wait for the job themselves and
run the page again, as the job view's poll would."""

from __future__ import annotations

import io
import re
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from inference_pipeline import GenerationRequest
from studio.page.history_panel import OPEN_KEY
from studio.serving import access, history, state

from helpers import OUTPUTS, app_page


@pytest.fixture
def app(app_env) -> AppTest:
    app = app_page()
    app.run()
    assert not app.exception
    return app


def wait_for_the_job(app: AppTest) -> AppTest:
    job = app.session_state["page"].job
    deadline = time.monotonic() + 180
    while job is not None and job.active:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.05)
    return app.run()


def pictures_and_buttons(node) -> list[tuple[str, str]]:
    """("picture", caption) and ("button", label) for every picture and button on the page, in the order it shows
    them (AppTest has no accessor for st.image)."""
    found = []
    for child in getattr(node, "children", {}).values():
        if type(child).__name__ == "Image":
            found += [("picture", image.caption) for image in child.proto.imgs]
        elif type(child).__name__ == "Button":
            found.append(("button", child.label))
        found += pictures_and_buttons(child)
    return found


def image_captions(node) -> list[str]:
    """The captions of every picture on the page, in order."""
    return [text for kind, text in pictures_and_buttons(node) if kind == "picture"]


def pick(app: AppTest, object_id: int):
    """The objects list's checkbox of one object (its key carries the photo's objects tag, form.objects_tag)."""
    return next(box for box in app.checkbox if box.key and box.key.startswith("pick-")
                and box.key.endswith(f"-{object_id}"))


def object_prompt(app: AppTest, object_id: int):
    return next(field for field in app.text_input if field.key and field.key.startswith("object-prompt-")
                and field.key.endswith(f"-{object_id}"))


def generate(app: AppTest) -> AppTest:
    app.slider(key="steps").set_value(2)
    app.slider(key="resolution").set_value(256)
    next(b for b in app.button if b.label == "Generate").click().run()
    return wait_for_the_job(app)


def test_page_renders_with_the_system_panel_and_a_preview(app):
    assert app.title[0].value == "YOLO ControlNet Studio"
    sidebar = " ".join(m.value for m in app.sidebar.markdown)
    assert "Attention:** `sdpa`" in sidebar and "Fast path:** off: CUDA graphs need a CUDA GPU" in sidebar
    assert "Device:** cpu, float32" in sidebar and "Queue:** 0 running, 0 waiting, 1 worker" in sidebar
    assert any("Offline smoke models" in w.value for w in app.sidebar.warning)
    assert app.selectbox(key="control_mode").options[0] == "Whole image"
    assert app.session_state["page"].detected_labels == ["circle", "square", "triangle"]


def test_generate_from_the_sample_keeps_results_and_history_across_reruns(app):
    generate(app)
    assert not app.exception
    result = app.session_state["page"].result
    assert len(result.images) == 1 and result.images[0].size == (344, 256)  # 512x384 sample, short side 256
    assert result.run_card["seed"] == result.seed and result.run_card["request"]["steps"] == 2
    assert any(s.value == f"Results (seed {result.seed})" for s in app.subheader)
    app.text_area(key="prompt").set_value("another prompt").run()
    assert app.session_state["page"].result is result and not app.exception
    newest = history.runs(OUTPUTS, None)[0]
    app.session_state[OPEN_KEY] = True  # the history panel opened
    app.run()
    assert newest.seed == result.seed and app.button(key=f"history-{newest.job}")  # the history shows it


def test_reuse_puts_a_runs_settings_back_from_the_saved_picture(app):
    generate(app)
    seed = app.session_state["page"].result.seed
    app.slider(key="steps").set_value(30)
    app.session_state[OPEN_KEY] = True  # the history panel opened
    app.run()
    app.button(key=f"history-{history.runs(OUTPUTS, None)[0].job}").click().run()  # opens the run
    app.button(key="history-reuse").click().run()
    assert app.slider(key="steps").value == 2
    assert app.toggle(key="randomize_seed").value is False and app.number_input(key="seed").value == seed


def test_a_32x32_photo_warns_that_its_control_image_is_nearly_empty(app):
    assert not any("nearly empty" in w.value for w in app.warning)  # the sample scene has edges
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buffer, "PNG")
    app.file_uploader[0].set_value(("tiny.png", buffer.getvalue(), "image/png")).run()
    assert not app.exception
    assert any(w.value.startswith("The control image is nearly empty") for w in app.warning)


def test_a_text_file_named_png_shows_an_error_not_a_traceback(app):
    app.file_uploader[0].set_value(("holiday.png", b"this is not a picture", "image/png")).run()
    assert not app.exception
    assert any("not an image that can be read" in e.value for e in app.error)


def test_guided_control_mode_with_chosen_objects_generates_without_warnings(app):
    app.selectbox(key="control_mode").set_value("objects").run()
    app.multiselect(key="control_classes").set_value(["circle"]).run()
    generate(app)
    assert not app.exception
    result = app.session_state["page"].result
    assert result.warnings == [] and result.run_card["request"]["control_mode"] == "objects"
    assert list(result.run_card["request"]["control_classes"]) == [0]


def test_loras_are_chosen_from_the_offered_list_and_one_that_does_not_fit_is_explained(model_cache, monkeypatch,
                                                                                         tmp_path):
    from studio.engine import tiny_models
    from studio.serving import state

    from helpers import make_lora

    unet = str(tiny_models.ensure_tiny_models(model_cache).sd15 / "unet")
    offered = tmp_path / "loras"
    (offered / "styles").mkdir(parents=True)
    make_lora(unet, tmp_path / "good").rename(offered / "styles" / "ink.safetensors")
    make_lora(unet, tmp_path / "bad", cross_attention_dim=48).rename(offered / "wrong-model.safetensors")
    (offered / "notes.txt").write_text("not a LoRA")
    for name, value in (("MODELS", "tiny"), ("DEVICE", "cpu"), ("APP_CACHE_DIR", str(model_cache)),
                        ("LORA_DIR", str(offered))):
        monkeypatch.setenv(name, value)
    state.reset()  # a server started with LORA_DIR
    try:
        app = app_page().run()
        assert app.selectbox(key="lora").options == ["None", "styles/ink.safetensors", "wrong-model.safetensors"]
        app.selectbox(key="lora").set_value("wrong-model.safetensors").run()
        generate(app)
        assert not app.exception
        errors = [e.value for e in app.error]
        assert any("'wrong-model.safetensors' cannot be used with this SD1.5 model" in e for e in errors), errors
        assert not any(str(tmp_path) in e for e in errors), "no server path in the message"
        app.selectbox(key="lora").set_value("styles/ink.safetensors").run()
        generate(app)
        card = app.session_state["page"].result.run_card
        assert card["request"]["lora"] == "styles/ink.safetensors"  # the offered name
        app.selectbox(key="lora").set_value("").run()
        generate(app)
        result = app.session_state["page"].result
        assert result.images and result.run_card["request"]["lora"] is None
    finally:
        state.reset()


def test_the_password_gate_blocks_the_page_until_the_password_is_given(app_env, monkeypatch, caplog, capsys):
    secret = "correct horse battery staple"
    monkeypatch.setenv("APP_PASSWORD", secret)
    app = app_page().run()
    assert not app.exception
    assert len(app.file_uploader) == 0 and len(app.sidebar.markdown) == 0, "nothing behind the gate is shown"
    app.text_input[0].set_value("guess")  # inside a form: sent with the submit button
    app.button[0].click().run()
    assert any("not right" in e.value for e in app.error) and len(app.file_uploader) == 0
    app.text_input[0].set_value(secret)
    app.button[0].click().run()
    assert not app.exception and app.file_uploader(key="upload-0") is not None
    assert any("Attention:" in m.value for m in app.sidebar.markdown)
    shown = " ".join(str(getattr(element, "value", "")) for element in [*app.main, *app.sidebar])
    assert secret not in shown
    printed = capsys.readouterr()
    assert secret not in caplog.text and secret not in printed.out + printed.err


def test_without_reachable_weights_the_page_explains_and_offers_the_smoke_models(model_cache, monkeypatch):
    from huggingface_hub import constants

    from studio.serving import state

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # no hub here, deterministically
    state.reset()  # a fresh server: the model set is chosen once per server
    monkeypatch.setenv("MODELS", "sd15")
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("APP_CACHE_DIR", str(model_cache))
    app = app_page().run()
    assert not app.exception
    message = app.error[0].value
    assert "could not be loaded" in message and "lllyasviel/control_v11p_sd15_canny" in message
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message and "yolo26n-seg.pt" in message
    assert "MODELS=tiny" in message and len(app.file_uploader) == 0
    next(b for b in app.button if b.label == "Use the offline smoke models instead").click().run()
    assert not app.exception and len([u for u in app.file_uploader if u.key == "upload-0"]) == 1 and not app.error
    again = app_page().run()  # another visitor, same server
    assert not again.error and again.file_uploader(key="upload-0"), "the server remembers the switch"


@pytest.fixture
def served_files(monkeypatch) -> dict[str, bytes]:
    """Every file the page hands to the browser (downloads included), by file name."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    served: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        if filename and isinstance(path_or_data, bytes):
            served[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    from streamlit.runtime.media_file_manager import MediaFileManager

    deferred = MediaFileManager.add_deferred

    def produced(self, data, *args, file_name=None, **kwargs):  # a download whose data comes at the click
        content = data()
        served[file_name] = content.encode() if isinstance(content, str) else content
        return deferred(self, data, *args, file_name=file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", produced)
    return served


def test_the_seed_buttons_and_the_seed_field_show_the_seeds_used(app):
    assert (app.button(key="new_seed").label, app.button(key="last_seed").label) == ("🎲 New", "♻️ Last")
    app.button(key="new_seed").click().run()
    chosen = app.number_input(key="seed").value
    assert app.toggle(key="randomize_seed").value is False and 0 <= chosen < 2**32
    generate(app)
    assert app.session_state["page"].result.seed == chosen
    app.toggle(key="randomize_seed").set_value(True).run()
    generate(app)
    used = app.session_state["page"].result.seed
    assert app.number_input(key="seed").value == used, "the field shows the random seed the run used"
    app.button(key="new_seed").click().run()
    assert app.number_input(key="seed").value != used
    app.button(key="last_seed").click().run()
    assert app.number_input(key="seed").value == used and app.toggle(key="randomize_seed").value is False


@pytest.mark.parametrize("example", ["Toy bus", "Oil portrait", "Snowy street"])
def test_an_example_fills_the_prompt_the_settings_and_the_picture(app, example):
    from studio.page.examples_panel import EXAMPLES

    app.text_area(key="prompt").set_value("something else").run()
    next(b for b in app.button if b.label == example).click().run()
    assert app.text_area(key="prompt").value == "something else", "a changed page is not replaced without asking"
    assert any(f"The example *{example}* replaces" in w.value for w in app.warning)
    app.button(key="example-replace").click().run()
    assert not app.exception
    wanted = EXAMPLES[example]
    assert app.text_area(key="prompt").value == wanted["prompt"]
    assert app.selectbox(key="sample").value == wanted["sample"]
    assert app.selectbox(key="control_mode").value == wanted["control_mode"]
    assert app.selectbox(key="regenerate").value == wanted.get("regenerate", "all")
    generate(app)
    assert app.session_state["page"].result.run_card["regenerate"]["mode"] == wanted.get("regenerate", "all")
    width, height = app.session_state["page"].input_image.size  # the job keeps it at most twice the output's size
    photo = (810, 1080) if "Bus" in wanted["sample"] else (1280, 720)  # Ultralytics' photos
    assert abs(width / height - photo[0] / photo[1]) < 0.01 and width <= 2 * max(result_size(app))


def test_an_example_asks_first_and_can_keep_the_settings_or_everything(app):
    from studio.page.examples_panel import EXAMPLES

    next(b for b in app.button if b.label == "Toy bus").click().run()  # nothing changed yet: no question
    assert app.text_area(key="prompt").value == EXAMPLES["Toy bus"]["prompt"]
    assert not any("replaces your photo" in w.value for w in app.warning)
    app.slider(key="guidance_scale").set_value(4.0).run()
    next(b for b in app.button if b.label == "Oil portrait").click().run()
    app.button(key="example-photo").click().run()  # its photo and prompt, my settings
    assert app.text_area(key="prompt").value == EXAMPLES["Oil portrait"]["prompt"]
    assert app.selectbox(key="sample").value == "Two people (photo)"
    assert app.slider(key="guidance_scale").value == 4.0 and app.selectbox(key="control_mode").value == "objects"
    app.text_area(key="prompt").set_value("mine").run()
    next(b for b in app.button if b.label == "Snowy street").click().run()
    app.button(key="example-keep").click().run()
    assert app.text_area(key="prompt").value == "mine" and app.selectbox(key="sample").value == "Two people (photo)"
    assert "pending_example" not in app.session_state and not app.exception


def result_size(app: AppTest) -> tuple[int, int]:
    return app.session_state["page"].result.images[0].size


def test_download_all_zip_holds_every_file_of_the_run(app, served_files):
    import io
    import zipfile

    from studio.core.run_card import read_run_card

    generate(app)
    result = app.session_state["page"].result
    archives = [name for name in served_files if name.endswith(".zip")]
    assert len(archives) == 1 and archives[0].startswith(f"yolo-controlnet-{result.seed}-")
    with zipfile.ZipFile(io.BytesIO(served_files[archives[0]])) as archive:
        names = sorted(archive.namelist())
        stamp = archives[0].removeprefix(f"yolo-controlnet-{result.seed}-").removesuffix(".zip")
        assert names == sorted(f"{kind}-{result.seed}-{stamp}.{ext}" for kind, ext in
                               (("result", "png"), ("control", "png"), ("detections", "csv"), ("run_card", "json")))
        assert read_run_card(archive.read(f"result-{result.seed}-{stamp}.png"))["seed"] == result.seed
        assert archive.read(f"detections-{result.seed}-{stamp}.csv").decode().startswith("id,label,class_id")
    assert f"result-{result.seed}-{stamp}.png" in served_files, "the single PNG download is named the same way"


def test_a_preset_sets_scheduler_steps_and_cfg_runs_with_its_lora_and_shows_its_speed(app):
    app.radio(key="preset").set_value("fast").run()
    assert (app.selectbox(key="scheduler").value, app.slider(key="steps").value,
            app.slider(key="guidance_scale").value) == ("tcd", 4, 1.0)
    app.slider(key="resolution").set_value(256)
    next(b for b in app.button if b.label == "Generate").click().run()
    wait_for_the_job(app)
    card = app.session_state["page"].result.run_card
    assert card["preset"] == "fast" and card["request"]["steps"] == 4 and card["scheduler"] == "AsyncTCDScheduler"
    assert [lora["role"] for lora in card["loras"]] == ["distillation"]
    radio = app.radio(key="preset")
    assert radio.options == ["Quality", "Fast", "Turbo", "Custom"]
    captions = list(radio.proto.captions)
    per_step = app.session_state["page"].result.timings["total_s"] / 4
    assert captions[1] == f"{per_step * 4:.1f} s/image here"  # measured by the run above, at this size
    assert captions[0] == captions[2] == "not run here yet"
    app.slider(key="resolution").set_value(320).run()
    assert list(app.radio(key="preset").proto.captions)[1] == "not run here yet", "seconds are per size"


def test_a_server_without_a_gpu_opens_on_fast_and_says_why(app, monkeypatch):
    jobs = state.loaded()
    monkeypatch.setattr(jobs.pipelines[0], "settings", replace(jobs.pipelines[0].settings, start_preset="auto"))
    opened = app_page().run()  # a new visitor of this CPU server
    assert (opened.radio(key="preset").value, opened.selectbox(key="scheduler").value,
            opened.slider(key="steps").value, opened.slider(key="guidance_scale").value) == ("fast", "tcd", 4, 1.0)
    assert any(c.value == "This server opened on Fast: it has no GPU, and a Quality picture takes minutes on a CPU."
               for c in opened.caption)
    opened.radio(key="preset").set_value("quality").run()
    assert not any("opened on" in c.value for c in opened.caption)
    monkeypatch.setattr(jobs, "on_gpu", lambda: True)
    assert app_page().run().radio(key="preset").value == "quality"  # with a GPU: Quality, and nothing to say
    assert app.radio(key="preset").value == "quality"  # START_PRESET=quality, as every other page test


def test_a_preset_changed_by_hand_says_custom_and_its_scheduler_brings_its_lora(app):
    app.radio(key="preset").set_value("fast").run()
    app.slider(key="steps").set_value(6).run()  # the values stay free to change; the radio says so
    assert app.radio(key="preset").value == "custom" and app.slider(key="steps").value == 6
    assert any("with the Fast preset's distillation LoRA" in c.value for c in app.caption)
    app.slider(key="resolution").set_value(256)
    next(b for b in app.button if b.label == "Generate").click().run()
    wait_for_the_job(app)
    card = app.session_state["page"].result.run_card
    assert card["preset"] == "custom" and card["request"]["steps"] == 6 and card["scheduler"] == "AsyncTCDScheduler"
    assert [lora["role"] for lora in card["loras"]] == ["distillation"], "TCD runs with its LoRA"
    app.selectbox(key="scheduler").set_value("unipc").run()
    assert any("on the base model without a distillation LoRA" in c.value for c in app.caption)
    app.radio(key="preset").set_value("quality").run()
    assert (app.selectbox(key="scheduler").value, app.slider(key="steps").value) == ("unipc", 20)
    app.slider(key="guidance_scale").set_value(5.0).run()
    assert app.radio(key="preset").value == "custom"


def test_the_running_job_shows_live_previews(app):
    app.slider(key="steps").set_value(150)
    app.slider(key="resolution").set_value(256)
    next(b for b in app.button if b.label == "Generate").click().run()
    job = app.session_state["page"].job
    deadline = time.monotonic() + 120
    while job.preview_step < 6:
        assert time.monotonic() < deadline and job.active, "no live preview arrived"
        time.sleep(0.05)
    app.run()
    shown = pictures_and_buttons(app.main)
    previews = [at for at, (kind, text) in enumerate(shown) if text.startswith("Live preview after step")]
    assert previews, "the job view shows no live preview"
    assert shown.index(("button", "Cancel")) < previews[0], "Cancel above the preview: a preview loading never moves it"
    job.cancel()
    wait_for_the_job(app)


def preview_size(app: AppTest) -> tuple[int, int]:
    """The output size the page's control preview states in its caption."""
    caption = next(c for c in image_captions(app.main) if c.startswith("Control image preview"))
    width, height = re.search(r"(\d+)x(\d+)", caption).groups()
    return int(width), int(height)


@pytest.mark.parametrize("sample, resolution, size", [
    ("Shapes scene", 320, None), ("Bus (photo)", 320, None), ("Two people (photo)", 256, None),
    ("Shapes scene", 512, (384, 256, "crop")), ("Bus (photo)", 512, (320, 448, "fill")),
    ("Two people (photo)", 512, (256, 320, "resize"))],
    ids=["4:3", "3:4", "16:9", "crop", "fill", "resize"])
def test_the_page_and_the_python_api_give_the_same_output_size(app, tiny_pipeline, sample, resolution, size):
    from studio.page.samples import SAMPLES
    from inference_pipeline import load_image

    app.selectbox(key="sample").set_value(sample)
    app.slider(key="resolution").set_value(resolution)
    if size:
        app.toggle(key="set_size").set_value(True).run()  # the width and height sliders unlock
        app.slider(key="width").set_value(size[0])
        app.slider(key="height").set_value(size[1])
        app.selectbox(key="resize_mode").set_value(size[2])
    app.run()
    on_the_page = preview_size(app)
    request = GenerationRequest(steps=1, resolution=resolution, seed=1, **(
        dict(width=size[0], height=size[1], resize_mode=size[2]) if size else {}))
    result = tiny_pipeline.generate(load_image(SAMPLES[sample]), request)
    assert result.images[0].size == result.control_image.size == on_the_page
    if size:
        assert on_the_page == size[:2]


def test_an_output_too_large_disables_generate_with_the_reason_and_keeps_the_settings(app):
    app.selectbox(key="control_mode").set_value("objects")
    app.slider(key="canny_low").set_value(80)
    app.slider(key="resolution").set_value(2048).run()  # the 512x384 sample: 2731x2048, over MAX_SIDE
    assert not app.exception
    generate_button = next(b for b in app.button if b.label == "Generate")
    assert generate_button.disabled
    errors = [e.value for e in app.error]
    assert any("The output would be 2728x2048 pixels; its long side may be at most 2048" in e for e in errors), errors
    assert not any("Something went wrong" in e for e in errors)
    assert (app.slider(key="resolution").value, app.selectbox(key="control_mode").value,
            app.slider(key="canny_low").value) == (2048, "objects", 80)
    app.slider(key="resolution").set_value(256).run()
    assert not next(b for b in app.button if b.label == "Generate").disabled and not app.error
    assert preview_size(app) == (344, 256)


def test_every_request_widget_is_built_from_the_fields_metadata(app):
    from studio.core.request import request_field

    for name in ("steps", "guidance_scale", "resolution", "controlnet_scale", "canny_low", "detect_conf"):
        meta, slider = request_field(name).metadata, app.slider(key=name)
        assert (slider.label, slider.min, slider.max, slider.step) == (meta["label"], *meta["limits"], meta["step"])
    for name in ("scheduler", "resize_mode", "control_mode", "regenerate", "object_prompt_mode"):
        meta = request_field(name).metadata
        assert app.selectbox(key=name).options == list(meta["choices"].values())


def test_objects_are_listed_one_by_one_and_a_picked_one_with_its_prompt_is_the_only_one_detailed(app):
    picks = [box.label for box in app.checkbox if box.key and box.key.startswith("pick-")]
    assert picks == ["#0 circle 0.96", "#1 square 0.96", "#2 triangle 0.95", "#3 square 0.91"]
    app.selectbox(key="regenerate").set_value("detail").run()
    assert (app.slider(key="strength").value, app.checkbox(key="color_match").value) == (0.4, True)
    pick(app, 3).check().run()
    object_prompt(app, 3).input("a red box").run()
    crops = [caption for caption in image_captions(app.main) if caption.startswith("#")]
    assert crops == ["#3 square · 512x512"], "the one detail crop, at the size it will be sampled"
    generate(app)
    card = app.session_state["page"].result.run_card
    assert [(e["id"], e["prompt"]) for e in card["objects"]] == [(3, "a red box")]
    assert list(card["request"]["objects"]) == [3] and card["regenerate"]["objects"] == [3]
    table = app.dataframe[0].value
    assert list(table["object"]) == ["#3 square"] and list(table["prompt"]) == ["a red box"]


def test_two_objects_with_their_prompts_in_one_pass_with_soft_edges_reach_the_run(app):
    app.selectbox(key="regenerate").set_value("objects").run()
    for object_id, prompt in ((1, "a red box"), (3, "a blue box")):
        pick(app, object_id).check().run()
        object_prompt(app, object_id).input(prompt).run()
    app.selectbox(key="object_prompt_mode").set_value("one_pass").run()
    app.checkbox(key="soft_mask").check().run()
    app.slider(key="steps").set_value(2).run()
    generate(app)
    card = app.session_state["page"].result.run_card
    assert [(e["id"], e["prompt"], e["one_pass"]) for e in card["objects"]] == [(1, "a red box", True),
                                                                               (3, "a blue box", True)]
    assert card["request"]["soft_mask"] is True and card["steps_done"] == 2  # one pass, not one per object


def test_a_repaint_at_strength_0_says_nothing_was_repainted_and_shows_no_repainted_area(app):
    app.selectbox(key="regenerate").set_value("objects").run()
    app.slider(key="steps").set_value(2).run()
    generate(app)
    assert any(c.startswith("Repainted (") for c in image_captions(app.main))
    app.slider(key="strength").set_value(0.0).run()
    generate(app)
    assert any("nothing was repainted" in w.value for w in app.warning)
    assert not any(c.startswith("Repainted (") for c in image_captions(app.main))


def test_another_picture_starts_with_no_object_picked(app):
    pick(app, 1).check().run()
    object_prompt(app, 1).input("a cat").run()
    app.selectbox(key="sample").set_value("Bus (photo)").run()
    assert not app.exception
    picks = [box for box in app.checkbox if box.key and box.key.startswith("pick-")]
    prompts = [field for field in app.text_input if field.key and field.key.startswith("object-prompt-")]
    assert picks and not any(box.value for box in picks) and not any(field.value for field in prompts)


def test_at_cfg_1_the_negative_prompt_and_guess_mode_are_off_with_a_note(app):
    assert not app.text_input(key="negative_prompt").disabled and not app.checkbox(key="guess_mode").disabled
    app.radio(key="preset").set_value("fast").run()  # CFG 1
    assert app.text_input(key="negative_prompt").disabled and app.checkbox(key="guess_mode").disabled
    assert any("nothing to act on" in c.value for c in app.caption)


def test_the_canny_thresholds_are_off_while_the_upload_is_an_edge_map(app):
    assert not app.slider(key="canny_low").disabled
    app.toggle(key="own_control").set_value(True).run()
    assert app.slider(key="canny_low").disabled and app.slider(key="canny_high").disabled


def test_a_results_files_are_encoded_once_not_at_every_rerun(app, monkeypatch):
    from studio.page import results_panel

    calls = []
    original = results_panel.result_files
    monkeypatch.setattr(results_panel, "result_files", lambda result: calls.append(1) or original(result))
    generate(app)
    for _ in range(3):
        app.slider(key="canny_low").set_value(90 + _).run()  # widget changes rerun the page
    assert len(calls) == 1


def test_a_reload_finds_the_visitors_running_job_and_another_visitor_does_not(app):
    token = app.query_params["access"][0] if isinstance(app.query_params["access"], list) else \
        app.query_params["access"]
    assert access.valid_token(token), "without a password too, each browser gets an identity of its own"
    app.slider(key="steps").set_value(150)
    app.slider(key="resolution").set_value(256)
    next(b for b in app.button if b.label == "Generate").click().run()
    job = app.session_state["page"].job
    assert job is not None and job.active
    reloaded = app_page()
    reloaded.query_params["access"] = token  # a reload keeps the tab's address
    reloaded.run()
    assert reloaded.session_state["page"].job is job, "re-attached"
    assert reloaded.button(key="cancel") is not None
    stranger = app_page()
    stranger.run()
    assert stranger.session_state["page"].job is None
    deadline = time.monotonic() + 120
    while job.step < 1:  # on a busy machine the cancel could otherwise come before the first step
        assert time.monotonic() < deadline and job.active, "the job made no step"
        time.sleep(0.05)
    reloaded.button(key="cancel").click().run()
    shown = [w.value for w in reloaded.warning]  # the notice shows once: in this run if the job ended during it
    wait_for_the_job(reloaded)
    shown += [w.value for w in reloaded.warning]
    assert job.state == "cancelled" and sum("Cancelled after step" in text for text in shown) == 1, shown


def test_things_found_by_name_are_listed_picked_and_repainted_and_a_new_name_unpicks(app):
    pick(app, 1).check().run()
    app.text_input(key="find").input("the square").run()
    labels = [box.label for box in app.checkbox if box.key and box.key.startswith("pick-")]
    assert labels == ["#0 the square 0.96", "#1 the square 0.91"]
    assert not any(box.value for box in app.checkbox if box.key and box.key.startswith("pick-")), \
        "ids name other objects now"
    app.selectbox(key="regenerate").set_value("objects").run()
    pick(app, 1).check().run()
    app.slider(key="steps").set_value(2).run()
    generate(app)
    card = app.session_state["page"].result.run_card
    assert card["request"]["find"] == "the square" and card["request"]["objects"] == (1,)
    assert [e["id"] for e in card["objects"]] == [1]


def test_a_reload_restores_the_visitors_prompt_preset_sliders_and_picks(app):
    token = app.query_params["access"]
    token = token[0] if isinstance(token, list) else token
    app.text_area(key="prompt").input("a red barn at dusk").run()
    app.radio(key="preset").set_value("turbo").run()
    app.slider(key="canny_low").set_value(77).run()
    app.slider(key="resolution").set_value(320).run()
    app.selectbox(key="regenerate").set_value("objects").run()
    pick(app, 1).check().run()
    object_prompt(app, 1).input("a blue door").run()
    reloaded = app_page()
    reloaded.query_params["access"] = token  # a reload keeps the tab's address
    reloaded.run()
    assert not reloaded.exception
    assert reloaded.text_area(key="prompt").value == "a red barn at dusk"
    assert reloaded.radio(key="preset").value == "turbo" and reloaded.slider(key="steps").value == 2
    assert (reloaded.slider(key="canny_low").value, reloaded.slider(key="resolution").value) == (77, 320)
    assert reloaded.selectbox(key="regenerate").value == "objects"
    assert pick(reloaded, 1).value and object_prompt(reloaded, 1).value == "a blue door"
    assert not pick(reloaded, 0).value
    stranger = app_page()
    stranger.run()
    assert stranger.text_area(key="prompt").value == "a cozy cottage in a watercolor painting"
    assert stranger.slider(key="canny_low").value == 100 and not pick(stranger, 1).value
    reloaded.selectbox(key="sample").set_value("Bus (photo)").run()
    again = app_page()
    again.query_params["access"] = token
    again.run()
    assert again.selectbox(key="sample").value == "Bus (photo)"
    assert not any(box.value for box in again.checkbox if box.key and box.key.startswith("pick-")), \
        "picks belong to the photo they were made on"


def test_the_previews_mask_is_the_mask_the_run_repaints_and_another_photo_starts_clean(app):
    from studio.core.request import request_from
    from studio.page.samples import SAMPLES

    app.selectbox(key="regenerate").set_value("objects").run()
    pick(app, 3).check().run()
    result = generate(app).session_state["page"].result
    previews = state.previews()
    image, key = previews.image(SAMPLES["Shapes scene"])
    preview = previews.preview(image, key, request_from(result.run_card["request"]))
    shown = np.asarray(preview.mask) > 0
    assert np.array_equal(shown, np.asarray(result.mask) > 0)
    assert 0 < shown.mean() < 0.2, "one square, not every object"
    app.selectbox(key="sample").set_value("Bus (photo)").run()
    assert not any(box.value for box in app.checkbox if box.key and box.key.startswith("pick-"))


def test_the_tiny_decoder_switch_beside_the_preset_reaches_the_run(app):
    app.checkbox(key="fast_decode").check().run()
    assert generate(app).session_state["page"].result.run_card["request"]["fast_decode"] is True


def test_saved_settings_this_server_cannot_take_open_the_defaults_not_an_error(app):
    token = app.query_params["access"]
    token = token[0] if isinstance(token, list) else token
    app.text_area(key="prompt").input("mine").run()
    owner = access.owner_of(token, "")  # a valid token: the visitor is its token, wherever it comes from
    kept = state.saved_settings().load(owner)
    assert kept["prompt"] == "mine"
    state.saved_settings().save(owner, {**kept, "detect_classes": ["giraffe"]})  # a detector without giraffes
    reloaded = app_page()
    reloaded.query_params["access"] = token
    reloaded.run()
    assert not reloaded.exception and not reloaded.error
    assert reloaded.text_area(key="prompt").value == "a cozy cottage in a watercolor painting"
    state.saved_settings().save(owner, {**kept, "steps": 500})  # past the request's limit
    again = app_page()
    again.query_params["access"] = token
    again.run()
    assert not again.exception and again.slider(key="steps").value == 20
