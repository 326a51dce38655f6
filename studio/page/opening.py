"""How the page opens and what a reload keeps: the widgets' starting values (the visitor's saved settings after a
reload, else the defaults with the preset this server opens on), and each run's settings saved on the server."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.core.presets import start_preset
from studio.core.request import GenerationRequest
from studio.page import form
from studio.page.page_state import page
from studio.page.session import visitor
from studio.serving import state
from studio.serving.jobs import JobQueue

PHOTO = "objects_of"  # the photo whose objects the saved picks name


def opening_preset() -> str:
    """The preset the page opens on (START_PRESET; "auto": Fast on a server without a GPU)."""
    jobs = state.loaded()
    if jobs is None:
        return GenerationRequest.preset
    return start_preset(jobs.pipelines[0].settings.start_preset, gpu=jobs.on_gpu())


def page_defaults() -> dict[str, Any]:
    return form.defaults(opening_preset())


def snapshot() -> dict[str, Any]:
    """The page's settings as they are now, to tell whether the visitor changed any since the last example."""
    return {key: st.session_state.get(key) for key in page_defaults() if key not in KEPT_BY_EXAMPLES}


KEPT_BY_EXAMPLES = ("seed", "randomize_seed", "use_camera")


def open_page(jobs: JobQueue) -> None:
    """Every widget's starting value; on a session's first run (a reload, a new tab) also the visitor's run on its
    way and the settings they left the page with."""
    defaults = page_defaults()
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)
    if page().filled_from is None:
        page().filled_from = snapshot()  # restored settings are the visitor's own work: an example asks first
    if not page().attached:
        page().attached = True
        page().job = jobs.active_job(visitor())
        restore(defaults)


def restore(defaults: dict[str, Any]) -> None:
    saved = state.saved_settings().load(visitor())
    if saved is None:
        return
    page().objects_of = saved.pop(PHOTO, None)
    picks = [key for prefix in (form.PICK, form.OBJECT_PROMPT) for _, key in form.object_widgets(saved, prefix)]
    for key, value in saved.items():
        if key in defaults:
            st.session_state[key] = tuple(value) if isinstance(defaults[key], tuple) else value
        elif key in picks:
            st.session_state[key] = value


def remember() -> None:
    """Save the settings as they are now, for this visitor's next reload."""
    state.saved_settings().save(visitor(), {**form.saved(st.session_state), PHOTO: page().objects_of})
