"""Colour in CIELAB: the CIEDE2000 difference, the seam score of a repaint and the colour correction that keeps
a repainted region in the photo's colours (A1111's "colour correction", on the region's Lab statistics).

Pure numpy/OpenCV. Lab here is CIELAB for sRGB under D65, L in 0..100 (OpenCV's float conversion).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

SEAM_BAND_PX = 8  # the seam is measured over this many pixels on each side of the mask's border


def to_lab(image: Image.Image) -> np.ndarray:
    """HxWx3 float32 CIELAB of an RGB picture."""
    return cv2.cvtColor(np.asarray(image.convert("RGB"), np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def from_lab(lab: np.ndarray) -> Image.Image:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)
    return Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8))


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """The CIEDE2000 colour difference (Sharma, Wu and Dalal 2005) of Lab colours, on the last axis; 1 is about
    the smallest difference a person notices side by side."""
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    mean_c = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(mean_c**7 / (mean_c**7 + 25.0**7)))
    a1p, a2p = a1 * (1 + g), a2 * (1 + g)
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dlp, dcp = L2 - L1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dhp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    mean_l, mean_cp = (L1 + L2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    mean_hp = np.where(np.abs(h1p - h2p) > 180, np.where(hsum < 360, hsum + 360, hsum - 360), hsum) / 2
    mean_hp = np.where(c1p * c2p == 0, hsum, mean_hp)
    t = (1 - 0.17 * np.cos(np.radians(mean_hp - 30)) + 0.24 * np.cos(np.radians(2 * mean_hp))
         + 0.32 * np.cos(np.radians(3 * mean_hp + 6)) - 0.20 * np.cos(np.radians(4 * mean_hp - 63)))
    d_theta = 30 * np.exp(-(((mean_hp - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(mean_cp**7 / (mean_cp**7 + 25.0**7))
    s_l = 1 + 0.015 * (mean_l - 50) ** 2 / np.sqrt(20 + (mean_l - 50) ** 2)
    s_c, s_h = 1 + 0.045 * mean_cp, 1 + 0.015 * mean_cp * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((dlp / s_l) ** 2 + (dcp / s_c) ** 2 + (dhp / s_h) ** 2 + r_t * (dcp / s_c) * (dhp / s_h))


def seam_score(result: Image.Image, original: Image.Image, mask: Image.Image, band: int = SEAM_BAND_PX) -> float:
    """How visible a repaint's border is: the two sides of the mask's border (`band` px each) compared in the
    result, against how they compared in the original. CIEDE2000 between the mean colour of the result's inner
    band and what it would be had the repaint kept the original's step across the border. 0: no seam; 2 or less
    is hard to see; a colour cast or a brightness step scores 5 and more. 0.0 when the mask has no inside or
    no outside."""
    inside = np.asarray(mask.convert("L")) >= 128
    if inside.all() or not inside.any():
        return 0.0
    # only the mask's surroundings are read: a small object costs little
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    top, left = max(0, rows[0] - band - 1), max(0, cols[0] - band - 1)
    bottom, right = rows[-1] + band + 2, cols[-1] + band + 2
    inside = inside[top:bottom, left:right]
    inner = inside & (cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5) <= band)
    outer = ~inside & (cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5) <= band)
    if not outer.any():
        return 0.0
    box = (int(left), int(top), int(left + inside.shape[1]), int(top + inside.shape[0]))
    band = inner | outer  # only the bands' pixels are converted to Lab: the whole box cost 30 ms a picture
    made, photo = (_band_lab(np.asarray(image.crop(box).convert("RGB"))[band]) for image in (result, original))
    inner, outer = inner[band], outer[band]
    kept_step = photo[inner].mean(axis=0) + (made[outer].mean(axis=0) - photo[outer].mean(axis=0))
    return round(float(ciede2000(made[inner].mean(axis=0), kept_step)), 3)


def _band_lab(pixels: np.ndarray) -> np.ndarray:
    """Nx3 float32 CIELAB of Nx3 RGB pixels, as `to_lab` converts them."""
    return cv2.cvtColor((pixels.astype(np.float32) / 255.0)[None], cv2.COLOR_RGB2Lab)[0]


def match_colors(generated: Image.Image, reference: Image.Image, mask: Image.Image) -> Image.Image:
    """`generated` with the colour statistics (Lab mean and spread per channel) of `reference` inside `mask`:
    a repaint keeps the photo's colours and loses any cast the denoising gave it (a prompt that asks for other
    colours wants this off). Outside the mask the result is not meant to be used (it is blended away)."""
    weight = np.asarray(mask.convert("L"), np.float32) / 255.0
    inside = weight > 0
    if weight.sum() < 1.0:
        return generated
    gen, ref = to_lab(generated), to_lab(reference)
    w = weight[inside][:, None]

    def stats(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = lab[inside]
        mean = (values * w).sum(axis=0) / w.sum()
        return mean, np.sqrt(((values - mean) ** 2 * w).sum(axis=0) / w.sum())

    (gen_mean, gen_spread), (ref_mean, ref_spread) = stats(gen), stats(ref)
    ratio = np.clip(ref_spread / np.maximum(gen_spread, 1e-3), 0.25, 4.0)  # a flat region is not blown up
    return from_lab((gen - gen_mean) * ratio + ref_mean)
