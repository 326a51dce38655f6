"""The history: this visitor's saved runs, newest first, read from the outputs folder (serving/history.py), so a
reload or a new tab with the same link finds them. Thumbnails in a grid; a run opens full size in a dialog."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from PIL import Image

from studio.core import display
from studio.core.errors import InvalidImageError
from studio.core.png_info import read_png_info, style_lora
from studio.core.run_card import PARAMETERS_KEY
from studio.page.fill import fill
from studio.page.page_state import page
from studio.page.session import guarded, history_owner, signed_in
from studio.page.widgets import later
from studio.serving import history

COLUMNS = 4
OPEN_KEY = "history_open"  # the panel's open state (st.expander's own)


def reuse(picture: Path, names: dict[int, str], offered: list[str], any_lora: bool) -> None:
    """The page filled with the settings inside a saved picture (its run card)."""
    try:
        found = read_png_info(picture.read_bytes())
    except (OSError, InvalidImageError):
        page().notice = ("error", "That picture is no longer in the outputs folder.")
        return
    lora, weight, _ = style_lora(found, offered, any_lora)
    fill({**found.values, **({"lora_weight": weight} if weight is not None else {})}, names, lora)


@st.dialog("A saved run", width="large")
def open_run(run: history.Run, names: dict[int, str], offered: list[str], any_lora: bool) -> None:
    if not signed_in():  # a dialog is a fragment: its reruns do not pass the page's gate
        return
    for picture in run.pictures:
        with Image.open(picture) as image:
            st.image(display.photo(image), caption=picture.name, width="stretch")
            st.code(image.text.get(PARAMETERS_KEY, ""), language=None, wrap_lines=True)
        st.download_button("Download PNG", later(picture.read_bytes()), picture.name, "image/png",
                           key=f"history-download-{picture.name}", on_click="ignore")
    if st.button("Reuse these settings", key="history-reuse", type="primary", on_click=guarded(reuse),
                 args=(run.pictures[0], names, offered, any_lora)):
        st.rerun()


def history_panel(root: Path | None, names: dict[int, str], offered: list[str], any_lora: bool) -> None:
    if root is None:
        st.caption("No history: the outputs folder is turned off (OUTPUTS_DIR is empty).")
        return
    past = history.runs(root, history_owner())
    if not past:
        return
    panel = st.expander(f"History (the latest {len(past)} run{'s' if len(past) > 1 else ''})", key=OPEN_KEY,
                        on_change="rerun")
    if not panel.open:  # closed, it draws nothing: no thumbnail is made or fetched for a panel nobody opened
        return
    with panel:
        columns = st.columns(COLUMNS)
        for i, run in enumerate(past):
            column, picture = columns[i % COLUMNS], run.pictures[0]
            try:
                thumb = history.thumbnail(picture, picture.stat().st_mtime_ns)
            except OSError:  # deleted since the listing
                continue
            column.image(thumb, caption=f"seed {run.seed}", width="stretch")
            if column.button("Open", key=f"history-{run.job}", width="stretch"):
                open_run(run, names, offered, any_lora)
