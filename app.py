"""Streamlit front end: upload a photo, detect objects, generate with SD1.5 + ControlNet Canny.

Run with `make run` (or `streamlit run app.py`). UI only: every model call goes through InferencePipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from detections import draw_detections
from inference_pipeline import (GenerationRequest, InferencePipeline, InvalidImageError, InvalidRequestError,
                                ModelLoadError, load_image)
from run_card import png_with_run_card
from settings import Settings

SAMPLE_IMAGE = Path(__file__).parent / "assets" / "sample_scene.png"

st.set_page_config(page_title="YOLO ControlNet Studio", page_icon="🎨", layout="wide")


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
        st.write(f"**Device:** {pipe.device} ({str(pipe.dtype).removeprefix('torch.')})")
        if pipe.settings.models == "tiny":
            st.warning("Offline smoke models: random weights, the pictures are noise. Set MODELS=sd15 for real ones.")
        st.write(f"**Attention:** `{pipe.attention_in_use}`: {pipe.attention.why}")
        if pipe.attention_fallback:
            st.warning(pipe.attention_fallback)
        with st.expander("Attention backends"):
            st.dataframe([{"backend": c.name, "usable": c.usable, "version": c.version, "reason": c.reason}
                          for c in pipe.attention.candidates], hide_index=True)
        with st.expander("Models"):
            st.json(pipe.model_ids)


def read_input() -> object | None:
    upload = st.file_uploader("Photo", type=["png", "jpg", "jpeg", "webp"])
    try:
        if upload is not None:
            return load_image(upload.getvalue())
        if st.toggle("Use the sample image", value=True):
            return load_image(SAMPLE_IMAGE)
    except InvalidImageError as exc:
        st.error(str(exc))
    return None


def settings_form() -> GenerationRequest | None:
    prompt = st.text_input("Prompt", "a cozy cottage in a watercolor painting")
    with st.expander("Settings"):
        steps = st.slider("Steps", 1, 100, 20)
        guidance = st.slider("Guidance scale (CFG)", 1.0, 20.0, 7.5, 0.5)
        num_images = st.slider("Images per run", 1, 4, 1)
        resolution = st.slider("Resolution (short side)", 256, 768, 512, 64)
        randomize = st.toggle("Random seed", value=True)
        seed = None if randomize else int(st.number_input("Seed", 0, 2**32 - 1, 1))
    try:
        return GenerationRequest(prompt=prompt, steps=steps, guidance_scale=guidance, num_images=num_images,
                                 resolution=resolution, size_multiple=64, seed=seed)
    except InvalidRequestError as exc:
        st.error(str(exc))
        return None


def run(pipe: InferencePipeline, image: object, request: GenerationRequest) -> None:
    if pipe.busy:
        st.info("Another user is generating right now; your run starts as soon as theirs ends.")
    progress = st.progress(0.0, text="Detecting objects…")

    def on_step(step: int, total: int) -> None:
        progress.progress(step / total, text=f"Denoising step {step}/{total}")

    st.session_state.result = pipe.generate(image, request, on_step=on_step)
    st.session_state.input_image = image
    progress.empty()


def show_result() -> None:
    result = st.session_state.get("result")
    if result is None:
        return
    st.subheader(f"Results (seed {result.seed})")
    columns = st.columns(max(1, len(result.images)))
    for i, (column, image) in enumerate(zip(columns, result.images)):
        with column:
            st.image(image, caption=f"seed {result.seeds[i]}")
            st.download_button("Download PNG", png_with_run_card(image, result.run_card), f"result-{result.seeds[i]}"
                               ".png", "image/png", key=f"download-{i}")
    left, middle, right = st.columns(3)
    with left:
        st.image(draw_detections(st.session_state.input_image, result.detections), caption="Detections")
    with middle:
        st.image(result.control_image, caption="Control image (Canny)")
    with right:
        st.dataframe([d.as_row() for d in result.detections], hide_index=True)
    st.download_button("Download run card (JSON)", json.dumps(result.run_card, indent=2), "run_card.json",
                       "application/json")


def main() -> None:
    st.title("YOLO ControlNet Studio")
    st.caption("Detect objects in a photo, turn its edges into a control image, and paint something new on it.")
    pipe = load_pipeline()
    if pipe is None:
        return
    system_panel(pipe)
    image = read_input()
    request = settings_form()
    if st.button("Generate", type="primary", disabled=image is None or request is None):
        run(pipe, image, request)
    show_result()


main()
