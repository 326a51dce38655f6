"""Streamlit front end: upload a photo, see its detections and control image, generate as a job.

Run with `make run` (or `streamlit run app.py`). This file only lays the panels out (studio/page/, one module per
panel; form.py says which widget holds what). Generation runs as a job in `jobs.JobQueue` (one worker per GPU),
outside this script, so no rerun can touch it; the page polls it from a fragment. Previews come from
`previews.Previews`, cached per input, and the control panel is a fragment of its own so that it follows its
sliders without rerunning the page.
"""

from __future__ import annotations

import logging

import streamlit as st

from studio.engine.loras import offered as offered_loras
from studio.page.batch_panel import batch_panel
from studio.page.control_panel import control_panel
from studio.page.examples_panel import examples_panel
from studio.page.gate import load_jobs, password_gate
from studio.page.generate_panel import collect_finished_job, generate_panel, page_request
from studio.page.history_panel import history_panel
from studio.page.opening import open_page
from studio.page.photo_panel import photo_panel
from studio.page.png_info_panel import png_info_panel
from studio.page.prompt_panel import preset_panel, prompt_panel
from studio.page.results_panel import results_panel, side_by_side_panel
from studio.page.rules import show_photo
from studio.page.settings_panel import detection_panel, generation_panel
from studio.page.system_panel import system_panel
from studio.serving import state

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("app")

st.set_page_config(page_title="YOLO ControlNet Studio", page_icon="🎨", layout="wide")


def main() -> None:
    st.title("YOLO ControlNet Studio")
    st.caption("Detect objects in a photo, keep the structure you choose as a Canny control image, and paint "
               "something new on it with Stable Diffusion 1.5 + ControlNet.")
    if not password_gate():
        return
    jobs = load_jobs()
    if jobs is None:
        return
    open_page(jobs)  # after the models: the opening preset depends on the device
    previews = state.previews()
    collect_finished_job()
    system_panel(jobs)
    examples_panel()
    names = jobs.pipelines[0].detector.names
    settings = jobs.pipelines[0].settings
    offered = offered_loras(settings)
    # Photo, prompt, preset and Generate beside the results; the settings below. A phone stacks the columns, so a
    # result comes where the progress was, not three screens further down.
    input_column, output_column = st.columns([1, 1.2], gap="medium")
    with input_column:
        image, key = photo_panel(previews, settings.max_upload_mb)
        show_photo(key, names)
        prompt_panel()
        request, preview, problem = page_request(previews, image, key, names)
        preset_panel(settings, jobs, preview.size if preview is not None else None)
        generate_panel(jobs, previews, image, key, names)
        batch_panel(jobs, request, problem, settings.max_upload_mb)
    with output_column:
        results_panel()
        history_panel(settings.outputs_dir, names, offered, settings.allow_any_lora)
    control_column, settings_column = st.columns([1, 1.2], gap="medium")
    with control_column:
        control_panel(previews, image, key, names)
    with settings_column:
        generation_panel(settings)
        detection_panel(list(names.values()))
        png_info_panel(names, offered, settings.allow_any_lora)
    side_by_side_panel()


try:
    main()
except Exception:  # a bug: the visitor gets a short message, the server's log the traceback
    log.exception("the page failed")
    st.error("Something went wrong on the server (it was logged). Reload the page to try again.")
