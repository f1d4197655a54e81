"""Estimators that read the avatar's state back out of frames, for evaluating generated video.

Generated frames are blurrier than the renders and may drift in colour, so every estimator is
relative to a *reference* portrait of the same identity (which tells it the skin and lip colours and
where the mouth and eyes are) and measures something robust to blur, small head motion and small
colour shifts:

* mouth opening: how much "dark interior" (far darker than the reference's closed lip line) lies in
  the first dark run below the mouth line, per column, taking the tallest columns. Heights rather
  than areas, so the mouth's width (rounded "oo" vs spread "ee") does not read as opening; the first
  run only, so a dark collar or hair under the chin never counts.
* smile: height of the mouth corners relative to the top of the upper lip at the centre.
* gaze: horizontal offset between the dark iris/pupil and the white of the eye (they move in opposite
  directions, and both move with the head, so head motion cancels).
* identity distance: CIEDE2000 between 8x8-pixel block means, which measures identity and colour
  drift while small motion and the moving mouth barely count.

Geometry is in the renderer's design units (a 128-unit canvas), scaled to the frame size.
"""

from __future__ import annotations

import logging

import numpy as np

from engine.training import avatar

log = logging.getLogger(__name__)

MOUTH_CLOSED_THRESHOLD = (
    2.7  # mouth_opening below this reads "closed" (design-unit pixels of interior height)
)
_INTERIOR_LUM = float(np.dot(avatar.INTERIOR_RGB, (0.2126, 0.7152, 0.0722)))


def mouth_closed_threshold() -> float:
    """Value of :func:`mouth_opening` below which the mouth counts as closed."""
    return MOUTH_CLOSED_THRESHOLD


def _lum(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)


def _scale(image: np.ndarray) -> float:
    return image.shape[-2] / avatar.CANVAS


def _box(centre: tuple[float, float], dx0: float, dx1: float, dy0: float, dy1: float, k: float, size: int):
    """Pixel slices (rows, cols) of a design-unit box around ``centre`` (x, y, in pixels)."""
    cx, cy = centre
    rows = slice(max(int(cy + dy0 * k), 0), min(int(np.ceil(cy + dy1 * k)), size))
    cols = slice(max(int(cx + dx0 * k), 0), min(int(np.ceil(cx + dx1 * k)), size))
    return rows, cols


class _Reference:
    """What the estimators learn from the reference portrait: skin, lips, mouth and eye positions."""

    def __init__(self, reference: np.ndarray) -> None:
        ref = np.asarray(reference, np.float32)
        self.size = ref.shape[0]
        self.k = k = _scale(ref)
        c = avatar.CENTER * k
        rows, cols = _box((c, avatar.FACE_CY * k), -5.0, 5.0, 1.0, 7.0, k, self.size)
        self.skin = np.median(ref[rows, cols].reshape(-1, 3), axis=0)
        self.skin_lum = float(_lum(self.skin))
        # Mouth: the pixels in the lower face most unlike the skin.
        rows, cols = _box((c, avatar.FACE_CY * k), -18.0, 18.0, 8.0, 28.0, k, self.size)
        patch = ref[rows, cols]
        # The closed lip line is the darkest row through the middle of the mouth; the upper lip sits
        # just above it.
        centre = (patch.shape[1] - 1) // 2
        half = max(1, int(round(5 * k)))
        middle = patch[:, centre - half : centre + half + 1]
        line = int(np.argmin(_lum(middle).mean(axis=1)))
        upper = middle[max(line - int(round(3 * k)), 0) : max(line, 1)]
        self.lip = np.median(upper.reshape(-1, 3), axis=0)
        self.mouth = (cols.start + centre + 0.5, rows.start + line + 0.5)  # (x, y) pixels
        r2, c2 = _box(self.mouth, -8.0, 8.0, -3.0, 3.0, k, self.size)
        self.line_lum = float(_lum(ref[r2, c2]).min())
        self.eyes = self._find_eyes(ref)

    def _find_eyes(self, ref: np.ndarray) -> list[tuple[float, float]]:
        k, c = self.k, avatar.CENTER * self.k
        sclera = float(_whiteness(avatar.SCLERA_RGB))
        # Between skin and sclera, and close enough to the sclera to exclude grey hair.
        self.white_thr = max(0.5 * (float(_whiteness(self.skin[None])[0]) + sclera), sclera - 45.0)
        eyes = []
        for x0, x1 in ((-24.0, 0.0), (0.0, 24.0)):
            rows, cols = _box((c, avatar.FACE_CY * k), x0, x1, -12.0, 4.0, k, self.size)
            w = _whiteness(ref[rows, cols]) > self.white_thr
            ys, xs = np.nonzero(w)
            if len(xs) == 0:
                eyes.append((c + 0.5 * (x0 + x1) * k, (avatar.FACE_CY - 3.0) * k))
            else:
                eyes.append((cols.start + xs.mean() + 0.5, rows.start + ys.mean() + 0.5))
        return eyes


