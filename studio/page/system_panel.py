"""The sidebar: the device, the queue, the attention backend and why, the fast path, the models and versions."""

from __future__ import annotations

import streamlit as st

from studio.core.run_card import public_source
from studio.page.session import signed_in
from studio.serving import state
from studio.serving.jobs import JobQueue


def busy(jobs: JobQueue) -> bool:
    return jobs.running + jobs.waiting > 0


def queue_line(jobs: JobQueue) -> None:
    """The queue as it is now: a fragment of its own, so the line follows the jobs without rerunning the page.
    It polls every QUEUE_POLL_S while the server has work and every QUEUE_IDLE_POLL_S while it has none (each poll
    sends every widget's state up the tunnel: an idle tab would otherwise cost a megabyte an hour)."""
    now_busy = busy(jobs)
    every = state.setting("queue_poll_s" if now_busy else "queue_idle_poll_s")
    st.fragment(queue_line_now, run_every=every)(jobs, now_busy)


def queue_line_now(jobs: JobQueue, was_busy: bool) -> None:
    if not signed_in():
        return
    if busy(jobs) != was_busy:
        st.rerun()  # the page once more, which sets the line's pace for the queue as it is now
    st.markdown(f"**Queue:** {jobs.running} running, {jobs.waiting} waiting, {len(jobs.workers)} "
                f"worker{'s' if len(jobs.workers) > 1 else ''}")


def system_panel(jobs: JobQueue) -> None:
    pipe = jobs.pipelines[0]
    with st.sidebar:
        st.header("System")
        for device in jobs.devices():
            st.markdown(f"**Device:** {device}, {str(pipe.dtype).removeprefix('torch.')}")
        queue_line(jobs)
        if pipe.settings.models == "tiny":
            st.warning("Offline smoke models: random weights, so the pictures are noise, and the smoke detector "
                       "knows only circles, squares and triangles (on a real photo it sees shapes, not objects). "
                       "Set MODELS=sd15 for the real models.")
        st.markdown(f"**Attention:** `{pipe.attention_in_use}`. {pipe.attention.why}")
        if pipe.attention_fallback:
            st.warning(pipe.attention_fallback)
        st.markdown(f"**Fast path:** {pipe.fast_path}")
        with st.expander("Attention backends"):
            st.dataframe([{"backend": c.name, "usable": c.usable, "version": c.version, "reason": c.reason}
                          for c in pipe.attention.candidates], hide_index=True)
        with st.expander("Models and versions"):
            st.json({"models": {key: public_source(source) for key, source in pipe.model_ids.items()},
                     "versions": pipe.versions, "environment": pipe.attention.environment})
