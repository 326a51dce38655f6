"""The results: each picture with its seed, edge fidelity, downloads and A1111 settings line; the repainted area;
the objects table; the control image, detections and run card; and input, control and output side by side."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from studio.core import display
from studio.core.control_image import overlay_mask, place_image
from studio.core.detections import draw_detections
from studio.core.downloads import detections_csv, file_name, result_files, zip_of
from studio.core.run_card import a1111_parameters
from studio.page.page_state import page
from studio.page.widgets import later

# Once per new result: a phone stacks the columns, so bring the result to the top of the screen if it is not there.
# A function of its own: the page's scripts share one global scope, where `top` is the window's own (a `const top`
# there is a SyntaxError) and a second result's `const` would be declared twice.
SCROLL_HERE = """<div id="new-result"></div><script>
(() => {
  const here = document.getElementById("new-result");
  const offset = here.getBoundingClientRect().top;
  if (offset < 0 || offset > 0.4 * window.innerHeight) here.scrollIntoView({behavior: "smooth", block: "start"});
})();
</script>"""


def result_downloads(result: Any) -> tuple[dict[str, bytes], bytes]:
    """The run's files and their zip, encoded once per result (not at every rerun: 8 large PNGs and the zip took
    seconds each time a widget moved)."""
    cached = page().downloads
    if cached is None or cached[0] is not result:
        files = result_files(result)
        cached = page().downloads = (result, files, zip_of(files))
    return cached[1], cached[2]


def pictures(result: Any) -> list[bytes]:
    """The result's images as the page shows them (display.py: JPEGs at display size), encoded once per result."""
    cached = page().pictures
    if cached is None or cached[0] is not result:
        cached = page().pictures = (result, [display.photo(image) for image in result.images])
    return cached[1]


def results_panel() -> None:
    notice, page().notice = page().notice, None
    if notice is not None:
        (st.warning if notice[0] == "warning" else st.error)(notice[1])
    result = page().result
    if result is None:
        st.caption("Results appear here.")
        return
    card = result.run_card
    if page().scroll_to_result:
        page().scroll_to_result = False
        st.html(SCROLL_HERE, unsafe_allow_javascript=True)
    st.subheader(f"Results (seed {result.seed})")
    timings = result.timings
    st.caption(f"Finished at {page().result_time}: detection {timings['detect_s']:.2f} s, control image "
               f"{timings['control_s']:.2f} s, denoising {timings['generate_s']:.2f} s.")
    for warning in (w for w in result.warnings if "safety checker" not in w):
        st.warning(warning)
    files, archive = result_downloads(result)
    st.download_button("Download all (zip)", later(archive), file_name("yolo-controlnet", result.seed, card, "zip"),
                       "application/zip", key="download-all", on_click="ignore", type="primary")
    shown = [i for i in range(len(result.images)) if not result.flagged[i]]
    for i in sorted(set(range(len(result.images))) - set(shown)):
        st.info(f"Image {i + 1} (seed {result.seeds[i]}) was flagged by the safety checker, so it is not shown.")
    where = "inside the repainted area" if card["regenerate"]["mode"] != "all" else "whole picture"
    grid = st.columns(2) if len(shown) > 1 else [st.container()]
    for n, i in enumerate(shown):  # several images: a grid of two; each opens full size (its ⤢ button)
        fidelity, column = result.fidelity[i], grid[n % len(grid)]
        column.image(pictures(result)[i], width="stretch",
                     caption=f"seed {result.seeds[i]} · edge fidelity {fidelity['score']:.2f} ({where}; 0: no "
                             f"better than chance, 1: every control edge; F1 {fidelity['f1']:.2f})")
        name = file_name("result", result.seeds[i], card, "png")
        column.download_button("Download PNG", later(files[name]), name, "image/png", key=f"download-{i}",
                               on_click="ignore")
        column.code(a1111_parameters(card, i), language=None, wrap_lines=True)
    if card["regenerate"]["mode"] != "all" and card["steps_done"] > 0:  # strength 0 repaints nothing: no caption
        regenerated = card["regenerate"]
        st.image(display.photo(overlay_mask(result.images[0], result.mask)), width="stretch",
                 caption=f"Repainted ({regenerated['repainted_share']:.0%} of the picture, tinted red, from "
                         f"{regenerated['mask_source']} masks); the rest is the input, pixel for pixel")
    if card["objects"]:
        objects_table(card["objects"])
    with st.expander("Control image, detections and run card"):
        left, right = st.columns(2)
        left.image(display.edges(result.control_image), caption="Control image", output_format="PNG")
        name = file_name("control", result.seed, card, "png")
        left.download_button("Download control image", later(files[name]), name, "image/png", on_click="ignore")
        right.image(display.photo(draw_detections(page().input_image, result.detections)), caption="Detections")
        st.dataframe([d.as_row() for d in result.detections], hide_index=True)
        left, right = st.columns(2)
        left.download_button("Detections (CSV)", later(detections_csv(result.detections)),
                             file_name("detections", result.seed, card, "csv"), "text/csv", on_click="ignore")
        right.download_button("Run card (JSON)", later(json.dumps(card, indent=2)),
                              file_name("run_card", result.seed, card, "json"), "application/json", on_click="ignore")


def objects_table(entries: list[dict]) -> None:
    """Each repainted object: its prompt, where and at what size it was sampled, and how visible its seam is."""
    st.dataframe([{"image": e["image"] + 1, "object": f"#{e['id']} {e['class']}", "prompt": e["prompt"],
                   "sampled at": "x".join(map(str, e["working_size"])), "strength": e["strength"],
                   "seam (ΔE00)": e["seam"]} for e in entries], hide_index=True)
    st.caption("Seam: the colour step along each mask's border against the photo's, in CIEDE2000 (2 or less is hard "
               "to see). The zip holds each detail crop as it was sampled, and its mask.")


def side_by_side_panel() -> None:
    """The input as it was placed (the same crop or fill as the control image), the control image and the first
    output, at the same size in one row."""
    result = page().result
    if result is None or not result.images:
        return
    st.subheader("Side by side")
    size = result.images[0].size
    placed, _ = place_image(page().input_image, size, result.run_card["request"]["resize_mode"])
    shown = (display.photo(placed), display.edges(result.control_image.resize(size)), pictures(result)[0])
    for column, image, caption, kind in zip(st.columns(3), shown, ("Input", "Control image",
                                            f"Output (seed {result.seeds[0]})"), ("JPEG", "PNG", "JPEG")):
        column.image(image, caption=caption, width="stretch", output_format=kind)  # else a PNG becomes a JPEG
