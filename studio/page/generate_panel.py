"""Generate, the run on its way (place in the queue, stage, progress, live preview, Cancel), and its end: the
results, or why it stopped."""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from studio.core import display
from studio.core.errors import EXPECTED_ERRORS, InvalidRequestError
from studio.core.preparation import ControlPreview
from studio.core.request import GenerationRequest
from studio.page.form import Context, request_of
from studio.page.opening import remember
from studio.page.page_state import page
from studio.page.session import guarded, signed_in, visitor
from studio.serving.jobs import CANCELLED, DONE, QUEUED, JobQueue
from studio.serving.previews import Previews

POLL_S = 0.5  # the job view, only while this visitor's run is on its way
STAGES = {"fetch": "Fetching the style LoRA", "detect": "Detecting objects", "control": "Building the control image",
          "generate": "Denoising"}


def page_request(previews: Previews, image: Any, key: str | None, names: dict[int, str]
                 ) -> tuple[GenerationRequest | None, ControlPreview | None, str | None]:
    """The request the widgets describe, the preview Generate hands to its job, and why it cannot run (shown
    beside the button) when it cannot."""
    try:
        request = request_of(st.session_state, Context(names, key))
    except InvalidRequestError as exc:
        return None, None, str(exc)
    if image is None:
        return request, None, None
    try:
        return request, previews.preview(image, key, request), None
    except InvalidRequestError as exc:
        return request, None, str(exc)


@st.fragment
def generate_panel(jobs: JobQueue, previews: Previews, image: Any, key: str | None, names: dict[int, str]) -> None:
    """Generate, disabled with the reason beside it while the request cannot run; a request that still fails
    when it is submitted says why in place. A fragment: pressing Generate reruns this panel, not the page (every
    rerun of the page costs the tunnel tens of KB); the page reruns once, when the run has ended. The request is
    read from the widgets here, at the press: the control panel's own fragment may have changed them since."""
    if not signed_in():
        return
    request, preview, problem = page_request(previews, image, key, names)
    mine_active = page().job is not None and page().job.active
    if st.button("Generate", type="primary", width="stretch", disabled=preview is None or mine_active,
                 help="Your run is on its way; cancel it or wait for it." if mine_active else None):
        try:
            page().job = jobs.submit(image, request, owner=visitor(), preview=preview)
            page().notice = None
            remember()
        except EXPECTED_ERRORS as exc:
            problem = str(exc)
    if problem is not None:
        st.error(problem)
    if page().job is not None and page().job.active:
        job_view(jobs)


@st.fragment(run_every=POLL_S)
def job_view(jobs: JobQueue) -> None:
    """The running job: place in the queue, stage, progress, Cancel and the live preview. Polls itself; once the
    job has ended it reruns the page so that the results (or the reason) appear."""
    if not signed_in():
        return
    job = page().job
    if job is None or not job.active:
        st.rerun()
    job.touch()
    if job.stage == "fetch":  # its style LoRA comes from the Hub first; then it joins the queue
        st.progress(0.0, text=STAGES["fetch"] + "…")
    elif job.state == QUEUED:
        position, eta = jobs.position(job), jobs.eta_s(job)
        if position is not None:
            wait = f"; it starts in about {eta:.0f} s" if eta is not None else ""
            st.info(f"Waiting for its turn: your run is number {position} in the queue{wait}.")
    elif job.stage == "generate":
        st.progress(min(job.step / max(job.total, 1), 1.0), text=f"Denoising step {job.step} of {job.total}")
    else:
        st.progress(0.0, text=STAGES.get(job.stage or "detect", "Starting") + "…")
    st.button("Cancel", key="cancel", on_click=guarded(jobs.cancel), args=(job,), help="Stops after the current step.")
    if job.stage == "generate" and job.preview is not None:  # below Cancel: a preview loading never moves the button
        st.image(display.photo(job.preview, display.PREVIEW_SIDE, quality=70), width=256,
                 caption=f"Live preview after step {job.preview_step}")


def collect_finished_job() -> None:
    """Move this session's ended job into the page's state: its results (the history reads the outputs folder),
    or a one-time notice."""
    job = page().job
    if job is None or job.active:
        return
    page().job = None
    if job.state == DONE:
        result = job.result
        page().result, page().input_image = result, job.image
        st.session_state.seed = result.seed  # the seed field shows the seed actually used
        page().scroll_to_result = True
        page().result_time = time.strftime("%H:%M:%S", time.localtime(job.finished))
    elif job.state == CANCELLED:
        steps = job.result.run_card["steps_done"] if job.result else 0
        page().notice = ("warning", f"Cancelled after step {steps}." if steps else "Cancelled before it started.")
    else:
        page().notice = ("error", job.message)
