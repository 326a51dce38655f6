"""What one widget does to others (the callbacks FORM names). The values come from GenerationRequest, which owns
the rules: a preset's scheduler, steps and CFG, and a detail pass's strength and colour correction."""

from __future__ import annotations

import random

import streamlit as st

from studio.core.errors import InvalidRequestError
from studio.core.presets import CUSTOM, PRESETS
from studio.core.request import SEED_MAX, GenerationRequest
from studio.page.form import OBJECT_PROMPT, PICK, Context, object_widgets
from studio.page.page_state import page

PRESET_FIELDS = ("scheduler", "steps", "guidance_scale")


def use_preset() -> None:
    """A preset sets scheduler, steps and CFG; Custom keeps what is set. A value only a modified client sends is
    left to the request's validation, which says what is wrong."""
    state = st.session_state
    if state.preset == CUSTOM or state.preset not in PRESETS:
        return
    filled = GenerationRequest(preset=state.preset)
    for name in PRESET_FIELDS:
        state[name] = getattr(filled, name)


def leave_preset() -> None:
    """Scheduler, steps or CFG changed by hand: the run is no longer the preset's, so the radio says Custom (a
    Fast run at UniPC and CFG 7.5 would otherwise still fuse the TCD LoRA)."""
    state = st.session_state
    if state.preset not in PRESETS or state.preset == CUSTOM:
        return
    filled = GenerationRequest(preset=state.preset)
    if any(state[name] != getattr(filled, name) for name in PRESET_FIELDS):
        state.preset = CUSTOM


def use_mode_defaults() -> None:
    """The request's strength and colour correction for the chosen mode (a detail pass restyles: 0.4, colours
    kept; the other repaints start from noise)."""
    state = st.session_state
    try:
        filled = GenerationRequest(regenerate=state.regenerate, detail_output=state.detail_output)
    except InvalidRequestError:  # a detail pass of the output asked while repainting part: the request refuses it
        filled = GenerationRequest(regenerate=state.regenerate)
    state.strength, state.color_match = filled.strength, filled.color_match


def show_photo(key: str | None, names: dict[int, str]) -> None:
    """The photo on the page now, and what the widgets refer to. Object ids name the objects of one photo found by
    one list of names: another photo or other names start with none picked and no object prompts (the old ones'
    widgets are dropped; the new ones have keys of their own, form.objects_tag)."""
    page().photo = key
    context = Context(names, key)
    tag = context.objects(st.session_state["find"])
    if page().objects_of != tag:
        for prefix in (PICK, OBJECT_PROMPT):
            for _, widget in object_widgets(st.session_state, prefix):
                if not widget.startswith(f"{prefix}{tag}-"):
                    del st.session_state[widget]
        page().objects_of = tag


def new_seed() -> None:
    st.session_state.seed, st.session_state.randomize_seed = random.randint(0, SEED_MAX), False


def last_seed() -> None:
    st.session_state.seed, st.session_state.randomize_seed = page().result.seed, False
