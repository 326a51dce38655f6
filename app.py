"""Streamlit front end: upload a photo, see its detections and control image, generate as a job.

Run with `make run` (or `streamlit run app.py`). UI only: generation runs as a job in `jobs.JobQueue` (one
worker per GPU), outside this script, so no rerun can touch it; the page polls it from a fragment. Previews
come from `previews.Previews`, cached per input, and the control preview lives in a fragment of its own so
that it follows the Canny sliders without rerunning the page.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import streamlit as st

from studio.core import display
from studio.core.control_image import outline_mask, overlay_mask, place_image
from studio.core.detections import Detection, draw_detections, names_to_find
from studio.core.downloads import detections_csv, file_name, result_files, zip_of
from studio.core.errors import EXPECTED_ERRORS, InvalidImageError, InvalidRequestError, JobsBackendError, ModelLoadError
from studio.core.preparation import ControlPreview
from studio.core.presets import CUSTOM, PRESETS, distilled_by, start_preset
from studio.core.request import DETAIL_STRENGTH, MAX_PROMPT_CHARS, SEED_MAX, GenerationRequest, request_field
from studio.core.run_card import a1111_parameters, public_source
from studio.core.settings import Settings
from studio.engine.loras import offered as offered_loras
from studio.page.batch_panel import batch_panel
from studio.page.fill import OBJECT_PROMPT, PICK
from studio.page.history_panel import history_panel
from studio.page.png_info_panel import png_info_panel
from studio.page.session import client, guarded, signed_in, visitor
from studio.page.widgets import choice, later, plain, slider, switch
from studio.serving import access, state
from studio.serving.jobs import CANCELLED, DONE, QUEUED, JobQueue
from studio.serving.previews import Previews

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("app")

ASSETS = Path(__file__).parent / "assets"


def find_samples() -> dict[str, Path]:
    """The bundled scene, and the two photos that ship inside the Ultralytics package."""
    samples = {"Shapes scene": ASSETS / "sample_scene.png"}
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.submodule_search_locations:
        photos = Path(spec.submodule_search_locations[0]) / "assets"
        samples.update({name: photos / file for name, file in (("Bus (photo)", "bus.jpg"),
                                                                ("Two people (photo)", "zidane.jpg"))
                        if (photos / file).exists()})
    return samples


SAMPLES = find_samples()
# One click fills the page: a picture, a prompt and the settings that suit it.
EXAMPLES: dict[str, dict[str, Any]] = {
    "Watercolor cottage": {"sample": "Shapes scene", "prompt": "a cozy cottage in a watercolor painting",
                           "control_mode": "full"},
    "Toy bus": {"sample": "Bus (photo)", "prompt": "a red toy bus on a wooden table, studio photo",
                "control_mode": "objects", "control_padding": 0.05, "canny_low": 80, "canny_high": 160},
    "Snowy street": {"sample": "Bus (photo)", "prompt": "a snowy street at night, warm shop lights",
                     "control_mode": "full", "regenerate": "background"},  # the bus and the people stay as they are
    "Oil portrait": {"sample": "Two people (photo)", "prompt": "an oil painting of two men in suits, museum light",
                     "control_mode": "full", "guidance_scale": 6.0},
}
# Once per new result: a phone stacks the columns, so bring the result to the top of the screen if it is not there.
# A function of its own: the page's scripts share one global scope, where `top` is the window's own (a `const top`
# there is a SyntaxError) and a second result's `const` would be declared twice.
SCROLL_HERE = """<div id="new-result"></div><script>
(() => {
  const here = document.getElementById("new-result");
  const offset = here.getBoundingClientRect().top;
  if (offset < 0 || offset > 0.4 * window.innerHeight) here.scrollIntoView({behavior: "smooth", block: "start"});
})();
</script>"""
POLL_S = 0.5  # the job view, only while this visitor's run is on its way
STAGES = {"fetch": "Fetching the style LoRA", "detect": "Detecting objects", "control": "Building the control image",
          "generate": "Denoising"}
# Widgets are keyed by GenerationRequest's field names and take its defaults (page/fill.py names the fields the
# page shows its own way).
PAGE_DEFAULTS: dict[str, Any] = {
    "prompt": "a cozy cottage in a watercolor painting", "randomize_seed": True, "seed": 1, "set_size": False,
    "width": 512, "height": 512, "lora": "", "own_control": False, "detect_classes": [], "control_classes": [],
    "control_range": (GenerationRequest.control_start, GenerationRequest.control_end),
    "sample": "Shapes scene", "upload_key": 0, "use_camera": False,
}

st.set_page_config(page_title="YOLO ControlNet Studio", page_icon="🎨", layout="wide")


def widget_defaults() -> dict[str, Any]:
    request = GenerationRequest(preset=opening_preset())
    return {**{item.name: getattr(request, item.name) for item in fields(request)}, **PAGE_DEFAULTS}


def opening_preset() -> str:
    """The preset the page opens on (START_PRESET; "auto": Fast on a server without a GPU)."""
    jobs = state.loaded()
    if jobs is None:
        return GenerationRequest.preset
    return start_preset(jobs.pipelines[0].settings.start_preset, gpu=jobs.on_gpu())


# -- the server: one model set, one job queue, shared by every browser session -----------------------------

def load_jobs() -> JobQueue | None:
    """The server's job queue (studio/serving/state.py: once per process, shared with the HTTP API)."""
    try:
        with st.spinner("Loading the models (once per server)…"):
            return state.jobs()
    except JobsBackendError as exc:
        way_out(f"**The jobs cannot run on the Ray cluster.** {exc}", "Use the local job queue instead",
                lambda: state.use_backend("local"))
    except ModelLoadError as exc:
        way_out(f"**The real models could not be loaded.** {exc}", "Use the offline smoke models instead",
                lambda: state.use_models("tiny"))
    return None


