"""How the page opens and what a reload keeps: the widgets' starting values (the visitor's saved settings after a
reload, else the defaults with the preset this server opens on), and each run's settings saved on the server."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.core.errors import InvalidRequestError
from studio.core.presets import start_preset
from studio.core.request import GenerationRequest
from studio.page import form
from studio.page.page_state import page
from studio.page.samples import SAMPLES
from studio.page.session import visitor
from studio.serving import state
from studio.serving.jobs import JobQueue

PHOTO = "objects_of"  # the photo whose objects the saved picks name
KEPT_BY_EXAMPLES = ("seed", "randomize_seed", "use_camera")  # an example leaves them as they are


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
        restore(defaults, jobs.pipelines[0].detector.names)


def restore(defaults: dict[str, Any], names: dict[int, str]) -> None:
    """The settings this visitor left the page with, when they still make a request this server takes (a server
    restarted with other models or samples may not): a reload must never open on an error."""
    saved = state.saved_settings().load(visitor())
    if saved is None:
        return
    photo = saved.pop(PHOTO, None)
    picks = [key for prefix in (form.PICK, form.OBJECT_PROMPT) for _, key in form.object_widgets(saved, prefix)]
    values = {key: tuple(value) if isinstance(defaults[key], tuple) else value
              for key, value in saved.items() if key in defaults}
    try:
        form.request_of({**defaults, **values}, form.Context(names))
    except InvalidRequestError:
        return
    if not set(values.get("detect_classes", ())) <= set(names.values()) or values.get("sample") not in SAMPLES:
        return
    st.session_state.update({**values, **{key: saved[key] for key in picks}})
    page().objects_of = photo


def remember() -> None:
    """Save the settings as they are now, for this visitor's next reload."""
    state.saved_settings().save(visitor(), {**form.saved(st.session_state), PHOTO: page().objects_of})
