"""The page's own bookkeeping, typed and under one session key: what it keeps between runs besides the widgets'
values (those are keyed by FORM, form.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st

PAGE_KEY = "page"


@dataclass
class PageState:
    job: Any = None  # this visitor's run (jobs.Job), while the page has not collected it
    attached: bool = False  # looked for this visitor's run on its way (a reload, a new tab) and restored settings
    result: Any = None  # the last run's GenerationResult
    input_image: Any = None  # the photo it ran on
    result_time: str = ""
    scroll_to_result: bool = False  # once per new result (a phone stacks the columns)
    notice: tuple[str, str] | None = None  # ("warning" or "error", text), shown once
    downloads: tuple[Any, dict[str, bytes], bytes] | None = None  # (result, its files, their zip)
    pictures: tuple[Any, list[bytes]] | None = None  # (result, its images as the page shows them)
    pending_example: str | None = None  # an example that waits for "replace my settings?"
    filled_from: dict[str, Any] | None = None  # the settings as the page opened or an example filled them
    upload_key: int = 0  # a new key: a new, empty uploader
    photo: str | None = None  # the key of the photo on the page (previews.py)
    objects_of: str | None = None  # whose objects the object widgets name now (form.objects_tag)
    detected_labels: list[str] = field(default_factory=list)
    batch_key: int = 0  # as upload_key, for the batch's uploader
    batch_problem: str | None = None
    png_info: tuple[str, Any] | None = None  # (the PNG Info upload's id, what it says): read once per upload


def page() -> PageState:
    return st.session_state.setdefault(PAGE_KEY, PageState())