def way_out(message: str, label: str, switch: Callable[[], None]) -> None:
    """Why the server cannot start as set up, and a button that switches it (for every visitor) to what can."""
    st.error(message)
    if st.button(label, type="primary"):
        switch()
        st.rerun()


# -- access ----------------------------------------------------------------------------------------------

def password_gate() -> bool:
    """True when no password is set, or this tab carries a valid token in its address (access.py). Checked on
    every run: Streamlit lets a websocket reattach to an existing session by its id, so a flag in session state
    would let anyone who learns that id in; the token lives in the tab's address, which a reattached socket does
    not have. After FREE_GUESSES wrong guesses from one client, each further one is taken only after a growing
    wait, counted on the server (a new tab changes nothing), and every failure is logged without the guess."""
    if access.password() is None:
        if not access.valid_token(st.query_params.get(access.TOKEN_PARAM)):
            st.query_params[access.TOKEN_PARAM] = access.mint()  # an identity of its own, also without a password
        return True
    if signed_in():
        return True
    with st.form("login"):
        given = st.text_input("Password", type="password")
        if st.form_submit_button("Enter"):
            if access.BACKOFF.turn(client(), wait=False) is None:
                wait = access.BACKOFF.wait_s(client())
                st.error(f"Too many wrong passwords from here: try again in {math.ceil(wait)} s.")
            elif access.is_password(given):
                access.BACKOFF.succeeded(client())
                st.session_state.clear()  # a new visitor: nothing of whoever held this session before
                st.query_params[access.TOKEN_PARAM] = access.mint()
                st.rerun()
            else:
                failures = access.BACKOFF.failures(client())
                log.warning("wrong app password (failure %d in a row from this client)", failures)
                st.error("That password is not right.")
    return False


# -- panels ----------------------------------------------------------------------------------------------

@st.fragment(run_every=state.setting("queue_poll_s"))
def queue_line(jobs: JobQueue) -> None:
    """The queue as it is now: a fragment of its own, so the line follows the jobs without rerunning the page."""
    if signed_in():
        st.markdown(f"**Queue:** {jobs.running} running, {jobs.waiting} waiting, {len(jobs.workers)} "
                    f"worker{'s' if len(jobs.workers) > 1 else ''}")


def system_panel(jobs: JobQueue) -> None:
    pipe = jobs.pipelines[0]
    with st.sidebar:
        st.header("System")
        for device in jobs.devices():
            st.markdown(f"**Device:** {device}, {str(pipe.dtype).removeprefix('torch.')}")
        queue_line(jobs)
        if pipe.settings.models == "tiny":
            st.warning("Offline smoke models: random weights, so the pictures are noise, and the smoke detector "
                       "knows only circles, squares and triangles (on a real photo it sees shapes, not objects). "
                       "Set MODELS=sd15 for the real models.")
        st.markdown(f"**Attention:** `{pipe.attention_in_use}`. {pipe.attention.why}")
        if pipe.attention_fallback:
            st.warning(pipe.attention_fallback)
        st.markdown(f"**Fast path:** {pipe.fast_path}")
        with st.expander("Attention backends"):
            st.dataframe([{"backend": c.name, "usable": c.usable, "version": c.version, "reason": c.reason}
                          for c in pipe.attention.candidates], hide_index=True)
        with st.expander("Models and versions"):
            st.json({"models": {key: public_source(source) for key, source in pipe.model_ids.items()},
                     "versions": pipe.versions, "environment": pipe.attention.environment})


KEPT_BY_EXAMPLES = ("seed", "randomize_seed", "upload_key", "use_camera")


def settings_snapshot() -> dict[str, Any]:
    """The page's settings as they are now, to tell whether the visitor changed any since the last example."""
    return {key: st.session_state.get(key) for key in widget_defaults() if key not in KEPT_BY_EXAMPLES}


