"""Streamlit front end: upload a photo, detect objects, generate with SD1.5 + ControlNet Canny.

Run with `make run` (or `streamlit run app.py`). UI only: every model call goes through InferencePipeline.
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import os
from pathlib import Path
from typing import Any

import streamlit as st

from control_image import CONTROL_MODES, RESIZE_MODES
from detections import draw_detections
from inference_pipeline import (SCHEDULERS, GenerationError, GenerationRequest, InferencePipeline,
                                InvalidImageError, InvalidRequestError, LoraError, ModelLoadError, load_image)
from run_card import png_with_run_card
from settings import Settings

ASSETS = Path(__file__).parent / "assets"
SAMPLES = {"Shapes scene": ASSETS / "sample_scene.png"}
SCHEDULER_LABELS = {"unipc": "UniPC", "dpmpp_2m_karras": "DPM++ 2M Karras", "euler_a": "Euler ancestral",
                    "ddim": "DDIM"}
MODE_LABELS = {"full": "Whole image", "objects": "Only the chosen objects", "background": "Only the background",
               "outlines": "Objects' edges and outlines"}
RESIZE_LABELS = {"resize": "Just resize", "crop": "Crop and resize", "fill": "Resize and fill"}
HISTORY_LENGTH = 8
DEFAULTS: dict[str, Any] = {
    "prompt": "a cozy cottage in a watercolor painting", "added_prompt": GenerationRequest.added_prompt,
    "negative_prompt": GenerationRequest.negative_prompt, "steps": 20, "guidance_scale": 7.5,
    "randomize_seed": True, "seed": 1, "num_images": 1, "resolution": 512, "set_size": False, "width": 512,
    "height": 512, "resize_mode": "resize", "controlnet_scale": 1.0, "control_range": (0.0, 1.0),
    "guess_mode": False, "scheduler": "unipc", "lora": "", "lora_weight": 0.8, "detect_conf": 0.25,
    "detect_iou": 0.45, "detect_classes": [], "canny_low": 100, "canny_high": 200, "control_mode": "full",
    "control_classes": [], "control_padding": 0.0, "control_feather": 0, "background_weight": 0.0,
    "own_control": False, "invert_edge_map": False,
}

st.set_page_config(page_title="YOLO ControlNet Studio", page_icon="🎨", layout="wide")


def expected_password() -> str | None:
    """APP_PASSWORD from the environment (launch.py sets it for public tunnels) or Streamlit's secrets."""
    if os.environ.get("APP_PASSWORD"):
        return os.environ["APP_PASSWORD"]
    try:
        return st.secrets.get("APP_PASSWORD") or None
    except (FileNotFoundError, KeyError, st.errors.StreamlitSecretNotFoundError):
        return None


def password_gate() -> bool:
    """True once this browser session gave the password (or when none is set); compared in constant time."""
    expected = expected_password()
    if expected is None or st.session_state.get("authenticated"):
        return True
    with st.form("login"):
        given = st.text_input("Password", type="password")
        if st.form_submit_button("Enter"):
            if hmac.compare_digest(given.encode(), expected.encode()):
                st.session_state.authenticated = True
                st.rerun()
            st.error("That password is not right.")
    return False


@st.cache_resource(show_spinner="Loading the models (once per server)…")
def get_pipeline(models: str) -> InferencePipeline:
    """One pipeline per server process, shared by every browser session; it holds the GPU lock."""
    return InferencePipeline(models=models)


def load_pipeline() -> InferencePipeline | None:
    models = st.session_state.setdefault("models", Settings.from_env().models)
    try:
        return get_pipeline(models)
    except ModelLoadError as exc:
        st.error(f"**The real models could not be loaded.** {exc}")
        if st.button("Use the offline smoke models instead", type="primary"):
            st.session_state.models = "tiny"
            st.rerun()
        return None


