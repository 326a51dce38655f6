"""The photo: an upload, the camera or a sample."""

from __future__ import annotations

from typing import Any

import streamlit as st

from studio.core.errors import InvalidImageError
from studio.page.page_state import page
from studio.page.samples import SAMPLES
from studio.page.session import visitor
from studio.page.widgets import plain
from studio.serving.previews import Previews


def photo_panel(previews: Previews, max_upload_mb: int) -> tuple[Any, str] | tuple[None, None]:
    """The photo and the key that names it in the caches; (None, None) when there is none to use. Any file is
    taken and checked here, so that a refusal says why in a message (the uploader's own type filter shows only a
    red mark whose reason is hover text), and Generate waits for another photo instead of painting the sample."""
    upload = st.file_uploader(f"Photo (PNG, JPEG, WebP or GIF, up to {max_upload_mb} MB)",
                              key=f"upload-{page().upload_key}")
    st.toggle("Use the camera", key="use_camera")
    photo = st.camera_input("Take a photo") if st.session_state.use_camera else None
    try:
        if upload is not None and upload.size > max_upload_mb * 2**20:
            raise InvalidImageError(f"It is {upload.size / 2**20:.1f} MB, and this server takes photos up to "
                                    f"{max_upload_mb} MB (MAX_UPLOAD_MB).")
        if upload is not None:
            return previews.image(upload.getvalue(), visitor())
        if photo is not None:
            return previews.image(photo.getvalue(), visitor())
        sample = st.selectbox("…or a sample image", list(SAMPLES), key="sample")
        return previews.image(SAMPLES[sample])
    except InvalidImageError as exc:
        name = f"'{plain(upload.name[:80])}'" if upload is not None else "The photo"
        st.error(f"{name} cannot be used: {exc} Upload another one, or remove it (×) to use a sample.")
        return None, None