def own_work() -> bool:
    """An upload, or settings changed since the page opened or an example filled it: an example would replace
    them, so it asks first."""
    state = st.session_state
    return state.get(f"upload-{state.upload_key}") is not None or settings_snapshot() != state.get("filled_from")


def ask_example(name: str) -> None:
    if own_work():
        st.session_state.pending_example = name
    else:
        use_example(name)


def use_example(name: str, settings_too: bool = True) -> None:
    """Fill the page from an example (runs before the widgets are drawn again): its picture and prompt, and with
    `settings_too` its settings on top of the defaults."""
    state = st.session_state
    example = EXAMPLES[name]
    values = {**widget_defaults(), **example} if settings_too else {k: example[k] for k in ("sample", "prompt")}
    for key, value in values.items():
        if key not in KEPT_BY_EXAMPLES:
            state[key] = value
    state.upload_key += 1  # a new, empty uploader: the example's picture is used
    state.use_camera = False
    state.pop("pending_example", None)
    state.filled_from = settings_snapshot()


def examples_panel() -> None:
    available = [name for name, example in EXAMPLES.items() if example["sample"] in SAMPLES]
    for column, name in zip(st.columns(len(available)), available):
        column.button(name, key=f"example-{name}", on_click=guarded(ask_example), args=(name,), width="stretch")
    pending = st.session_state.get("pending_example")
    if pending is not None:
        st.warning(f"The example *{pending}* replaces your photo and settings.")
        replace_all, photo_only, keep = st.columns(3)
        replace_all.button("Replace them", key="example-replace", on_click=guarded(use_example), args=(pending,))
        photo_only.button("Take its photo and prompt only", key="example-photo", on_click=guarded(use_example),
                          args=(pending, False))
        keep.button("Keep mine", key="example-keep", on_click=guarded(st.session_state.pop),
                    args=("pending_example", None))


def input_panel(previews: Previews, max_upload_mb: int) -> tuple[Any, str] | tuple[None, None]:
    """The photo: an upload, the camera or a sample. Any file is taken and checked here, so that a refusal says why
    in a message (the uploader's own type filter shows only a red mark whose reason is hover text)."""
    upload = st.file_uploader(f"Photo (PNG, JPEG, WebP or GIF, up to {max_upload_mb} MB)",
                              key=f"upload-{st.session_state.upload_key}")
    st.toggle("Use the camera", key="use_camera")
    photo = st.camera_input("Take a photo") if st.session_state.use_camera else None
    try:
        if upload is not None:
            return previews.image(upload.getvalue(), visitor())
        if photo is not None:
            return previews.image(photo.getvalue(), visitor())
        sample = st.selectbox("…or a sample image", list(SAMPLES), key="sample")
        return previews.image(SAMPLES[sample])
    except InvalidImageError as exc:
        name = f"'{plain(upload.name[:80])}'" if upload is not None else "The photo"
        st.error(f"{name} cannot be used: {exc} Upload another one, or remove it (×) to use a sample.")
        return None, None


def guided() -> bool:
    """Classifier-free guidance is on (CFG above 1): only then do the negative prompt and guess mode act."""
    return st.session_state.guidance_scale > 1


def prompt_panel() -> None:
    st.text_area(request_field("prompt").metadata["label"], key="prompt", height=80, max_chars=MAX_PROMPT_CHARS)
    st.text_input(request_field("added_prompt").metadata["label"], key="added_prompt", max_chars=MAX_PROMPT_CHARS)
    st.text_input(request_field("negative_prompt").metadata["label"], key="negative_prompt",
                  max_chars=MAX_PROMPT_CHARS, disabled=not guided(),
                  help=None if guided() else "Ignored at a CFG of 1 or less (this preset's): there is no unconditional "
                                             "pass for it to steer.")


def use_preset() -> None:
    """A preset sets scheduler, steps and CFG; Custom keeps what is set. A value only a modified client sends is
    left to the request's validation, which says what is wrong."""
    if st.session_state.preset == CUSTOM or st.session_state.preset not in PRESETS:
        return
    preset = PRESETS[st.session_state.preset]
    st.session_state.scheduler, st.session_state.steps = preset.scheduler, preset.steps
    st.session_state.guidance_scale = preset.guidance_scale


def leave_preset() -> None:
    """Scheduler, steps or CFG changed by hand: the run is no longer the preset's, so the radio says Custom (a
    Fast run at UniPC and CFG 7.5 would otherwise still fuse the TCD LoRA)."""
    state = st.session_state
    preset = PRESETS.get(state.preset)
    if preset is not None and (state.scheduler, state.steps, state.guidance_scale) != \
            (preset.scheduler, preset.steps, preset.guidance_scale):
        state.preset = CUSTOM


def preset_speed(jobs: JobQueue, name: str, size: tuple[int, int] | None) -> str:
    """Seconds per image for a preset at the size the page would run, measured here (per step, times its steps)."""
    steps = st.session_state.steps if name == CUSTOM else PRESETS[name].steps
    seconds = jobs.seconds_per_image(name, size, steps) if size is not None else None
    return f"{seconds:.1f} s/image here" if seconds is not None else "not run here yet"


