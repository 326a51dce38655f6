"""The page filled from a run's settings (a PNG's, a saved run's): each request field into the widget keyed by its
name, and the fields the page shows its own way converted to those widgets."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.core.detections import names_to_find

# Widgets are keyed by GenerationRequest's field names; these fields have widgets of the page's own (a random-seed
# toggle, a width/height switch, one start/end slider, class names instead of ids, one checkbox and prompt per
# detected object).
PAGE_CONVERTED = ("seed", "width", "height", "control_start", "control_end", "lora", "control_source",
                  "control_classes", "detect_classes", "objects", "object_prompts", "object_negative_prompts")
PICK, OBJECT_PROMPT = "pick-", "object-prompt-"  # the objects list's widgets: a checkbox and a prompt per object id


def fill(values: dict[str, Any], names: dict[int, str], lora: str | None) -> None:
    """Put request field `values` into the widgets; fields left out keep their widgets as they are. `lora` is the
    style LoRA as this server offers it (None: none). Runs in a callback, before the page is drawn again."""
    state = st.session_state
    for key, value in values.items():
        if key not in PAGE_CONVERTED and key in state:
            state[key] = value
    if values.get("seed") is not None:
        state.seed, state.randomize_seed = values["seed"], False
    state.control_range = (values.get("control_start", state.control_range[0]),
                           values.get("control_end", state.control_range[1]))
    if "width" in values:
        state.set_size = values["width"] is not None
        if state.set_size:
            state.width, state.height = values["width"], values["height"]
    if "control_source" in values:
        state.own_control = values["control_source"] == "edge_map"
    found_by_name = dict(enumerate(names_to_find(values.get("find") or "")))
    for key, classes in (("detect_classes", names), ("control_classes", found_by_name or names)):
        if key in values:  # with "Find by name", chosen classes are its names
            state[key] = [classes[i] for i in values[key] or () if i in classes]
    state.lora = lora or ""
    if "objects" in values:  # object ids name the detections of the photo on the page, as they did of its photo
        picked = set(values["objects"] or ())
        for key in [key for key in state if isinstance(key, str) and key.startswith(PICK)]:
            state[key] = False
        for object_id in picked:
            state[f"{PICK}{object_id}"] = True
    for object_id, text in (values.get("object_prompts") or {}).items():
        state[f"{OBJECT_PROMPT}{object_id}"] = text
