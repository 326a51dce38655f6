"""Widgets drawn from the form table (form.py) and GenerationRequest's field metadata (label, range, step, help
written once), and downloads that cost nothing until pressed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import streamlit as st

from studio.core.request import MAX_PROMPT_CHARS, request_field
from studio.page import rules
from studio.page.form import FORM, Widget
from studio.page.session import guarded


MARKDOWN = set("\\`*_{}[]()<>#+-.!|~:$")


def plain(text: str) -> str:
    """Text a visitor or a file chose (a file name, a PNG's words), shown inside Markdown as typed: no links,
    images or emphasis of its own."""
    return "".join(f"\\{char}" if char in MARKDOWN else char for char in text)


def draw(where: Any, panel: str, own: Mapping[str, Callable[..., Any]] | None = None) -> None:
    """The panel's widgets in FORM's order, a widget and those `beside` it in one row of columns. `own` draws the
    page's own widgets (FORM's `draw` names them) as `own[name](where, disabled=…, on_change=…)`."""
    rows: list[list[Widget]] = []
    for widget in (w for w in FORM if w.panel == panel):
        if widget.beside and rows:
            rows[-1].append(widget)
        else:
            rows.append([widget])
    drawers = {**BUILT_IN, **(own or {})}
    for row in rows:
        columns = where.columns(len(row)) if len(row) > 1 else [where]
        for column, widget in zip(columns, row):
            options = {"disabled": widget.enabled is not None and not widget.enabled(st.session_state)}
            if widget.on_change is not None:
                options["on_change"] = guarded(getattr(rules, widget.on_change))
            (drawers[widget.draw] if widget.draw else field_widget)(column, widget.key, **options)


def field_widget(where: Any, name: str, **kwargs: Any) -> Any:
    """A request field's widget, of the kind its metadata says: a checkbox, a selectbox, a slider, a number or
    a line of text."""
    meta = request_field(name).metadata
    if meta["kind"] == "switch":
        return switch(where, name, **kwargs)
    if meta.get("choices"):
        return choice(where, name, **kwargs)
    if meta.get("limits"):
        return slider(where, name, **kwargs)
    return where.text_input(meta["label"], key=name, max_chars=MAX_PROMPT_CHARS, help=meta["help"], **kwargs)


def number(where: Any, name: str, **kwargs: Any) -> Any:
    """A whole number that may be left empty (None: no limit)."""
    meta = request_field(name).metadata
    return where.number_input(meta["label"], *(int(v) for v in meta["limits"]), key=name, placeholder="all",
                              help=meta["help"], **kwargs)


def text_area(where: Any, name: str, **kwargs: Any) -> Any:
    meta = request_field(name).metadata
    return where.text_area(meta["label"], key=name, height=80, max_chars=MAX_PROMPT_CHARS, help=meta["help"],
                           **kwargs)


def slider(where: Any, name: str, **kwargs: Any) -> Any:
    """A slider for a request field: its label, range, step and help from the field's metadata."""
    meta = request_field(name).metadata
    (low, high), step = meta["limits"], meta["step"]
    if meta["kind"] == "whole":
        low, high, step = int(low), int(high), int(step)
    return where.slider(meta["label"], low, high, step=step, key=name, help=meta["help"], **kwargs)


def choice(where: Any, name: str, **kwargs: Any) -> Any:
    """A selectbox over a request field's choices, labelled as the field's metadata says."""
    meta = request_field(name).metadata
    return where.selectbox(meta["label"], list(meta["choices"]), format_func=meta["choices"].get, key=name,
                           help=meta["help"], **kwargs)


def switch(where: Any, name: str, **kwargs: Any) -> Any:
    meta = request_field(name).metadata
    return where.checkbox(meta["label"], key=name, help=meta["help"], **kwargs)


def later(data: bytes | str) -> Callable[[], bytes | str]:
    """A download's data, handed over only when the button is pressed: given the bytes themselves, Streamlit sends
    every file to the browser with the page (a result's PNG and zip cost 1.6 MB of a metered tunnel per run)."""
    return lambda: data


BUILT_IN: dict[str, Callable[..., Any]] = {"number": number, "text_area": text_area}