def generation_panel(settings: Settings, jobs: JobQueue, size: tuple[int, int] | None) -> None:
    presets = request_field("preset").metadata["choices"]
    at = f" at {size[0]}x{size[1]}" if size is not None else ""
    st.radio("Speed preset", list(presets), key="preset", horizontal=True, on_change=guarded(use_preset),
             format_func=presets.get, captions=[preset_speed(jobs, name, size) for name in presets],
             help=" ".join(f"**{p.label}**: {p.help}" for p in PRESETS.values()) +
             f" The seconds per image{at} are measured on this server.")
    note = st.container()  # always there: a panel below keeps its place, so it stays open or folded as it was
    if st.session_state.preset == opening_preset() != GenerationRequest.preset:
        note.caption(f"This server opened on {PRESETS[opening_preset()].label}" + (
            ": it has no GPU, and a Quality picture takes minutes on a CPU." if settings.start_preset == "auto"
            else " (START_PRESET)."))
    if st.session_state.preset == CUSTOM:
        distilled = distilled_by(CUSTOM, st.session_state.scheduler)
        note.caption("Custom: your own scheduler, steps and CFG" + (
            f", with the {PRESETS[distilled].label} preset's distillation LoRA (its scheduler needs it)."
            if distilled else ", on the base model without a distillation LoRA."))
    with st.expander("Generation settings"):
        switch(st, "fast_decode")
        left, right = st.columns(2)
        slider(left, "steps", on_change=guarded(leave_preset))
        slider(right, "guidance_scale", on_change=guarded(leave_preset))
        slider(left, "num_images")
        choice(right, "scheduler", on_change=guarded(leave_preset))
        st.toggle("Random seed", key="randomize_seed")
        seed, dice, recycle = st.columns([3, 1, 1], vertical_alignment="bottom")
        seed.number_input("Seed", *request_field("seed").metadata["limits"], key="seed",
                          disabled=st.session_state.randomize_seed,
                          help="With a random seed, this shows the seed the last run used.")
        dice.button("🎲 New", key="new_seed", on_click=guarded(new_seed),
                    help="A new random seed, kept for the next runs")
        recycle.button("♻️ Last", key="last_seed", on_click=guarded(last_seed),
                       disabled="result" not in st.session_state,
                       help="The seed of the last result")
        slider(st, "resolution", disabled=st.session_state.set_size)
        st.toggle("Set width and height", key="set_size")
        left, middle, right = st.columns(3)
        fixed = not st.session_state.set_size
        slider(left, "width", disabled=fixed)
        slider(middle, "height", disabled=fixed)
        choice(right, "resize_mode", disabled=fixed)
        left, right = st.columns(2)
        slider(left, "controlnet_scale")
        right.slider("Control start / end", *request_field("control_start").metadata["limits"], step=0.05,
                     key="control_range")
        switch(st, "guess_mode", disabled=not guided())
        if not guided():
            st.caption("At a CFG of 1 or less the negative prompt and guess mode have nothing to act on.")
    with st.expander("Style LoRA"):
        if settings.allow_any_lora:
            st.text_input("Hub id or local .safetensors file (empty: none)", key="lora")
        else:
            choices = ["", *offered_loras(settings)]
            if st.session_state.lora not in choices:
                st.session_state.lora = ""
            st.selectbox("Style LoRA", choices, key="lora", format_func=lambda name: name or "None",
                         disabled=len(choices) == 1,
                         help=None if len(choices) > 1 else "None offered on this server (LORA_DIR, LORA_HUB_IDS).")
        slider(st, "lora_weight")


def new_seed() -> None:
    st.session_state.seed, st.session_state.randomize_seed = random.randint(0, SEED_MAX), False


def last_seed() -> None:
    st.session_state.seed, st.session_state.randomize_seed = st.session_state.result.seed, False


def detection_panel(class_names: list[str]) -> None:
    with st.expander("Detection"):
        left, right = st.columns(2)
        slider(left, "detect_conf")
        slider(right, "detect_iou")
        st.multiselect(request_field("detect_classes").metadata["label"], class_names, key="detect_classes")
        find = request_field("find").metadata
        st.text_input(find["label"], key="find", help=find["help"], max_chars=MAX_PROMPT_CHARS,
                      placeholder="e.g. the wooden door, logo (empty: the detector's classes)",
                      on_change=guarded(forget_objects))


def classes_in_use(names: dict[int, str]) -> dict[int, str]:
    """The classes detections come in: the detector's, or the things named in "Find by name"."""
    found_by_name = names_to_find(st.session_state.get("find", ""))
    return dict(enumerate(found_by_name)) if found_by_name else names