def system_panel(pipe: InferencePipeline) -> None:
    with st.sidebar:
        st.header("System")
        device = pipe.device
        if device.startswith("cuda"):
            import torch

            free, total = torch.cuda.mem_get_info()
            device = f"{torch.cuda.get_device_name()} ({(total - free) / 2**30:.1f} of {total / 2**30:.1f} GiB used)"
        st.markdown(f"**Device:** {device}, {str(pipe.dtype).removeprefix('torch.')}")
        if pipe.settings.models == "tiny":
            st.warning("Offline smoke models: random weights, so the pictures are noise. Set MODELS=sd15 for "
                       "the real ones.")
        st.markdown(f"**Attention:** `{pipe.attention_in_use}`. {pipe.attention.why}")
        if pipe.attention_fallback:
            st.warning(pipe.attention_fallback)
        st.markdown(f"**Fast path:** {pipe.fast_path}")
        with st.expander("Attention backends"):
            st.dataframe([{"backend": c.name, "usable": c.usable, "version": c.version, "reason": c.reason}
                          for c in pipe.attention.candidates], hide_index=True)
        with st.expander("Models and versions"):
            st.json({"models": pipe.model_ids, "versions": pipe.versions, "environment": pipe.attention.environment})


def input_panel() -> Any | None:
    upload = st.file_uploader("Photo (PNG, JPEG or WebP)", type=["png", "jpg", "jpeg", "webp"])
    try:
        if upload is not None:
            return load_image(upload.getvalue())
        sample = st.selectbox("…or a sample image", list(SAMPLES))
        return load_image(SAMPLES[sample])
    except InvalidImageError as exc:
        st.error(str(exc))
        return None


def prompt_panel() -> None:
    st.text_area("Prompt", key="prompt", height=80)
    st.text_input("Added prompt", key="added_prompt")
    st.text_input("Negative prompt", key="negative_prompt")


def generation_panel() -> None:
    with st.expander("Generation settings", expanded=True):
        left, right = st.columns(2)
        left.slider("Steps", 1, 100, key="steps")
        right.slider("Guidance scale (CFG)", 1.0, 20.0, step=0.5, key="guidance_scale")
        left.slider("Images per run", 1, 4, key="num_images")
        right.selectbox("Scheduler", SCHEDULERS, format_func=SCHEDULER_LABELS.get, key="scheduler")
        left.toggle("Random seed", key="randomize_seed")
        right.number_input("Seed", 0, 2**32 - 1, key="seed", disabled=st.session_state.randomize_seed)
        st.slider("Resolution (short side)", 256, 768, step=64, key="resolution",
                  disabled=st.session_state.set_size)
        st.toggle("Set width and height", key="set_size")
        if st.session_state.set_size:
            left, middle, right = st.columns(3)
            left.slider("Width", 256, 768, step=64, key="width")
            middle.slider("Height", 256, 768, step=64, key="height")
            right.selectbox("Resize mode", RESIZE_MODES, format_func=RESIZE_LABELS.get, key="resize_mode")
        left, right = st.columns(2)
        left.slider("ControlNet strength", 0.0, 2.0, step=0.05, key="controlnet_scale")
        right.slider("Control start / end", 0.0, 1.0, step=0.05, key="control_range")
        st.checkbox("Guess mode", key="guess_mode", help="Let ControlNet guess the content from the edges alone; "
                    "works best with a CFG of 3 to 5.")
    with st.expander("Style LoRA"):
        st.text_input("Hub id or local .safetensors file (empty: none)", key="lora")
        st.slider("LoRA weight", 0.0, 2.0, step=0.05, key="lora_weight")


def detection_panel(class_names: list[str]) -> None:
    with st.expander("Detection"):
        left, right = st.columns(2)
        left.slider("Confidence", 0.0, 1.0, step=0.05, key="detect_conf")
        right.slider("IoU (overlap)", 0.0, 1.0, step=0.05, key="detect_iou")
        st.multiselect("Only these classes (empty: all)", class_names, key="detect_classes")


def control_panel(detected: list[str]) -> None:
    with st.expander("Control image", expanded=True):
        st.selectbox("What keeps its structure", CONTROL_MODES, format_func=MODE_LABELS.get, key="control_mode")
        guided = st.session_state.control_mode != "full"
        st.multiselect("Objects (empty: every detected one)", detected, key="control_classes", disabled=not guided)
        left, middle, right = st.columns(3)
        left.slider("Padding", 0.0, 1.0, step=0.05, key="control_padding", disabled=not guided)
        middle.slider("Feather (px)", 0, 64, key="control_feather", disabled=not guided)
        right.slider("Other region's edges", 0.0, 1.0, step=0.05, key="background_weight", disabled=not guided)
        left, right = st.columns(2)
        left.slider("Canny low", 1, 255, key="canny_low")
        right.slider("Canny high", 1, 255, key="canny_high")
        st.toggle("My upload is already an edge map (no Canny)", key="own_control")
        st.checkbox("Invert it (black lines on white)", key="invert_edge_map",
                    disabled=not st.session_state.own_control)


