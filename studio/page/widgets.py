"""Widgets derived from GenerationRequest's field metadata (label, range, step, help written once), and
downloads that cost nothing until pressed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from studio.core.request import request_field


MARKDOWN = set("\\`*_{}[]()<>#+-.!|~:$")


def plain(text: str) -> str:
    """Text a visitor or a file chose (a file name, a PNG's words), shown inside Markdown as typed: no links,
    images or emphasis of its own."""
    return "".join(f"\\{char}" if char in MARKDOWN else char for char in text)


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