def request_from_state(names: dict[int, str]) -> GenerationRequest:
    """The request the widgets describe (each widget is keyed by its field's name; PAGE_CONVERTED fields are
    converted from the page's own widgets); raises InvalidRequestError with a message for the person."""
    state = st.session_state
    ids = {name: class_id for class_id, name in classes_in_use(names).items()}
    detector_ids = {name: class_id for class_id, name in names.items()}
    values = {item.name: state[item.name] for item in fields(GenerationRequest) if item.name in state}
    values.update(
        seed=None if state.randomize_seed else int(state.seed),
        width=state.width if state.set_size else None, height=state.height if state.set_size else None,
        control_start=state.control_range[0], control_end=state.control_range[1], lora=state.lora.strip() or None,
        control_source="edge_map" if state.own_control else "canny",
        control_classes=tuple(ids[n] for n in state.control_classes if n in ids) or None,
        detect_classes=tuple(detector_ids[n] for n in state.detect_classes if n in detector_ids) or None,
        objects=tuple(sorted(object_id for object_id, _ in object_widgets(PICK) if state[PICK + str(object_id)]))
        or None, object_prompts={object_id: state[key] for object_id, key in object_widgets(OBJECT_PROMPT)})
    return GenerationRequest(**values)


def object_widgets(prefix: str) -> list[tuple[int, str]]:
    """(object id, state key) of the objects list's widgets of one kind."""
    return [(int(key.removeprefix(prefix)), key) for key in list(st.session_state)
            if isinstance(key, str) and key.startswith(prefix) and key.removeprefix(prefix).isdigit()]


def forget_objects_of_another_image(key: str | None) -> None:
    """Object ids name the objects of one picture: a new picture starts with none picked and no object prompts."""
    if st.session_state.get("objects_of") != key:
        forget_objects()
        st.session_state.objects_of = key


def forget_objects() -> None:
    """Unpick every object and drop their prompts (their ids name other objects now)."""
    for _, widget in object_widgets(PICK) + object_widgets(OBJECT_PROMPT):
        del st.session_state[widget]


@st.fragment
def control_panel(previews: Previews, image: Any, key: str | None, names: dict[int, str]) -> None:
    """The control image above its own settings. A fragment: moving a slider here rebuilds only the control
    image (from cached detections), not the page."""
    if not signed_in():
        return
    preview_slot = st.container()
    left, right = st.columns(2)
    choice(left, "control_mode")
    choice(right, "regenerate", on_change=guarded(use_mode_defaults))
    try:
        request, problem = request_from_state(names), None
    except InvalidRequestError as exc:
        request, problem = None, str(exc)
    detections = previews.detections(image, key, request) if image is not None and request is not None else []
    st.session_state.detected_labels = sorted({d.label for d in detections})
    with st.container():  # always there, so the panels below keep their places (and their open or folded state)
        if image is not None:
            objects_panel(image, detections)
    repaint_panel()
    control_settings()
    with preview_slot:
        if image is None:
            st.info("Upload a photo (or pick a sample) to see its control image here.")
            return
        try:
            if request is None:
                raise InvalidRequestError(problem)
            preview = previews.preview(image, key, request)
        except InvalidRequestError as exc:
            st.error(str(exc))
            return
        control_tab, detections_tab = st.tabs(["Control image", f"Detections ({len(detections)})"])
        width, height = preview.size
        if preview.mask is not None:
            control_tab.image(display.photo(overlay_mask(preview.control_image, preview.mask)), width="stretch",
                              caption=f"Control image preview, {width}x{height}; tinted red: what will be repainted")
        else:
            control_tab.image(display.edges(preview.control_image), width="stretch", output_format="PNG",
                              caption=f"Control image preview, {width}x{height}")
        detections_tab.image(display.photo(draw_detections(image, detections, request.objects)),
                             caption=f"{len(detections)} detections", width="stretch")
        for warning in preview.warnings:
            st.warning(warning)
        detail_crops(preview)


def control_settings() -> None:
    """Which classes guide the control image and how, and the Canny thresholds: folded away (phones)."""
    state = st.session_state
    guided = state.control_mode != "full" or state.regenerate != "all"
    with st.expander("Control image settings"):
        detected = state.get("detected_labels", [])
        st.multiselect(request_field("control_classes").metadata["label"],
                       sorted(set(detected) | set(state.control_classes)), key="control_classes", disabled=not guided)
        left, middle, right = st.columns(3)
        slider(left, "control_padding", disabled=not guided)
        slider(middle, "control_feather", disabled=not guided)
        slider(right, "background_weight", disabled=not guided)
        left, right = st.columns(2)
        slider(left, "canny_low", disabled=state.own_control)
        slider(right, "canny_high", disabled=state.own_control)
        st.toggle("My upload is already an edge map (no Canny)", key="own_control")
        switch(st, "invert_edge_map", disabled=not state.own_control)


