"""The examples: one click fills the page with a picture, a prompt and the settings that suit it
(asking first when the visitor has work of their own on the page)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.page.opening import KEPT_BY_EXAMPLES, page_defaults, snapshot
from studio.page.page_state import page
from studio.page.samples import SAMPLES
from studio.page.session import guarded

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


def own_work() -> bool:
    """An upload, or settings changed since the page opened or an example filled it: an example would replace
    them, so it asks first."""
    return st.session_state.get(f"upload-{page().upload_key}") is not None or snapshot() != page().filled_from


def ask_example(name: str) -> None:
    if own_work():
        page().pending_example = name
    else:
        use_example(name)


def use_example(name: str, settings_too: bool = True) -> None:
    """Fill the page from an example (runs before the widgets are drawn again): its picture and prompt, and with
    `settings_too` its settings on top of the defaults."""
    example = EXAMPLES[name]
    values = {**page_defaults(), **example} if settings_too else {k: example[k] for k in ("sample", "prompt")}
    for key, value in values.items():
        if key not in KEPT_BY_EXAMPLES:
            st.session_state[key] = value
    page().upload_key += 1  # a new, empty uploader: the example's picture is used
    st.session_state.use_camera = False
    page().pending_example = None
    page().filled_from = snapshot()


def keep_mine() -> None:
    page().pending_example = None


def examples_panel() -> None:
    available = [name for name, example in EXAMPLES.items() if example["sample"] in SAMPLES]
    row = st.container(horizontal=True)  # a row that wraps: two rows of two on a phone, not four of one
    for name in available:
        row.button(name, key=f"example-{name}", on_click=guarded(ask_example), args=(name,))
    pending = page().pending_example
    if pending is not None:
        st.warning(f"The example *{pending}* replaces your photo and settings.")
        replace_all, photo_only, keep = st.columns(3)
        replace_all.button("Replace them", key="example-replace", on_click=guarded(use_example), args=(pending,))
        photo_only.button("Take its photo and prompt only", key="example-photo", on_click=guarded(use_example),
                          args=(pending, False))
        keep.button("Keep mine", key="example-keep", on_click=guarded(keep_mine))
