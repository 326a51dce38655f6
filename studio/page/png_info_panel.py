"""PNG Info: drop a PNG (this app's, or A1111's) to see the settings it carries, and fill the page with them."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.core.errors import InvalidImageError
from studio.core.png_info import PngSettings, read_png_info, style_lora
from studio.core.request import request_field
from studio.page.fill import fill
from studio.page.page_state import page
from studio.page.session import guarded
from studio.page.widgets import plain



def shown(values: dict[str, Any], lora: str | None, weight: float | None) -> list[dict[str, str]]:
    """The settings as rows of (setting, value), labelled as the page labels them."""
    rows = [{"setting": request_field(name).metadata["label"], "value": str(value)} for name, value in values.items()
            if name != "lora" and value not in (None, "")]
    if lora is not None:
        rows.append({"setting": "Style LoRA", "value": f"{lora} at {weight}"})
    return rows


def parsed(upload: Any) -> PngSettings | InvalidImageError:
    """The upload's settings, read once per upload (the panel reruns with every widget the visitor moves)."""
    kept = page().png_info
    if kept is None or kept[0] != upload.file_id:
        try:
            found: PngSettings | InvalidImageError = read_png_info(upload.getvalue())
        except InvalidImageError as exc:
            found = exc
        kept = page().png_info = (upload.file_id, found)
    return kept[1]


def use(found: PngSettings, lora: str | None, weight: float | None, names: dict[int, str]) -> None:
    fill({**found.values, **({"lora_weight": weight} if weight is not None else {})}, names, lora)
    st.toast(f"The page now has the settings of the picture from {found.source}.")


def png_info_panel(names: dict[int, str], offered: list[str], any_lora: bool) -> None:
    with st.expander("PNG Info: the settings of a picture"):
        upload = st.file_uploader("A PNG made by this app or by A1111 (its settings, not its pixels)", key="png-info")
        if upload is None:
            st.caption("Its prompt, seed, sampler, ControlNet settings and LoRAs fill the page; what this app does "
                       "not use is listed.")
            return
        found = parsed(upload)
        if isinstance(found, InvalidImageError):
            st.error(f"'{plain(upload.name[:80])}': {found}")
            return
        lora, weight, notes = style_lora(found, offered, any_lora)
        st.caption(f"Made by {found.source}.")
        st.dataframe(shown(found.values, lora, weight), hide_index=True)
        if found.unknown or notes:
            st.warning("Not used here (the picture's own words, as plain text):")
            st.code("\n".join([*notes, *found.unknown]), language=None, wrap_lines=True)
        st.button("Use these settings", key="png-info-use", type="primary", on_click=guarded(use),
                  args=(found, lora, weight, names))