def detail_crops(preview: ControlPreview) -> None:
    """Each detail pass's crop at the size it will be sampled, its mask outlined: what the run will repaint."""
    passes = [p for p in preview.passes if not p.whole]
    if not passes:
        return
    st.caption("Detail crops, each at the size it is sampled (red: its mask)")
    for column, plan in zip(st.columns(min(len(passes), 4)) * ((len(passes) + 3) // 4), passes):
        det = plan.objects[0]
        column.image(display.photo(outline_mask(plan.crop(preview.picture), plan.working_mask()), 256), width="stretch",
                     caption=f"#{det.id} {det.label} · {plan.size[0]}x{plan.size[1]}")


def use_mode_defaults() -> None:
    """A detail pass restyles (strength 0.4, colours kept); the other repaints start from noise."""
    detailing = st.session_state.regenerate == "detail" or st.session_state.detail_output
    st.session_state.strength = DETAIL_STRENGTH if detailing else 1.0
    st.session_state.color_match = detailing


def objects_panel(image: Any, detections: list[Detection]) -> None:
    """The detected objects one by one: a crop, a checkbox and an optional prompt each. None ticked: every object
    of the chosen classes."""
    if not detections:
        return
    with st.expander(f"Objects ({len(detections)}): pick them one by one, each with its own prompt"):
        st.caption("None ticked: every object of the chosen classes. A ticked object is highlighted in the "
                   "detections.")
        choice(st, "object_prompt_mode")
        for det in detections:
            thumb, fields_column = st.columns([1, 4], vertical_alignment="center")
            crop = image.crop(tuple(int(round(v)) for v in det.box))
            crop.thumbnail((64, 64))
            thumb.image(display.photo(crop))
            fields_column.checkbox(f"#{det.id} {det.label} {det.confidence:.2f}", key=PICK + str(det.id))
            fields_column.text_input(f"Prompt of #{det.id}", key=OBJECT_PROMPT + str(det.id),
                                     max_chars=MAX_PROMPT_CHARS, placeholder="its own prompt (empty: the main prompt)",
                                     label_visibility="collapsed")


def repaint_panel() -> None:
    """How a repaint runs: its strength and colour correction, and the detail pass's crops and filters."""
    state = st.session_state
    repainting = state.regenerate != "all" or state.detail_output
    with st.expander("Repaint and detail pass (ADetailer)"):
        slider(st, "strength", disabled=not repainting)
        switch(st, "color_match", disabled=not repainting)
        switch(st, "soft_mask", disabled=not repainting)
        switch(st, "detail_output", disabled=state.regenerate != "all", on_change=guarded(use_mode_defaults))
        left, right = st.columns(2)
        slider(left, "detail_resolution")
        slider(right, "detail_padding")
        left, right = st.columns(2)
        meta = request_field("max_objects").metadata
        left.number_input(meta["label"], *(int(v) for v in meta["limits"]), key="max_objects", placeholder="all")
        slider(right, "min_object_area")


def page_request(previews: Previews, image: Any, key: str | None, names: dict[int, str]
                 ) -> tuple[GenerationRequest | None, ControlPreview | None, str | None]:
    """The request the widgets describe, the preview Generate hands to its job, and why it cannot run (shown
    beside the button) when it cannot."""
    try:
        request = request_from_state(names)
    except InvalidRequestError as exc:
        return None, None, str(exc)
    if image is None:
        return request, None, None
    try:
        return request, previews.preview(image, key, request), None
    except InvalidRequestError as exc:
        return request, None, str(exc)


@st.fragment
def generate_panel(jobs: JobQueue, previews: Previews, image: Any, key: str | None, names: dict[int, str]) -> None:
    """Generate, disabled with the reason beside it while the request cannot run; a request that still fails
    when it is submitted says why in place. A fragment: pressing Generate reruns this panel, not the page (every
    rerun of the page costs the tunnel tens of KB); the page reruns once, when the run has ended. The request is
    read from the widgets here, at the press: the control panel's own fragment may have changed them since."""
    if not signed_in():
        return
    request, preview, problem = page_request(previews, image, key, names)
    job = st.session_state.get("job")
    mine_active = job is not None and job.active
    if st.button("Generate", type="primary", width="stretch", disabled=preview is None or mine_active,
                 help="Your run is on its way; cancel it or wait for it." if mine_active else None):
        try:
            st.session_state.job = jobs.submit(image, request, owner=visitor(), preview=preview)
            st.session_state.pop("notice", None)
        except EXPECTED_ERRORS as exc:
            problem = str(exc)
    if problem is not None:
        st.error(problem)
    job = st.session_state.get("job")
    if job is not None and job.active:
        job_view(jobs)


@st.fragment(run_every=POLL_S)
def job_view(jobs: JobQueue) -> None:
    """The running job: place in the queue, stage, progress and Cancel. Polls itself; once the job has ended
    it reruns the page so that the results (or the reason) appear."""
    if not signed_in():
        return
    job = st.session_state.get("job")
    if job is None or not job.active:
        st.rerun()
    job.touch()
    if job.stage == "fetch":  # its style LoRA comes from the Hub first; then it joins the queue
        st.progress(0.0, text=STAGES["fetch"] + "…")
    elif job.state == QUEUED:
        position, eta = jobs.position(job), jobs.eta_s(job)
        if position is not None:
            wait = f"; it starts in about {eta:.0f} s" if eta is not None else ""
            st.info(f"Waiting for its turn: your run is number {position} in the queue{wait}.")
    elif job.stage == "generate":
        st.progress(min(job.step / max(job.total, 1), 1.0), text=f"Denoising step {job.step} of {job.total}")
        if job.preview is not None:
            st.image(display.photo(job.preview, display.PREVIEW_SIDE, quality=70), width=256,
                     caption=f"Live preview after step {job.preview_step}")
    else:
        st.progress(0.0, text=STAGES.get(job.stage or "detect", "Starting") + "…")
    st.button("Cancel", key="cancel", on_click=guarded(jobs.cancel), args=(job,), help="Stops after the current step.")


def collect_finished_job() -> None:
    """Move this session's ended job into the page's state: its results (the history reads the outputs folder),
    or a one-time notice."""
    job = st.session_state.get("job")
    if job is None or job.active:
        return
    st.session_state.job = None
    if job.state == DONE:
        result = job.result
        st.session_state.result, st.session_state.input_image = result, job.image
        st.session_state.seed = result.seed  # the seed field shows the seed actually used
        st.session_state.scroll_to_result = True
        st.session_state.result_time = time.strftime("%H:%M:%S", time.localtime(job.finished))
    elif job.state == CANCELLED:
        steps = job.result.run_card["steps_done"] if job.result else 0
        st.session_state.notice = ("warning", f"Cancelled after step {steps}." if steps else
                                   "Cancelled before it started.")
    else:
        st.session_state.notice = ("error", job.message)


def result_downloads(result: Any) -> tuple[dict[str, bytes], bytes]:
    """The run's files and their zip, encoded once per result (not at every rerun: 8 large PNGs and the zip took
    seconds each time a widget moved)."""
    cached = st.session_state.get("downloads")
    if cached is None or cached[0] is not result:
        files = result_files(result)
        cached = st.session_state.downloads = (result, files, zip_of(files))
    return cached[1], cached[2]


def pictures(result: Any) -> list[bytes]:
    """The result's images as the page shows them (display.py: JPEGs at display size), encoded once per result."""
    cached = st.session_state.get("pictures")
    if cached is None or cached[0] is not result:
        cached = st.session_state.pictures = (result, [display.photo(image) for image in result.images])
    return cached[1]


def results_panel() -> None:
    notice = st.session_state.pop("notice", None)
    if notice is not None:
        (st.warning if notice[0] == "warning" else st.error)(notice[1])
    result = st.session_state.get("result")
    if result is None:
        st.caption("Results appear here.")
        return
    card = result.run_card
    if st.session_state.pop("scroll_to_result", False):
        st.html(SCROLL_HERE, unsafe_allow_javascript=True)
    st.subheader(f"Results (seed {result.seed})")
    timings = result.timings
    st.caption(f"Finished at {st.session_state.result_time}: detection {timings['detect_s']:.2f} s, control image "
               f"{timings['control_s']:.2f} s, denoising {timings['generate_s']:.2f} s.")
    for warning in (w for w in result.warnings if "safety checker" not in w):
        st.warning(warning)
    files, archive = result_downloads(result)
    st.download_button("Download all (zip)", later(archive), file_name("yolo-controlnet", result.seed, card, "zip"),
                       "application/zip", key="download-all", on_click="ignore", type="primary")
    shown = [i for i in range(len(result.images)) if not result.flagged[i]]
    for i in sorted(set(range(len(result.images))) - set(shown)):
        st.info(f"Image {i + 1} (seed {result.seeds[i]}) was flagged by the safety checker, so it is not shown.")
    where = "inside the repainted area" if card["regenerate"]["mode"] != "all" else "whole picture"
    grid = st.columns(2) if len(shown) > 1 else [st.container()]
    for n, i in enumerate(shown):  # several images: a grid of two; each opens full size (its ⤢ button)
        fidelity, column = result.fidelity[i], grid[n % len(grid)]
        column.image(pictures(result)[i], width="stretch",
                     caption=f"seed {result.seeds[i]} · edge fidelity {fidelity['score']:.2f} ({where}; 0: no "
                             f"better than chance, 1: every control edge; F1 {fidelity['f1']:.2f})")
        name = file_name("result", result.seeds[i], card, "png")
        column.download_button("Download PNG", later(files[name]), name, "image/png", key=f"download-{i}",
                               on_click="ignore")
        column.code(a1111_parameters(card, i), language=None, wrap_lines=True)
    if card["regenerate"]["mode"] != "all" and card["steps_done"] > 0:  # strength 0 repaints nothing: no caption
        regenerated = card["regenerate"]
        st.image(display.photo(overlay_mask(result.images[0], result.mask)), width="stretch",
                 caption=f"Repainted ({regenerated['repainted_share']:.0%} of the picture, tinted red, from "
                         f"{regenerated['mask_source']} masks); the rest is the input, pixel for pixel")
    if card["objects"]:
        objects_table(card["objects"])
    with st.expander("Control image, detections and run card"):
        left, right = st.columns(2)
        left.image(display.edges(result.control_image), caption="Control image", output_format="PNG")
        name = file_name("control", result.seed, card, "png")
        left.download_button("Download control image", later(files[name]), name, "image/png", on_click="ignore")
        right.image(display.photo(draw_detections(st.session_state.input_image, result.detections)),
                    caption="Detections")
        st.dataframe([d.as_row() for d in result.detections], hide_index=True)
        left, right = st.columns(2)
        left.download_button("Detections (CSV)", later(detections_csv(result.detections)),
                             file_name("detections", result.seed, card, "csv"), "text/csv", on_click="ignore")
        right.download_button("Run card (JSON)", later(json.dumps(card, indent=2)),
                              file_name("run_card", result.seed, card, "json"), "application/json", on_click="ignore")


def objects_table(entries: list[dict]) -> None:
    """Each repainted object: its prompt, where and at what size it was sampled, and how visible its seam is."""
    st.dataframe([{"image": e["image"] + 1, "object": f"#{e['id']} {e['class']}", "prompt": e["prompt"],
                   "sampled at": "x".join(map(str, e["working_size"])), "strength": e["strength"],
                   "seam (ΔE00)": e["seam"]} for e in entries], hide_index=True)
    st.caption("Seam: the colour step along each mask's border against the photo's, in CIEDE2000 (2 or less is hard "
               "to see). The zip holds each detail crop as it was sampled, and its mask.")


def side_by_side_panel() -> None:
    """The input as it was placed (the same crop or fill as the control image), the control image and the first
    output, at the same size in one row."""
    result = st.session_state.get("result")
    if result is None or not result.images:
        return
    st.subheader("Side by side")
    size = result.images[0].size
    placed, _ = place_image(st.session_state.input_image, size, result.run_card["request"]["resize_mode"])
    shown = (display.photo(placed), display.edges(result.control_image.resize(size)), pictures(result)[0])
    for column, image, caption, kind in zip(st.columns(3), shown, ("Input", "Control image",
                                            f"Output (seed {result.seeds[0]})"), ("JPEG", "PNG", "JPEG")):
        column.image(image, caption=caption, width="stretch", output_format=kind)  # else a PNG becomes a JPEG


def main() -> None:
    st.title("YOLO ControlNet Studio")
    st.caption("Detect objects in a photo, keep the structure you choose as a Canny control image, and paint "
               "something new on it with Stable Diffusion 1.5 + ControlNet.")
    if not password_gate():
        return
    jobs = load_jobs()
    if jobs is None:
        return
    for key, value in widget_defaults().items():  # after the models: the opening preset depends on the device
        st.session_state.setdefault(key, value)
    st.session_state.setdefault("filled_from", settings_snapshot())
    previews = state.previews()
    collect_finished_job()
    if "attached" not in st.session_state:  # a reload or a new tab: this visitor's run on its way, if any
        st.session_state.attached = True
        st.session_state.job = jobs.active_job(visitor())
    system_panel(jobs)
    examples_panel()
    names = jobs.pipelines[0].detector.names
    settings = jobs.pipelines[0].settings
    offered = offered_loras(settings)
    # Photo, prompt and Generate beside the results; the settings below. A phone stacks the columns, so a result
    # comes where the progress was, not three screens further down.
    input_column, output_column = st.columns([1, 1.2], gap="medium")
    with input_column:
        image, key = input_panel(previews, settings.max_upload_mb)
        forget_objects_of_another_image(key)
        prompt_panel()
        generate_panel(jobs, previews, image, key, names)
        request, preview, problem = page_request(previews, image, key, names)
        batch_panel(jobs, request, problem, settings.max_upload_mb)
    with output_column:
        results_panel()
        history_panel(settings.outputs_dir, names, offered, settings.allow_any_lora)
    control_column, settings_column = st.columns([1, 1.2], gap="medium")
    with control_column:
        control_panel(previews, image, key, names)
    with settings_column:
        generation_panel(settings, jobs, preview.size if preview is not None else None)
        detection_panel(list(names.values()))  # the detector's own classes, also while finding by name
        png_info_panel(names, offered, settings.allow_any_lora)
    side_by_side_panel()



try:
    main()
except Exception:  # a bug: the visitor gets a short message, the server's log the traceback
    log.exception("the page failed")
    st.error("Something went wrong on the server (it was logged). Reload the page to try again.")
