"""The photo beside its control image (and the repaint mask, the detections, the detail crops) above the settings
that shape them: what keeps its structure, what is repainted, the objects one by one, and Canny."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.core import display
from studio.core.control_image import mask_share, outline_mask, overlay_mask
from studio.core.detections import Detection, draw_detections
from studio.core.errors import InvalidRequestError
from studio.core.preparation import ControlPreview
from studio.core.request import MAX_PROMPT_CHARS, request_field
from studio.page.form import OBJECT_PROMPT, PICK, Context, object_key, request_of
from studio.page.opening import remember
from studio.page.page_state import page
from studio.page.session import signed_in
from studio.page.widgets import draw
from studio.serving.previews import Previews


@st.fragment
def control_panel(previews: Previews, image: Any, key: str | None, names: dict[int, str]) -> None:
    """The control image above its own settings. A fragment: moving a slider here rebuilds only the control
    image (from cached detections), not the page."""
    if not signed_in():
        return
    preview_slot = st.container()
    draw(st, "control")
    try:
        request, problem = request_of(st.session_state, Context(names, key)), None
    except InvalidRequestError as exc:
        request, problem = None, str(exc)
    detections = previews.detections(image, key, request) if image is not None and request is not None else []
    page().detected_labels = sorted({d.label for d in detections})
    with st.container():  # always there, so the panels below keep their places (and their open or folded state)
        if image is not None:
            objects_panel(image, detections)
    with st.expander("Repaint and detail pass (ADetailer)"):
        draw(st, "repaint")
    control_settings()
    remember()  # every page run runs this panel too: the one place a run saves the settings
    with preview_slot:
        if image is None:
            st.info("Upload a photo (or pick a sample) to see its control image here.")
            return
        try:
            if request is None:
                raise InvalidRequestError(problem)
            preview = previews.preview(image, key, request)
        except InvalidRequestError as exc:
            st.error(str(exc))
            return
        control_preview(preview, image, detections, request.objects)


def control_preview(preview: ControlPreview, image: Any, detections: list[Detection], picked: Any) -> None:
    """The photo as it will be placed beside the control image Generate will use (with the mask it will repaint,
    tinted), the detections, and the detail crops."""
    control_tab, detections_tab = st.tabs(["Control image", f"Detections ({len(detections)})"])
    width, height = preview.size
    row = control_tab.container(horizontal=True, wrap=False)  # side by side on a phone too: half the height
    row.image(display.photo(preview.picture), width="stretch", caption="Your photo, as it is placed")
    if preview.mask is not None:
        row.image(display.photo(overlay_mask(preview.control_image, preview.mask)), width="stretch",
                             caption=f"Control image preview, {width}x{height}; tinted red: what will be repainted "
                                     f"({mask_share(preview.mask):.0%} of the picture)")
    else:
        row.image(display.edges(preview.control_image), width="stretch", output_format="PNG",
                             caption=f"Control image preview, {width}x{height}")
    detections_tab.image(display.photo(draw_detections(image, detections, picked)),
                         caption=f"{len(detections)} detections", width="stretch")
    for warning in preview.warnings:
        st.warning(warning)
    detail_crops(preview)


def control_settings() -> None:
    """Which classes guide the control image and how, and the Canny thresholds: folded away (phones)."""

    def classes(where: Any, key: str, **options: Any) -> None:
        offered = sorted(set(page().detected_labels) | set(st.session_state[key]))
        where.multiselect(request_field(key).metadata["label"], offered, key=key, **options)

    def own_control(where: Any, key: str, **options: Any) -> None:
        where.toggle("My upload is already an edge map (no Canny)", key=key, **options)

    with st.expander("Control image settings"):
        draw(st, "control settings", {"control_classes": classes, "own_control": own_control})


def detail_crops(preview: ControlPreview) -> None:
    """Each detail pass's crop at the size it will be sampled, its mask outlined: what the run will repaint."""
    passes = [p for p in preview.passes if not p.whole]
    if not passes:
        return
    st.caption("Detail crops, each at the size it is sampled (red: its mask)")
    for column, plan in zip(st.columns(min(len(passes), 4)) * ((len(passes) + 3) // 4), passes):
        det = plan.objects[0]
        column.image(display.photo(outline_mask(plan.crop(preview.picture), plan.working_mask()), 256), width="stretch",
                     caption=f"#{det.id} {det.label} · {plan.size[0]}x{plan.size[1]}")


def objects_panel(image: Any, detections: list[Detection]) -> None:
    """The detected objects one by one: a crop, a checkbox and an optional prompt each. None ticked: every object
    of the chosen classes."""
    if not detections:
        return
    with st.expander(f"Objects ({len(detections)}): pick them one by one, each with its own prompt"):
        st.caption("None ticked: every object of the chosen classes. A ticked object is highlighted in the "
                   "detections.")
        draw(st, "objects")
        tag = page().objects_of
        for det in detections:
            thumb, fields_column = st.columns([1, 4], vertical_alignment="center")
            crop = image.crop(tuple(int(round(v)) for v in det.box))
            crop.thumbnail((64, 64))
            thumb.image(display.photo(crop))
            fields_column.checkbox(f"#{det.id} {det.label} {det.confidence:.2f}", key=object_key(PICK, tag, det.id))
            fields_column.text_input(f"Prompt of #{det.id}", key=object_key(OBJECT_PROMPT, tag, det.id),
                                     max_chars=MAX_PROMPT_CHARS, placeholder="its own prompt (empty: the main prompt)",
                                     label_visibility="collapsed")
