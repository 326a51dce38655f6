"""The settings beside the control image: generation (steps, CFG, scheduler, seed, size, ControlNet), the style
LoRA and detection, drawn from the form table (form.py); here only the widgets the page draws its own way."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.core.request import MAX_PROMPT_CHARS, request_field
from studio.core.settings import Settings
from studio.engine.loras import offered as offered_loras
from studio.page.form import guided
from studio.page.page_state import page
from studio.page.rules import last_seed, new_seed
from studio.page.session import guarded
from studio.page.widgets import draw


def seed_toggle(where: Any, key: str, **options: Any) -> None:
    where.toggle("Random seed", key=key, **options)


def seed_row(where: Any, key: str, **options: Any) -> None:
    seed, dice, recycle = where.columns([3, 1, 1], vertical_alignment="bottom")
    seed.number_input("Seed", *request_field("seed").metadata["limits"], key=key,
                      disabled=st.session_state.randomize_seed,
                      help="With a random seed, this shows the seed the last run used.")
    dice.button("🎲 New", key="new_seed", on_click=guarded(new_seed), help="A new random seed, kept for the next runs")
    recycle.button("♻️ Last", key="last_seed", on_click=guarded(last_seed), disabled=page().result is None,
                   help="The seed of the last result")


def size_toggle(where: Any, key: str, **options: Any) -> None:
    where.toggle("Set width and height", key=key, **options)


def control_range(where: Any, key: str, **options: Any) -> None:
    where.slider("Control start / end", *request_field("control_start").metadata["limits"], step=0.05, key=key,
                 **options)


def generation_panel(settings: Settings) -> None:
    with st.expander("Generation settings"):
        draw(st, "generation", {"seed_toggle": seed_toggle, "seed_row": seed_row, "size_toggle": size_toggle,
                                "control_range": control_range})
        if not guided(st.session_state):
            st.caption("At a CFG of 1 or less (this preset's) the negative prompt and guess mode have nothing to act "
                       "on: there is no unconditional pass for them to steer.")
    with st.expander("Style LoRA"):
        draw(st, "lora", {"lora": lambda where, key, **options: lora_choice(where, key, settings)})


def lora_choice(where: Any, key: str, settings: Settings) -> None:
    """A Hub id or file where the server allows any; else the LoRAs it offers."""
    if settings.allow_any_lora:
        where.text_input("Hub id or local .safetensors file (empty: none)", key=key)
        return
    choices = ["", *offered_loras(settings)]
    if st.session_state[key] not in choices:
        st.session_state[key] = ""
    where.selectbox("Style LoRA", choices, key=key, format_func=lambda name: name or "None", disabled=len(choices) == 1,
                    help=None if len(choices) > 1 else "None offered on this server (LORA_DIR, LORA_HUB_IDS).")


def detection_panel(class_names: list[str]) -> None:
    """The detector's thresholds and classes, and "Find by name" (the detector's own classes are offered also
    while finding by name)."""

    def classes(where: Any, key: str, **options: Any) -> None:
        where.multiselect(request_field(key).metadata["label"], class_names, key=key, **options)

    def find(where: Any, key: str, **options: Any) -> None:
        meta = request_field(key).metadata
        where.text_input(meta["label"], key=key, help=meta["help"], max_chars=MAX_PROMPT_CHARS,
                         placeholder="e.g. the wooden door, logo (empty: the detector's classes)", **options)

    with st.expander("Detection"):
        draw(st, "detection", {"detect_classes": classes, "find": find})
