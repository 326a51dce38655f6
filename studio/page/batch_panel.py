"""A batch from the page: several photos or a zip, the page's prompt and settings, one job each (seeds `seed`,
`seed + 1`, …), a line "7 of 20", and one zip at the end (serving/batch_jobs.py runs it)."""

from __future__ import annotations

import streamlit as st

from studio.core.request import GenerationRequest
from studio.page.page_state import page
from studio.page.session import guarded, signed_in, visitor
from studio.page.widgets import later
from studio.serving import state
from studio.serving.batch_jobs import BatchError, BatchRun, photos_of
from studio.serving.jobs import JobQueue

POLL_S = 1.0


def start(jobs: JobQueue, request: GenerationRequest, max_upload_mb: int) -> None:
    uploads = st.session_state.get(f"batch-{page().batch_key}") or []
    try:
        photos = photos_of([(upload.name, upload.getvalue()) for upload in uploads], max_upload_mb * 2**20)
    except BatchError as exc:
        page().batch_problem = str(exc)
        return
    page().batch_problem = None
    page().batch_key += 1  # the photos are the batch's now: an empty uploader for the next one
    state.start_batch(BatchRun(jobs, photos, request, visitor()))


@st.fragment(run_every=POLL_S)
def batch_progress() -> None:
    """The batch on its way: "n of total", the running photo's step, and Cancel. Reruns the page once it ended."""
    if not signed_in():
        return
    run = state.batch(visitor())
    if run is None or not run.active:
        st.rerun()
    run.touch()
    job = run.job
    step = f", photo {run.handled + 1}: step {job.step} of {job.total}" if job is not None and job.step else ""
    st.progress(run.handled / run.total, text=f"{run.handled} of {run.total}{step}")
    st.button("Cancel the batch", key="batch-cancel", on_click=guarded(run.cancel))


def finished(run: BatchRun) -> None:
    ended = "Cancelled" if run.state == "cancelled" else "Done"
    st.success(f"{ended}: {run.done} of {run.total} photos made" + (f", {len(run.failed)} could not be used."
                                                                      if run.failed else "."))
    for line in run.failed:
        st.caption(line)
    if run.done:
        st.download_button("Download the batch (zip)", later(run.archive or b""), f"batch-{run.id}.zip",
                           "application/zip", key=f"batch-zip-{run.id}", on_click="ignore", type="primary")


def batch_panel(jobs: JobQueue, request: GenerationRequest | None, problem: str | None, max_upload_mb: int) -> None:
    with st.expander("Many photos at once (batch)"):
        uploads = st.file_uploader("Photos, or a zip of photos: each gets the prompt and settings above",
                                   accept_multiple_files=True, key=f"batch-{page().batch_key}")
        run = state.batch(visitor())
        if run is not None and run.active:
            batch_progress()
            return
        if run is not None:
            run.touch()  # its zip is kept while its page shows it
            finished(run)
        if page().batch_problem:
            st.error(page().batch_problem)
        st.button("Start the batch", key="batch-start", disabled=not uploads or request is None, help=problem,
                  on_click=guarded(start), args=(jobs, request, max_upload_mb))
        st.caption("The photos' runs wait their turn in the queue, one at a time; each is also saved in the "
                   "outputs folder.")
