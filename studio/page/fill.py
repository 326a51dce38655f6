"""The page filled from a run's settings (a PNG's, a saved run's, a reload's): each request field into the widgets
that show it (form.py)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.page.form import Context, widget_values
from studio.page.page_state import page


def fill(values: dict[str, Any], names: dict[int, str], lora: str | None) -> None:
    """Put request field `values` into the widgets; fields left out keep their widgets as they are. `lora` is the
    style LoRA as this server offers it (None: none). Runs in a callback, before the page is drawn again."""
    state = st.session_state
    for key, value in widget_values({**values, "lora": lora}, state, Context(names, page().photo)).items():
        state[key] = value