def request_from_state(names: dict[int, str]) -> GenerationRequest | None:
    state = st.session_state
    ids = {name: class_id for class_id, name in names.items()}
    start, end = state.control_range
    try:
        return GenerationRequest(
            prompt=state.prompt, added_prompt=state.added_prompt, negative_prompt=state.negative_prompt,
            num_images=state.num_images, steps=state.steps, guidance_scale=state.guidance_scale,
            seed=None if state.randomize_seed else int(state.seed), resolution=state.resolution, size_multiple=64,
            width=state.width if state.set_size else None, height=state.height if state.set_size else None,
            resize_mode=state.resize_mode, controlnet_scale=state.controlnet_scale, control_start=start,
            control_end=end, guess_mode=state.guess_mode, scheduler=state.scheduler, lora=state.lora.strip() or None,
            lora_weight=state.lora_weight, canny_low=state.canny_low, canny_high=state.canny_high,
            control_mode=state.control_mode,
            control_classes=tuple(ids[n] for n in state.control_classes) or None,
            control_padding=state.control_padding, control_feather=state.control_feather,
            background_weight=state.background_weight, control_source="edge_map" if state.own_control else "canny",
            invert_edge_map=state.invert_edge_map, detect_conf=state.detect_conf, detect_iou=state.detect_iou,
            detect_classes=tuple(ids[n] for n in state.detect_classes) or None)
    except InvalidRequestError as exc:
        st.error(str(exc))
        return None


def preview_panel(pipe: InferencePipeline, image: Any, request: GenerationRequest) -> list[str]:
    """Detections and the control image this request would use; returns the detected labels."""
    if pipe.busy:
        st.info("Another run is using the GPU; the preview appears when it ends.")
        return []
    preview = pipe.preview(image, request)
    left, right = st.columns(2)
    left.image(draw_detections(image, preview.detections), caption=f"{len(preview.detections)} detections")
    right.image(preview.control_image, caption="Control image preview")
    for warning in preview.warnings:
        st.warning(warning)
    return sorted({d.label for d in preview.detections})


def run(pipe: InferencePipeline, image: Any, request: GenerationRequest) -> None:
    if pipe.busy:
        st.info("Another user is generating right now; your run starts as soon as theirs ends.")
    st.button("Cancel", key="cancel", help="Stops after the current denoising step.")
    labels = {"detect": "Detecting objects", "control": "Building the control image", "generate": "Denoising"}
    statuses: dict[str, Any] = {}

    def on_stage(stage: str) -> None:
        for done in statuses.values():
            done.update(state="complete", expanded=False)
        statuses[stage] = st.status(labels[stage] + "…", expanded=stage == "generate")
        if stage == "generate":
            statuses["bar"] = statuses[stage].progress(0.0)

    def on_step(step: int, total: int) -> None:
        st.session_state.last_step = step
        statuses["bar"].progress(step / total, text=f"Denoising step {step} of {total}")

    try:
        result = pipe.generate(image, request, on_step=on_step, on_stage=on_stage)
    except (LoraError, GenerationError, InvalidImageError, InvalidRequestError) as exc:
        for status in (s for name, s in statuses.items() if name != "bar"):
            status.update(state="error")
        st.error(str(exc))
        return
    timings = result.timings
    for stage, key in (("detect", "detect_s"), ("control", "control_s"), ("generate", "generate_s")):
        statuses[stage].update(label=f"{labels[stage]}: {timings[key]:.2f} s", state="complete", expanded=False)
    st.session_state.result, st.session_state.input_image = result, image
    history = st.session_state.setdefault("history", [])
    thumbs = [img.copy() for img in result.images]
    for thumb in thumbs:
        thumb.thumbnail((160, 160))
    history.insert(0, {"request": result.run_card["request"], "seed": result.seed, "thumbs": thumbs})
    del history[HISTORY_LENGTH:]


def detections_csv(detections: list) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "class_id", "confidence", "x1", "y1", "x2", "y2"])
    for det in detections:
        writer.writerow([det.label, det.class_id, f"{det.confidence:.4f}", *(f"{v:.1f}" for v in det.box)])
    return buffer.getvalue()