def _whiteness(rgb: np.ndarray) -> np.ndarray:
    """High for bright unsaturated pixels (the whites of the eyes), low for skin and colour."""
    rgb = np.asarray(rgb, np.float32)
    lo, hi = rgb.min(axis=-1), rgb.max(axis=-1)
    return lo - (hi - lo)


def _first_run_height(ink: np.ndarray, start_rows: int, on: float = 0.15) -> np.ndarray:
    """Per column (last axis) sum of ``ink`` over its first contiguous run (along axis -2), counting
    only runs that start within the first ``start_rows`` rows."""
    m = ink > on
    early = np.arange(ink.shape[-2])[:, None] < start_rows
    started = np.cumsum(m & early, axis=-2) > 0
    ended = np.cumsum(started & ~m, axis=-2) > 0
    return (ink * (started & ~ended)).sum(axis=-2)


def mouth_opening(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(F,) interior height of the open mouth, in design-unit pixels (0 when closed).

    Pixels much darker than the reference's closed lip line count as interior, soft-thresholded so
    the estimate varies continuously under blur. Per column only the first dark run below the top
    of the search window counts; the mean of the tallest few columns is the opening."""
    frames = np.asarray(frames)
    ref = _Reference(reference)
    k = ref.k
    rows, cols = _box(ref.mouth, -10.0, 10.0, -7.0, 22.0, k, ref.size)
    lum = _lum(frames[:, rows, cols])
    hi = _INTERIOR_LUM + 0.75 * max(ref.line_lum - _INTERIOR_LUM, 8.0)
    lo = _INTERIOR_LUM + 12.0
    ink = np.clip((hi - lum) / (hi - lo), 0.0, 1.0)
    # The interior starts at the lip line: 7 rows below the window top, give or take head motion.
    heights = _first_run_height(ink, int(round(13.0 * k)))
    top = max(1, int(round(5 * k)))
    return np.sort(heights, axis=-1)[:, -top:].mean(axis=-1) / k


def _mouthness(pixels: np.ndarray, ref: _Reference) -> np.ndarray:
    """0 for skin, 1 for lip colour or darker (the interior projects beyond the lips)."""
    axis = ref.lip - ref.skin
    proj = (np.asarray(pixels, np.float32) - ref.skin) @ (axis / max(float(axis @ axis), 1.0))
    return np.clip(proj, 0.0, 1.0)


def _smile_one(m: np.ndarray, centre_col: int) -> float:
    """How far the upper lip's edge rises towards the corners, for one frame's mouthness window."""
    on = m > 0.5
    inside = on.any(axis=0) & (on.mean(axis=0) < 0.85)  # full-height columns are hair, not mouth
    if not inside[centre_col]:
        return 0.0
    left = centre_col - np.argmin(inside[centre_col::-1]) if not inside[: centre_col + 1].all() else 0
    right = centre_col + np.argmin(inside[centre_col:]) if not inside[centre_col:].all() else len(inside)
    left, right = int(left) + 1, int(right)
    if right - left < 6:
        return 0.0
    # Upper-lip top edge at 70% versus 35% of the half-width, averaged over both sides: the upper lip
    # does not move when the jaw opens, fixed fractions of the width cancel the mouth's width, and
    # 35% keeps clear of the nostrils above the centre.
    mid, half = 0.5 * (left + right), 0.5 * (right - left)
    tops = []
    for frac in (-0.7, -0.35, 0.35, 0.7):
        c0 = int(round(mid + frac * half))
        tops.append(_first_crossing(m[:, max(c0 - 1, 0) : c0 + 1].mean(axis=1)))
    return 0.5 * (tops[1] + tops[2]) - 0.5 * (tops[0] + tops[3])


def _first_crossing(profile: np.ndarray) -> float:
    """Sub-pixel row where a column profile first rises above 0.5."""
    on = profile > 0.5
    if not on.any():
        return float(len(profile))
    top = int(np.argmax(on))
    if top == 0:
        return 0.0
    lo, hi = profile[top - 1], profile[top]
    return top + (0.5 - lo) / max(hi - lo, 1e-6) - 0.5


def smile_estimate(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(F,) mouth-corner height minus upper-lip-top height (design pixels); grows with the smile."""
    frames = np.asarray(frames)
    ref = _Reference(reference)
    rows, cols = _box(ref.mouth, -23.0, 23.0, -10.0, 6.0, ref.k, ref.size)
    m = _mouthness(frames[:, rows, cols], ref)
    centre_col = int(ref.mouth[0] - cols.start)
    return np.array([_smile_one(mi, centre_col) for mi in m]) / ref.k


def _fill_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid entries by the nearest valid one (0 if none)."""
    if not valid.any():
        return np.zeros_like(values)
    idx = np.arange(len(values))
    good = idx[valid]
    pos = np.clip(np.searchsorted(good, idx), 0, len(good) - 1)
    prev = np.clip(pos - 1, 0, len(good) - 1)
    nearest = np.where(np.abs(good[prev] - idx) < np.abs(good[pos] - idx), good[prev], good[pos])
    return values[nearest]


def gaze_estimate(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(F,) iris position relative to the white of the eye (design pixels), averaged over both eyes.

    Positive when the pupils are to the viewer's right. Frames with closed eyes (no white visible)
    take the value of the nearest frame with open eyes."""
    frames = np.asarray(frames)
    ref = _Reference(reference)
    k = ref.k
    total = np.zeros(len(frames))
    count = np.zeros(len(frames))
    for eye in ref.eyes:
        rows, cols = _box(eye, -11.0, 11.0, -6.0, 6.0, k, ref.size)
        px = frames[:, rows, cols].astype(np.float32)
        white = np.clip((_whiteness(px) - ref.white_thr) / 20.0 + 0.5, 0.0, 1.0)
        dark_thr = 0.6 * ref.skin_lum
        dark = np.clip((dark_thr - _lum(px)) / 20.0 + 0.5, 0.0, 1.0)
        peak = np.argmax(white.sum(axis=2), axis=1)  # row through the eye
        r = np.arange(white.shape[1])[None, :]
        band = (np.abs(r - peak[:, None]) <= max(1, int(round(2 * k))))[..., None]
        white, dark = white * band, dark * band
        # Only dark pixels between the whites' ends belong to the eye (not hair beside it).
        seen = white.max(axis=1) > 0.5
        first = np.argmax(seen, axis=1)
        last = seen.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)
        c = np.arange(seen.shape[1])[None, :]
        dark = dark * ((c >= first[:, None] - 1) & (c <= last[:, None] + 1))[:, None, :]
        xs = np.arange(white.shape[2], dtype=np.float64)
        wsum, dsum = white.sum(axis=(1, 2)), dark.sum(axis=(1, 2))
        valid = (wsum > 3.0 * k * k) & (dsum > 1.0 * k * k)
        off = (dark.sum(axis=1) @ xs) / np.maximum(dsum, 1e-6) - (white.sum(axis=1) @ xs) / np.maximum(
            wsum, 1e-6
        )
        total += np.where(valid, off, 0.0)
        count += valid
    valid = count > 0
    return _fill_invalid(total / np.maximum(count, 1), valid) / k


