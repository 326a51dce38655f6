"""What to paint and how fast: the prompts and the speed preset, just above Generate (on a phone too)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.core.presets import CUSTOM, PRESETS, distilled_by
from studio.core.request import GenerationRequest, request_field
from studio.core.settings import Settings
from studio.page.opening import opening_preset
from studio.page.widgets import draw
from studio.serving.jobs import JobQueue


def prompt_panel() -> None:
    draw(st, "prompt")


def preset_speed(jobs: JobQueue, name: str, size: tuple[int, int] | None) -> str:
    """Seconds per image for a preset at the size the page would run, measured here (per step, times its steps)."""
    steps = st.session_state.steps if name == CUSTOM else PRESETS[name].steps
    seconds = jobs.seconds_per_image(name, size, steps) if size is not None else None
    return f"{seconds:.1f} s/image here" if seconds is not None else "not run here yet"


def preset_panel(settings: Settings, jobs: JobQueue, size: tuple[int, int] | None) -> None:
    """The presets, each with its seconds per image measured on this server at the size the page would run."""

    def radio(where: Any, key: str, **options: Any) -> None:
        presets = request_field(key).metadata["choices"]
        at = f" at {size[0]}x{size[1]}" if size is not None else ""
        where.radio("Speed preset", list(presets), key=key, horizontal=True, format_func=presets.get,
                    captions=[preset_speed(jobs, name, size) for name in presets],
                    help=" ".join(f"**{p.label}**: {p.help}" for p in PRESETS.values()) +
                    f" The seconds per image{at} are measured on this server.", **options)

    draw(st, "preset", {"preset": radio})
    note = st.container()  # always there: what follows keeps its place, so a fragment or panel keeps its state
    if st.session_state.preset == opening_preset() != GenerationRequest.preset:
        note.caption(f"This server opened on {PRESETS[opening_preset()].label}" + (
            ": it has no GPU, and a Quality picture takes minutes on a CPU." if settings.start_preset == "auto"
            else " (START_PRESET)."))
    if st.session_state.preset == CUSTOM:
        distilled = distilled_by(CUSTOM, st.session_state.scheduler)
        note.caption("Custom: your own scheduler, steps and CFG" + (
            f", with the {PRESETS[distilled].label} preset's distillation LoRA (its scheduler needs it)."
            if distilled else ", on the base model without a distillation LoRA."))