def results_panel() -> None:
    result = st.session_state.get("result")
    if result is None:
        return
    st.subheader(f"Results (seed {result.seed})")
    for warning in (w for w in result.warnings if "safety checker" not in w):
        st.warning(warning)
    columns = st.columns(max(1, len(result.images)))
    for i, (column, image) in enumerate(zip(columns, result.images)):
        if result.flagged[i]:
            column.info(f"Image {i + 1} (seed {result.seeds[i]}) was flagged by the safety checker, so it is not "
                        "shown.")
            continue
        fidelity = result.fidelity[i]
        column.image(image, caption=f"seed {result.seeds[i]} · edge fidelity F1 {fidelity['f1']:.2f} "
                                    f"(precision {fidelity['precision']:.2f}, recall {fidelity['recall']:.2f})")
        column.download_button("Download PNG", png_with_run_card(image, result.run_card),
                               f"result-{result.seeds[i]}.png", "image/png", key=f"download-{i}", on_click="ignore")
    left, middle, right = st.columns(3)
    left.image(draw_detections(st.session_state.input_image, result.detections), caption="Detections")
    middle.image(result.control_image, caption="Control image")
    middle.download_button("Download control image", png_with_run_card(result.control_image, result.run_card),
                           "control.png", "image/png", on_click="ignore")
    right.dataframe([d.as_row() for d in result.detections], hide_index=True)
    right.download_button("Detections (CSV)", detections_csv(result.detections), "detections.csv", "text/csv",
                          on_click="ignore")
    right.download_button("Run card (JSON)", json.dumps(result.run_card, indent=2), "run_card.json",
                          "application/json", on_click="ignore")


def reuse(request: dict, names: dict[int, str]) -> None:
    """Put a history entry's settings back into the widgets (runs before the page is drawn again)."""
    state = st.session_state
    for key in DEFAULTS:
        if key in request and key not in ("detect_classes", "control_classes", "lora", "seed"):
            state[key] = request[key]
    state.lora = request["lora"] or ""
    state.seed, state.randomize_seed = request["seed"], False
    state.control_range = (request["control_start"], request["control_end"])
    state.set_size = request["width"] is not None
    state.own_control = request["control_source"] == "edge_map"
    for key in ("detect_classes", "control_classes"):
        state[key] = [names[i] for i in request[key] or () if i in names]


def history_panel(names: dict[int, str]) -> None:
    history = st.session_state.get("history", [])
    if not history:
        return
    with st.expander(f"History ({len(history)} run{'s' if len(history) > 1 else ''})"):
        for i, entry in enumerate(history):
            left, right = st.columns([3, 1])
            left.image(entry["thumbs"], caption=[f"seed {entry['seed'] + k}" for k in range(len(entry["thumbs"]))])
            right.caption(f"{entry['request']['prompt'][:60]} · {entry['request']['steps']} steps · "
                          f"CFG {entry['request']['guidance_scale']}")
            right.button("Reuse these settings", key=f"reuse-{i}", on_click=reuse, args=(entry["request"], names))


def main() -> None:
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)
    st.title("YOLO ControlNet Studio")
    st.caption("Detect objects in a photo, keep the structure you choose as a Canny control image, and paint "
               "something new on it with Stable Diffusion 1.5 + ControlNet.")
    if not password_gate():
        return
    pipe = load_pipeline()
    if pipe is None:
        return
    system_panel(pipe)
    names = {int(k): str(v) for k, v in pipe.detector.names.items()}
    settings_column, output_column = st.columns([2, 3])
    with settings_column:
        image = input_panel()
        prompt_panel()
        generation_panel()
        detection_panel(list(names.values()))
        control_panel(sorted(set(st.session_state.get("detected_labels", [])) |
                             set(st.session_state.control_classes)))
    request = request_from_state(names)
    with output_column:
        if image is not None and request is not None:
            st.session_state.detected_labels = preview_panel(pipe, image, request)
        if st.button("Generate", type="primary", disabled=image is None or request is None):
            run(pipe, image, request)
        elif st.session_state.get("cancel"):
            st.warning(f"Cancelled after step {st.session_state.get('last_step', 0)}.")
        results_panel()
        history_panel(names)


main()