# ------------------------------------------------------------------------------------------- colour


def pearson(estimate: np.ndarray, truth: np.ndarray) -> float | None:
    """Pearson correlation. A constant estimate tells nothing about the truth: 0. None where the
    truth is constant or there are fewer than 3 points (nothing to follow)."""
    x, y = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    if len(x) < 3 or y.std() < 1e-12:
        return None
    if x.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def rgb_to_lab(rgb_uint8: np.ndarray) -> np.ndarray:
    """sRGB (0..255, D65) -> CIE L*a*b*, float64, any leading shape."""
    c = np.asarray(rgb_uint8, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6.0 / 29.0) ** 3, np.cbrt(xyz), xyz / (3.0 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    lum = 116.0 * f[..., 1] - 16.0
    return np.stack([lum, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), vectorised over leading axes; kL=kC=kH=1."""
    lab1, lab2 = np.broadcast_arrays(np.asarray(lab1, np.float64), np.asarray(lab2, np.float64))
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar = 0.5 * (np.hypot(a1, b1) + np.hypot(a2, b2))
    g = 0.5 * (1.0 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360.0
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360.0
    zero = (c1p * c2p) == 0.0
    dh = h2p - h1p
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dh = np.where(zero, 0.0, dh)
    d_l, d_c = l2 - l1, c2p - c1p
    d_h = 2.0 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2.0)
    l_bar, cp_bar = 0.5 * (l1 + l2), 0.5 * (c1p + c2p)
    hsum = h1p + h2p
    wrapped = np.where(hsum < 360.0, hsum + 360.0, hsum - 360.0)
    h_bar = np.where(np.abs(h1p - h2p) > 180.0, wrapped, hsum) / 2.0
    h_bar = np.where(zero, hsum, h_bar)
    t = (
        1.0
        - 0.17 * np.cos(np.radians(h_bar - 30.0))
        + 0.24 * np.cos(np.radians(2.0 * h_bar))
        + 0.32 * np.cos(np.radians(3.0 * h_bar + 6.0))
        - 0.20 * np.cos(np.radians(4.0 * h_bar - 63.0))
    )
    d_theta = 30.0 * np.exp(-(((h_bar - 275.0) / 25.0) ** 2))
    r_c = 2.0 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1.0 + 0.015 * (l_bar - 50.0) ** 2 / np.sqrt(20.0 + (l_bar - 50.0) ** 2)
    s_c = 1.0 + 0.045 * cp_bar
    s_h = 1.0 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(2.0 * d_theta)) * r_c
    return np.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h))


def _block_means(images: np.ndarray, block: int = 8) -> np.ndarray:
    h, w = images.shape[-3] // block * block, images.shape[-2] // block * block
    x = np.asarray(images, np.float64)[..., :h, :w, :]
    x = x.reshape(*x.shape[:-3], h // block, block, w // block, block, 3)
    return x.mean(axis=(-4, -2))


def identity_distance(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(F,) mean CIEDE2000 between each frame and the reference over 8x8-pixel block means.

    Block means (averaged in sRGB, then converted to Lab) make the measure about identity and colour:
    a few pixels of head motion, blinks and the moving mouth change only a handful of blocks a little,
    while a different skin tone, hair, clothes or background changes most blocks a lot."""
    f = rgb_to_lab(_block_means(np.asarray(frames)))
    r = rgb_to_lab(_block_means(np.asarray(reference)[None]))
    return ciede2000(f, r).reshape(len(f), -1).mean(axis=1)


# ------------------------------------------------------------------------------------------- validation


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    return np.convolve(np.pad(x, width, mode="edge"), kernel, mode="same")[width:-width]


def _random_mouth(rng: np.random.Generator, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like mouth: knots every 3-7 frames, ~30% closed, lightly smoothed."""
    values = np.zeros(num_frames)
    i = 0
    while i < num_frames:
        n = int(rng.integers(3, 8))
        values[i : i + n] = 0.0 if rng.random() < 0.3 else rng.uniform(0.0, 1.0)
        i += n
    opening = np.clip(_smooth(values, 3), 0.0, 1.0)
    width = np.clip(_smooth(rng.uniform(0.0, 1.0, num_frames), 9) * 2.0 - 0.5, 0.0, 1.0)
    return opening.astype(np.float32), width.astype(np.float32)


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (F, H, W, 3) frames, edge-padded; float32 out."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    x = np.asarray(frames, np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        xp = np.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = sum(w * np.take(xp, np.arange(i, i + n), axis=axis) for i, w in enumerate(taps))
    return x


def _degrade(rng: np.random.Generator, frames: np.ndarray) -> np.ndarray:
    """What a blurry generator might output: blur sigma 1.5, a colour shift of up to 10, noise."""
    x = blur(frames, 1.5) + rng.uniform(-10.0, 10.0, 3) + rng.normal(0.0, 3.0, frames.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def validate_estimators(rng_seed: int = 0, clips: int = 6, frames: int = 200) -> dict[str, float]:
    """Check the estimators against rendered ground truth (random identities, mouths, smiles, gazes)."""
    rng = np.random.default_rng(rng_seed)
    keys = ("mouth", "mouth_blur", "open", "smile_est", "smile", "gaze_est", "gaze", "self", "other")
    acc: dict[str, list] = {key: [] for key in keys}
    refs = []
    for _ in range(clips):
        ident, attrs = avatar.Identity.sample(rng), avatar.Attributes.sample(rng)
        opening, width = _random_mouth(rng, frames)
        track = avatar.idle_track(rng, frames, mouth_open=opening, mouth_width=width)
        video = avatar.render_clip(ident, attrs, track)
        ref = avatar.portrait(ident, attrs)
        refs.append((video, ref))
        acc["mouth"].append(mouth_opening(video, ref))
        acc["mouth_blur"].append(mouth_opening(_degrade(rng, video), ref))
        acc["open"].append(track.mouth_open)
        acc["smile_est"].append(smile_estimate(video, ref))
        acc["smile"].append(np.full(frames, attrs.smile))
        acc["gaze_est"].append(gaze_estimate(video, ref))
        acc["gaze"].append(np.full(frames, attrs.gaze_x))
        acc["self"].append(identity_distance(video, ref))
    for i, (video, _) in enumerate(refs):
        acc["other"].append(identity_distance(video, refs[(i + 1) % len(refs)][1]))
    cat = {key: np.concatenate(v) for key, v in acc.items()}
    truth = cat["open"]
    known = (truth <= 0.15) | (truth >= 0.25)
    closed_ok = (cat["mouth"] < MOUTH_CLOSED_THRESHOLD) == (truth <= 0.15)
    return {
        "mouth_corr": float(np.corrcoef(cat["mouth"], truth)[0, 1]),
        "mouth_corr_blurred": float(np.corrcoef(cat["mouth_blur"], truth)[0, 1]),
        "closed_accuracy": float(closed_ok[known].mean()),
        "smile_corr": float(np.corrcoef(cat["smile_est"], cat["smile"])[0, 1]),
        "gaze_corr": float(np.corrcoef(cat["gaze_est"], cat["gaze"])[0, 1]),
        "identity_self": float(cat["self"].mean()),
        "identity_other": float(cat["other"].mean()),
    }
