"""Procedural 2D head-and-shoulders avatar: the source of all training video.

No real talking-head footage or pretrained model can be downloaded, so the video model learns from
renders whose ground truth is exact per frame: mouth opening and shape, blinks, head pose, breathing
and camera motion are inputs here, not estimates. That exactness is the point of rendering instead of
collecting data.

Every part of the picture is an implicit shape (a signed distance) evaluated on the pixel grid with
about one pixel of anti-aliasing (``clip(0.5 - d, 0, 1)`` coverage), composited back to front in
float32. Pure vectorised numpy keeps a 128x128 frame in the low milliseconds on one core, so clips are
stored as recipes and rendered on demand. Small features (eyes, brows, mouth, nose) are evaluated only
inside their own window.

Geometry lives in *design units*: a 128-unit square canvas whatever the output size. The camera is a
similarity transform of the final image about the centre; it is applied by inverse-mapping the pixel
grid before the shapes are evaluated, so nothing is resampled and the borders show real scene content
(the background gradient and the body are defined everywhere). Head motion rotates the whole head
rigidly about the neck base; the shoulders follow only partly.

The mouth is deliberately big and high-contrast (24-34 px wide, up to 16 px open, a near-black
interior) because a small 8x-downsampling VAE has to reproduce it and evaluation measures it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import ClassVar

import numpy as np

FPS = 25
CANVAS = 128.0
CENTER = CANVAS / 2.0
FACE_CY = 56.0  # face centre, design units
PIVOT_Y = 92.0  # head tilt pivot (neck base)
SHOULDER_Y = 101.0  # top of the shoulders at rest
MOUTH_MAX_OPEN = 16.0  # interior height at mouth_open == 1
MOUTH_HALF_WIDTH = (12.0, 17.0)  # at mouth_width 0 and 1
SMILE_LIFT = 5.0  # corner lift at smile == 1
INTERIOR_RGB = (40.0, 10.0, 15.0)
TEETH_RGB = (228.0, 222.0, 208.0)
SCLERA_RGB = (240.0, 238.0, 232.0)
PUPIL_RGB = (14.0, 12.0, 16.0)

HAIR_STYLES = ("short", "long", "bun", "buzz")
CLOTHES_STYLES = ("tshirt", "collar", "turtleneck")
CAMERA_PRESETS = (
    "static",
    "push_in",
    "push_out",
    "pan_left",
    "pan_right",
    "crane_up",
    "crane_down",
    "handheld",
)

_SKIN_TONES = (
    (246, 214, 192), (236, 196, 166), (224, 178, 140), (200, 150, 112),
    (176, 124, 90), (150, 100, 70), (126, 84, 60), (108, 72, 54),
)  # fmt: skip
_HAIR_COLOURS = (
    (22, 18, 16), (48, 32, 22), (92, 60, 34), (140, 74, 38), (214, 180, 112), (168, 168, 166), (120, 96, 70),
)  # fmt: skip
_EYE_COLOURS = ((70, 44, 24), (40, 26, 16), (58, 110, 170), (70, 120, 70), (110, 84, 44), (112, 124, 136))

RGB = tuple[int, int, int]


def _jitter(rng: np.random.Generator, rgb: tuple[int, ...], amount: float) -> RGB:
    out = np.clip(np.asarray(rgb, np.float64) + rng.normal(0.0, amount, 3), 0, 255)
    return tuple(int(round(v)) for v in out)  # type: ignore[return-value]


def _random_rgb(rng: np.random.Generator, lo: float, hi: float) -> RGB:
    """A moderately saturated colour of random hue, brightness in [lo, hi]."""
    hue = rng.uniform(0.0, 2.0 * math.pi)
    sat = rng.uniform(0.15, 0.55)
    val = rng.uniform(lo, hi)
    rgb = [val * (1.0 - sat * (0.5 - 0.5 * math.cos(hue - off))) for off in (0.0, 2.094, 4.189)]
    return tuple(int(round(min(255.0, v))) for v in rgb)  # type: ignore[return-value]


def _tuplify(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclass(frozen=True)
class Identity:
    """Everything constant about one avatar. Sizes are in design units (128-unit canvas)."""

    face_width: float  # full width of the face ellipse
    face_height: float  # forehead to chin
    jaw_roundness: float  # 0 = tapered jaw, 1 = round
    skin_rgb: RGB
    hair_style: int  # index into HAIR_STYLES
    hair_rgb: RGB
    hair_part: float  # -1..1, tilts the hairline
    eye_rgb: RGB
    eye_spacing: float  # distance between the eye centres
    eye_size: float  # scale of the eyes
    lip_rgb: RGB
    clothes_style: int  # index into CLOTHES_STYLES
    clothes_rgb: RGB
    collar_rgb: RGB
    shoulder_width: float  # scale of the shoulders
    bg_top_rgb: RGB
    bg_bottom_rgb: RGB

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Identity:
        skin = _jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 6.0)
        darkness = 1.0 - (0.2126 * skin[0] + 0.7152 * skin[1] + 0.0722 * skin[2]) / 255.0
        lip_base = np.asarray(skin) * (0.86, 0.55, 0.58) + darkness * np.array([34.0, 12.0, 12.0])
        bg_top = _random_rgb(rng, 90.0, 235.0)
        bg_bottom = tuple(int(np.clip(c * rng.uniform(0.55, 0.9), 0, 255)) for c in bg_top)
        return cls(
            face_width=float(rng.uniform(53.0, 63.0)),
            face_height=float(rng.uniform(59.0, 69.0)),
            jaw_roundness=float(rng.uniform(0.0, 1.0)),
            skin_rgb=skin,
            hair_style=int(rng.integers(len(HAIR_STYLES))),
            hair_rgb=_jitter(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 8.0),
            hair_part=float(rng.uniform(-1.0, 1.0)),
            eye_rgb=_jitter(rng, _EYE_COLOURS[rng.integers(len(_EYE_COLOURS))], 6.0),
            eye_spacing=float(rng.uniform(23.0, 28.0)),
            eye_size=float(rng.uniform(0.9, 1.1)),
            lip_rgb=_jitter(rng, tuple(lip_base), 5.0),
            clothes_style=int(rng.integers(len(CLOTHES_STYLES))),
            clothes_rgb=_random_rgb(rng, 40.0, 230.0),
            collar_rgb=_random_rgb(rng, 190.0, 250.0),
            shoulder_width=float(rng.uniform(0.9, 1.05)),
            bg_top_rgb=bg_top,
            bg_bottom_rgb=bg_bottom,  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Identity:
        return cls(**_tuplify({f.name: d[f.name] for f in fields(cls)}))


@dataclass(frozen=True)
class Attributes:
    """Per-clip labels (for later prompt control) that also change the rendering."""

    smile: float = 0.0  # 0..1: mouth corners up, cheeks
    gaze_x: float = 0.0  # -1..1: pupils left/right (as the viewer sees them)
    brow: float = 0.0  # -1..1: frown .. raised
    mood: float = 0.5  # 0..1: background brightness and warmth

    NEUTRAL: ClassVar[Attributes]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Attributes:
        return cls(
            smile=float(rng.uniform(0.0, 1.0)),
            gaze_x=float(rng.uniform(-1.0, 1.0)),
            brow=float(rng.uniform(-1.0, 1.0)),
            mood=float(rng.uniform(0.0, 1.0)),
        )

    @classmethod
    def neutral(cls) -> Attributes:
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Attributes:
        return cls(**{f.name: float(d[f.name]) for f in fields(cls)})


Attributes.NEUTRAL = Attributes()

_TRACK_FIELDS = (
    "mouth_open", "mouth_width", "blink", "head_x", "head_y", "head_tilt", "breath",
    "cam_zoom", "cam_x", "cam_y",
)  # fmt: skip


@dataclass
class Track:
    """Per-frame state, every field a float32 array of shape (F,)."""

    mouth_open: np.ndarray  # 0 = lips closed .. 1 = jaw wide open
    mouth_width: np.ndarray  # 0 = rounded "oo", 0.5 neutral, 1 = spread "ee"
    blink: np.ndarray  # 1 = eyes fully closed
    head_x: np.ndarray  # design units (pixels at 128), about +-4
    head_y: np.ndarray
    head_tilt: np.ndarray  # radians, about +-0.06
    breath: np.ndarray  # 0..1, shoulders rise slightly
    cam_zoom: np.ndarray  # 1 = none
    cam_x: np.ndarray  # pixels; positive = content moves right
    cam_y: np.ndarray  # pixels; positive = content moves down

    def __post_init__(self) -> None:
        for name in _TRACK_FIELDS:
            setattr(self, name, np.asarray(getattr(self, name), np.float32).reshape(-1))

    def __len__(self) -> int:
        return len(self.mouth_open)

    @classmethod
    def neutral(cls, num_frames: int) -> Track:
        """Mouth closed, eyes open, no motion, static camera."""
        values = {"mouth_width": 0.5, "breath": 0.5, "cam_zoom": 1.0}
        return cls(**{name: np.full(num_frames, values.get(name, 0.0), np.float32) for name in _TRACK_FIELDS})

    def frames(self, start: int, stop: int) -> Track:
        return Track(**{name: getattr(self, name)[start:stop] for name in _TRACK_FIELDS})

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _TRACK_FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Track:
        return cls(**{name: np.asarray(arrays[name], np.float32) for name in _TRACK_FIELDS})


# ----------------------------------------------------------------------------------------------- motion


def _smooth_sway(
    rng: np.random.Generator, t: np.ndarray, amplitude: float, fmin: float, fmax: float
) -> np.ndarray:
    """Sum of three low-frequency sinusoids: smooth, bounded by ``amplitude``, zero mean (no drift)."""
    weights = rng.uniform(0.5, 1.0, 3)
    weights *= amplitude / weights.sum()
    freqs = rng.uniform(fmin, fmax, 3)
    phases = rng.uniform(0.0, 2.0 * math.pi, 3)
    return np.sum(
        weights[:, None] * np.sin(2.0 * math.pi * freqs[:, None] * t[None] + phases[:, None]), axis=0
    )


def _blinks(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Blinks every 2-6 s lasting 150-200 ms: fast close (40%), slower open."""
    out = np.zeros_like(t)
    start = rng.uniform(0.3, 3.0)
    while start < t[-1] + 1.0 if len(t) else False:
        dur = rng.uniform(0.15, 0.2)
        close = 0.4 * dur
        u = t - start
        closing = np.clip(u / close, 0.0, 1.0)
        opening = np.clip(1.0 - (u - close) / (dur - close), 0.0, 1.0)
        out = np.maximum(out, np.where(u < close, closing, opening) * (u > 0) * (u < dur))
        start += dur + rng.uniform(2.0, 6.0)
    return out


def idle_track(
    rng: np.random.Generator,
    num_frames: int,
    mouth_open: np.ndarray | None = None,
    mouth_width: np.ndarray | None = None,
) -> Track:
    """Natural idle motion: blinks, slow head sway (< 0.5 Hz, zero mean), breathing (~0.25 Hz).

    The mouth defaults to closed and neutral width; the camera is static."""
    t = np.arange(num_frames, dtype=np.float64) / FPS
    breath_f = rng.uniform(0.2, 0.3)
    track = Track.neutral(num_frames)
    track.blink = _blinks(rng, t).astype(np.float32)
    track.head_x = _smooth_sway(rng, t, rng.uniform(2.0, 3.5), 0.05, 0.4).astype(np.float32)
    track.head_y = _smooth_sway(rng, t, rng.uniform(1.0, 2.0), 0.05, 0.4).astype(np.float32)
    track.head_tilt = _smooth_sway(rng, t, rng.uniform(0.02, 0.05), 0.05, 0.3).astype(np.float32)
    track.breath = (0.5 + 0.5 * np.sin(2.0 * math.pi * breath_f * t + rng.uniform(0, 2 * math.pi))).astype(
        np.float32
    )
    if mouth_open is not None:
        track.mouth_open = np.clip(np.asarray(mouth_open, np.float32)[:num_frames], 0.0, 1.0)
    if mouth_width is not None:
        track.mouth_width = np.clip(np.asarray(mouth_width, np.float32)[:num_frames], 0.0, 1.0)
    return track


def _ease(t: np.ndarray, duration: float) -> np.ndarray:
    u = np.clip(t / duration, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def camera_track(
    preset: str, intensity: float, num_frames: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cam_zoom, cam_x, cam_y) per frame at 25 fps; directions as the viewer sees them.

    Moves ease in over ~4 s and then hold, so a clip of any length stays framed. pan_left moves the
    scene right (cam_x > 0), crane_up moves it down (cam_y > 0); handheld is a smooth zero-mean shake."""
    if preset not in CAMERA_PRESETS:
        raise ValueError(f"unknown camera preset {preset!r}; expected one of {CAMERA_PRESETS}")
    t = np.arange(num_frames, dtype=np.float64) / FPS
    ramp = _ease(t, rng.uniform(3.5, 4.5)) * float(intensity)
    zoom, cx, cy = np.ones_like(t), np.zeros_like(t), np.zeros_like(t)
    if preset == "push_in":
        zoom = 1.0 + 0.25 * ramp
    elif preset == "push_out":
        zoom = 1.0 / (1.0 + 0.25 * ramp)
    elif preset in ("pan_left", "pan_right"):
        cx = 14.0 * ramp * (1.0 if preset == "pan_left" else -1.0)
    elif preset in ("crane_up", "crane_down"):
        cy = 12.0 * ramp * (1.0 if preset == "crane_up" else -1.0)
    elif preset == "handheld" and num_frames:
        cx = _smooth_sway(rng, t, 1.5 * intensity, 0.3, 1.5)
        cy = _smooth_sway(rng, t, 1.2 * intensity, 0.3, 1.5)
        zoom = 1.0 + _smooth_sway(rng, t, 0.006 * intensity, 0.2, 0.8)
        cx, cy, zoom = cx - cx.mean(), cy - cy.mean(), zoom - zoom.mean() + 1.0
    return zoom.astype(np.float32), cx.astype(np.float32), cy.astype(np.float32)


# ------------------------------------------------------------------------------------------- shapes


def _clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """np.clip without its Python-level dispatch, which costs more than the work on small windows."""
    return np.minimum(np.maximum(x, lo), hi)


def _cov(d: np.ndarray, aa: float) -> np.ndarray:
    """Anti-aliased coverage of a signed distance (design units; ``aa`` = output px per unit)."""
    c = 0.5 - d * aa
    np.maximum(c, 0.0, out=c)
    return np.minimum(c, 1.0, out=c)


def _ellipse_d(x: np.ndarray, y: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """First-order distance to an axis-aligned ellipse: implicit value over its gradient length."""
    ux, uy = x / rx, y / ry
    grad = 2.0 * np.sqrt((ux / rx) ** 2 + (uy / ry) ** 2) + 1e-6
    return (ux * ux + uy * uy - 1.0) / grad


def _circle_d(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    return np.sqrt(x * x + y * y) - r


def _box_d(x: np.ndarray, y: np.ndarray, hx: float, hy: float, r: float) -> np.ndarray:
    """Rounded box centred at the origin with half sizes (hx, hy) and corner radius r."""
    qx = np.abs(x) - (hx - r)
    qy = np.abs(y) - (hy - r)
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - r


def _segment_d(
    x: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float], r: float
) -> np.ndarray:
    """Capsule of radius r around segment a-b."""
    px, py = x - a[0], y - a[1]
    bx, by = b[0] - a[0], b[1] - a[1]
    h = _clip((px * bx + py * by) / (bx * bx + by * by), 0.0, 1.0)
    return np.sqrt((px - bx * h) ** 2 + (py - by * h) ** 2) - r


def _blend(img: np.ndarray, cov: np.ndarray | float, rgb: np.ndarray | tuple[float, ...]) -> None:
    """Composite colour ``rgb`` over planar ``img`` (3, h, w) with coverage ``cov`` (h, w).

    Planar float32 because numpy is several times slower on a trailing axis of length 3."""
    img += cov * (np.asarray(rgb, np.float32).reshape(3, 1, 1) - img)


def _scaled(rgb: tuple[int, ...], factor: float) -> np.ndarray:
    return _clip(np.asarray(rgb, np.float32) * factor, 0.0, 255.0)


@lru_cache(maxsize=8)
def _grid(size: int) -> np.ndarray:
    """Pixel centres in design units."""
    return ((np.arange(size, dtype=np.float32) + 0.5) * (CANVAS / size)).astype(np.float32)


@dataclass
class _State:
    """One frame's scalars, with derived geometry shared by the layers."""

    mouth_open: float
    mouth_width: float
    blink: float
    head_x: float
    head_y: float
    tilt: float
    breath: float
    zoom: float
    cam_x: float
    cam_y: float

    @classmethod
    def at(cls, track: Track, index: int) -> _State:
        return cls(*(float(getattr(track, name)[index]) for name in _TRACK_FIELDS))


class _Frame:
    """Canvas plus coordinate systems for one frame: scene (q), face (f) and torso (b) coordinates."""

    def __init__(self, st: _State, size: int) -> None:
        self.size = size
        self.k = size / CANVAS
        self.st = st
        self.aa = self.k * st.zoom
        g = _grid(size)
        self.qx = (CENTER + (g - CENTER - st.cam_x) / st.zoom)[None, :]  # (1, W)
        self.qy = (CENTER + (g - CENTER - st.cam_y) / st.zoom)[:, None]  # (H, 1)
        self.cos, self.sin = math.cos(st.tilt), math.sin(st.tilt)
        dx = self.qx - CENTER - st.head_x
        dy = self.qy - PIVOT_Y - st.head_y
        self.fx = (self.cos * dx + self.sin * dy).astype(np.float32)
        self.fy = (-self.sin * dx + self.cos * dy + (PIVOT_Y - FACE_CY)).astype(np.float32)

    def to_output(self, fx: float, fy: float) -> tuple[float, float]:
        """Face coordinates -> output pixel coordinates (x, y)."""
        hy = fy - (PIVOT_Y - FACE_CY)
        qx = self.cos * fx - self.sin * hy + CENTER + self.st.head_x
        qy = self.sin * fx + self.cos * hy + PIVOT_Y + self.st.head_y
        ox = CENTER + self.st.zoom * (qx - CENTER) + self.st.cam_x
        oy = CENTER + self.st.zoom * (qy - CENTER) + self.st.cam_y
        return ox * self.k, oy * self.k

    def window(self, cx: float, cy: float, rx: float, ry: float) -> tuple[slice, slice] | None:
        """Output-pixel window holding the face-coordinate box centre (cx, cy), half sizes (rx, ry)."""
        ox, oy = self.to_output(cx, cy)
        c, s = abs(self.cos), abs(self.sin)
        scale = self.st.zoom * self.k
        wx = (rx * c + ry * s) * scale + 2.0
        wy = (rx * s + ry * c) * scale + 2.0
        x0, x1 = max(int(ox - wx), 0), min(int(math.ceil(ox + wx)), self.size)
        y0, y1 = max(int(oy - wy), 0), min(int(math.ceil(oy + wy)), self.size)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)


# ------------------------------------------------------------------------------------------- layers


def _background(fr: _Frame, ident: Identity, attrs: Attributes) -> np.ndarray:
    t = _clip(fr.qy / CANVAS, 0.0, 1.0)  # (H, 1)
    top = np.asarray(ident.bg_top_rgb, np.float32)
    bottom = np.asarray(ident.bg_bottom_rgb, np.float32)
    mood = float(attrs.mood)
    col = top[:, None, None] + t[None] * (bottom - top)[:, None, None]  # (3, H, 1)
    col = col * (0.75 + 0.5 * mood) + (mood - 0.5) * np.array([24.0, 6.0, -24.0], np.float32)[:, None, None]
    col = _clip(col, 0.0, 255.0).astype(np.float32)
    return np.repeat(col, fr.size, axis=2)


def _hair_back(fr: _Frame, img: np.ndarray, ident: Identity) -> None:
    a, b = ident.face_width / 2.0, ident.face_height / 2.0
    style = HAIR_STYLES[ident.hair_style]
    hair = _scaled(ident.hair_rgb, 0.82)
    if style == "long":
        win = fr.window(0.0, 0.45 * b, a + 8.0, 1.1 * b + 5.0)
        if win is not None:
            d = _box_d(fr.fx[win], fr.fy[win] - 0.45 * b, a + 7.0, b * 1.1 + 4.0, 9.0)
            _blend(img[:, win[0], win[1]], _cov(d, fr.aa), hair)
    elif style == "bun":
        win = fr.window(0.0, -b - 7.0, 12.0, 12.0)
        if win is not None:
            d = _circle_d(fr.fx[win], fr.fy[win] + b + 7.0, 10.5)
            _blend(img[:, win[0], win[1]], _cov(d, fr.aa), hair)


def _torso(fr: _Frame, img: np.ndarray, ident: Identity) -> None:
    st, a, b = fr.st, ident.face_width / 2.0, ident.face_height / 2.0
    skin = np.asarray(ident.skin_rgb, np.float32)
    # Neck rides with the head; its lower end hides under the clothes.
    win = fr.window(0.0, b + 10.0, 0.42 * a + 1.0, 16.0)
    if win is not None:
        d = _box_d(fr.fx[win], fr.fy[win] - (b + 28.0), 0.42 * a, 34.0, 7.0)
        _blend(img[:, win[0], win[1]], _cov(d, fr.aa), skin * 0.84)
    top = SHOULDER_Y - 1.5 * st.breath + 0.3 * st.head_y
    rows = max(0, int((CENTER + st.zoom * (top - 16.0 - CENTER) + st.cam_y) * fr.k))
    if rows >= fr.size:
        return
    img = img[:, rows:]
    bx = fr.qx - CENTER - 0.3 * st.head_x  # (1, W)
    by = fr.qy[rows:] - top  # (H', 1)
    body = _cov(_box_d(bx, by - 70.0, 56.0 * ident.shoulder_width, 70.0, 26.0), fr.aa)
    cloth = np.asarray(ident.clothes_rgb, np.float32)
    style = CLOTHES_STYLES[ident.clothes_style]
    if style == "tshirt":
        neckline = _ellipse_d(bx, by, 0.42 * a + 4.0, 9.0)
        _blend(img, body * _cov(-neckline, fr.aa), cloth)
        _blend(img, body * _cov(np.abs(neckline - 1.0) - 1.0, fr.aa), cloth * 0.75)
    elif style == "collar":
        v = (np.abs(bx) - 12.0 + 0.55 * by) * 0.876
        _blend(img, body * _cov(-v, fr.aa), cloth)
        flap = _clip(_cov(-v, fr.aa) - _cov(-v + 5.0, fr.aa), 0.0, 1.0) * _cov(by - 13.0, fr.aa)
        _blend(img, body * flap, ident.collar_rgb)
    else:
        _blend(img, body, cloth)
        tube = _box_d(bx, by + 4.0, 0.42 * a + 3.0, 11.0, 5.0)
        _blend(img, _cov(tube, fr.aa), cloth * 0.9)


def _face(fr: _Frame, img: np.ndarray, ident: Identity, attrs: Attributes) -> None:
    a, b = ident.face_width / 2.0, ident.face_height / 2.0
    skin = np.asarray(ident.skin_rgb, np.float32)
    win = fr.window(0.0, 0.05 * b, a + 6.0, 9.0)  # ears, mirrored
    if win is not None:
        d = _ellipse_d(np.abs(fr.fx[win]) - a, fr.fy[win] - 0.05 * b, 4.5, 7.5)
        _blend(img[:, win[0], win[1]], _cov(d, fr.aa), skin * 0.9)
    win = fr.window(0.0, 0.1 * b, a + 1.0, b + 9.0)
    if win is None:
        return
    fx, fy, sub = fr.fx[win], fr.fy[win], img[:, win[0], win[1]]
    low = fy > 0.0
    jaw = 1.0 - 0.28 * (1.0 - ident.jaw_roundness) * _clip(fy / b, 0.0, 1.0) ** 2
    ry = np.where(low, b + 0.45 * MOUTH_MAX_OPEN * fr.st.mouth_open, b)
    d = _ellipse_d(fx, fy, a * jaw, ry)
    cov = _cov(d, fr.aa)
    _blend(sub, cov, skin)
    _blend(sub, cov * _clip(1.0 + d / 7.0, 0.0, 1.0) * 0.45, skin * 0.86)  # rim shading
    if attrs.smile > 0.0:  # cheeks, mirrored
        r = _circle_d(np.abs(fx) - 0.55 * a, fy - 0.28 * b, 0.0)
        _blend(sub, 0.3 * attrs.smile * _clip(1.0 - r / 8.0, 0.0, 1.0), (222.0, 110.0, 110.0))


def _hair_front(fr: _Frame, img: np.ndarray, ident: Identity) -> None:
    a, b = ident.face_width / 2.0, ident.face_height / 2.0
    style = HAIR_STYLES[ident.hair_style]
    hair = np.asarray(ident.hair_rgb, np.float32)
    win = fr.window(0.0, -0.5 * b, a + 12.0, 0.9 * b + 12.0)
    if win is None:
        return
    fx, fy = fr.fx[win], fr.fy[win]
    lift = 3.0 if style in ("bun", "buzz") else 6.0
    cap = _cov(_ellipse_d(fx, fy + 0.2 * b, a + 3.0, 0.8 * b + lift), fr.aa)
    hairline = -0.5 * b + 0.42 * b * (fx / a) ** 4 + 0.06 * ident.hair_part * fx
    cov = np.minimum(cap, _cov(fy - hairline, fr.aa))
    colour = 0.55 * hair + 0.45 * np.asarray(ident.skin_rgb, np.float32) if style == "buzz" else hair
    _blend(img[:, win[0], win[1]], cov, colour)
    if style == "long":
        for side in (-1.0, 1.0):
            d = _box_d(fx - side * (a + 1.5), fy - 0.1 * b, 5.5, 0.75 * b, 5.0)
            _blend(img[:, win[0], win[1]], _cov(d, fr.aa), hair)


def _eyes(fr: _Frame, img: np.ndarray, ident: Identity, attrs: Attributes) -> None:
    """Both eyes and brows in one window: coordinates are mirrored about the face's midline."""
    b = ident.face_height / 2.0
    es, s = ident.eye_spacing / 2.0, ident.eye_size
    ey0, rx, ry = -0.08 * b, 6.3 * s, 3.9 * s
    win = fr.window(0.0, ey0 - 4.0, es + rx + 3.0, ry + 9.0)
    if win is None:
        return
    fx = fr.fx[win]
    side = np.where(fx < 0.0, -1.0, 1.0).astype(np.float32)
    ex, ey = fx - side * es, fr.fy[win] - ey0  # eye-centred; ex keeps the viewer's direction
    mx = ex * side  # mirrored: positive towards the face's edge
    sub = img[:, win[0], win[1]]
    sclera = _cov(_ellipse_d(ex, ey, rx, ry), fr.aa)
    _blend(sub, sclera, SCLERA_RGB)
    gx = 2.6 * s * attrs.gaze_x
    iris_d = _circle_d(ex - gx, ey - 0.3, 3.3 * s)
    _blend(sub, sclera * _cov(iris_d, fr.aa), _scaled(ident.eye_rgb, 0.55))
    _blend(sub, sclera * _cov(iris_d + 0.8, fr.aa), ident.eye_rgb)
    _blend(sub, sclera * _cov(iris_d + 1.8 * s, fr.aa), PUPIL_RGB)
    _blend(sub, sclera * _cov(_circle_d(ex - gx - 1.0, ey + 0.8, 0.7), fr.aa), SCLERA_RGB)
    lid_y = -ry + 2.1 * ry * fr.st.blink
    _blend(sub, sclera * _cov(ey - lid_y, fr.aa), _scaled(ident.skin_rgb, 0.92))
    lash = _cov(np.abs(ey - lid_y) - 0.55, fr.aa) * _cov(np.abs(ex) - rx + 0.5, fr.aa)
    _blend(sub, lash, _scaled(ident.hair_rgb, 0.2) + 10.0)
    base = -8.5 * s + 0.5
    inner = (-5.5 * s, base - 3.2 * attrs.brow)
    outer = (6.5 * s, base - 1.6 * attrs.brow + 0.5)
    mid = (0.5 * (inner[0] + outer[0]), 0.5 * (inner[1] + outer[1]) - 1.0)
    brow = np.minimum(_segment_d(mx, ey, inner, mid, 1.5), _segment_d(mx, ey, mid, outer, 1.3))
    _blend(sub, _cov(brow, fr.aa), _scaled(ident.hair_rgb, 0.7))


def _nose(fr: _Frame, img: np.ndarray, ident: Identity) -> None:
    b = ident.face_height / 2.0
    ny = 0.27 * b
    win = fr.window(0.0, ny, 7.0, 4.0)
    if win is None:
        return
    x, y = fr.fx[win], fr.fy[win] - ny
    skin = np.asarray(ident.skin_rgb, np.float32)
    sub = img[:, win[0], win[1]]
    _blend(sub, 0.6 * _cov(_ellipse_d(x, y - 0.8, 5.5, 2.2), fr.aa), skin * 0.86)
    _blend(sub, 0.8 * _cov(_ellipse_d(np.abs(x) - 2.4, y, 1.4, 1.0), fr.aa), skin * 0.68)


def mouth_geometry(ident: Identity) -> tuple[float, float]:
    """Mouth centre-line height in face coordinates and the upper-lip thickness at the centre."""
    return 0.54 * ident.face_height / 2.0, 3.4


def _mouth(fr: _Frame, img: np.ndarray, ident: Identity, attrs: Attributes) -> None:
    st = fr.st
    my, t_up0 = mouth_geometry(ident)
    hw = MOUTH_HALF_WIDTH[0] + (MOUTH_HALF_WIDTH[1] - MOUTH_HALF_WIDTH[0]) * st.mouth_width
    h_open = MOUTH_MAX_OPEN * st.mouth_open
    win = fr.window(0.0, my + 0.5 * h_open, hw + 3.0, 0.5 * h_open + 10.0)
    if win is None:
        return
    u, v = fr.fx[win], fr.fy[win] - my
    sub = img[:, win[0], win[1]]
    un = np.minimum(np.abs(u) / hw, 1.0)
    shape = np.sqrt(1.0 - un * un)
    top = -SMILE_LIFT * attrs.smile * un * un  # centre line; corners rise with the smile
    bottom = top + h_open * shape
    side = np.abs(u) - hw
    lips = np.maximum(
        np.maximum(top - (t_up0 * shape**0.7 + 0.5) - v, v - bottom - (4.2 * shape + 0.5)), side
    )
    lip = np.asarray(ident.lip_rgb, np.float32)
    _blend(sub, _cov(lips, fr.aa), lip)
    _blend(
        sub, 0.25 * _cov(_ellipse_d(u, v - bottom - 2.2, 0.35 * hw, 1.1), fr.aa), np.minimum(lip * 1.3, 255)
    )
    if h_open > 0.0:
        inner = np.maximum(np.maximum(top - v, v - bottom), side + 0.8)
        interior = _cov(inner, fr.aa) * min(h_open, 1.0)
        _blend(sub, interior, INTERIOR_RGB)
        teeth_alpha = float(_clip((st.mouth_open - 0.3) * 6.0, 0.0, 1.0))
        if teeth_alpha > 0.0:
            teeth = np.maximum(inner, v - top - min(3.2, 0.25 * h_open) * shape)
            _blend(sub, teeth_alpha * _cov(teeth, fr.aa), TEETH_RGB)
    closed = 1.0 - min(h_open, 1.0)
    if closed > 0.0:
        line = np.maximum(np.abs(v - top) - 0.6, side + 0.5)
        _blend(sub, closed * _cov(line, fr.aa), lip * 0.72)


# ------------------------------------------------------------------------------------------- public


def render_frame(
    identity: Identity, attributes: Attributes, track: Track, index: int, size: int = 128
) -> np.ndarray:
    """Frame ``index`` of ``track`` as a (size, size, 3) uint8 image."""
    fr = _Frame(_State.at(track, index), size)
    img = _background(fr, identity, attributes)
    _hair_back(fr, img, identity)
    _torso(fr, img, identity)
    _face(fr, img, identity, attributes)
    _hair_front(fr, img, identity)
    _eyes(fr, img, identity, attributes)
    _nose(fr, img, identity)
    _mouth(fr, img, identity, attributes)
    img += 0.5
    planes = _clip(img, 0.0, 255.0).astype(np.uint8)
    out = np.empty((size, size, 3), np.uint8)
    for c in range(3):  # interleaving plane by plane is ~8x faster than a transposed copy
        out[..., c] = planes[c]
    return out


def render_clip(identity: Identity, attributes: Attributes, track: Track, size: int = 128) -> np.ndarray:
    """All frames of ``track`` as (F, size, size, 3) uint8."""
    out = np.empty((len(track), size, size, 3), np.uint8)
    for i in range(len(track)):
        out[i] = render_frame(identity, attributes, track, i, size)
    return out


def portrait(identity: Identity, attributes: Attributes | None = None, size: int = 128) -> np.ndarray:
    """The neutral still: mouth closed, eyes open, no motion, static camera."""
    return render_frame(identity, attributes or Attributes.NEUTRAL, Track.neutral(1), 0, size)


def mouth_box(identity: Identity, track: Track, index: int, size: int = 128) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) output-pixel box around the mouth in frame ``index``.

    Generous: it covers the widest mouth, a full smile and the maximum opening whatever the frame's
    own mouth state, so a loss weighted by it sees the whole mouth region."""
    fr_state = _State.at(track, index)
    fr = _Frame.__new__(_Frame)
    fr.size, fr.k, fr.st = size, size / CANVAS, fr_state
    fr.cos, fr.sin = math.cos(fr_state.tilt), math.sin(fr_state.tilt)
    my, t_up0 = mouth_geometry(identity)
    top, bottom = my - SMILE_LIFT - t_up0 - 2.0, my + MOUTH_MAX_OPEN + 5.0 + 2.0
    win = fr.window(0.0, 0.5 * (top + bottom), MOUTH_HALF_WIDTH[1] + 3.0, 0.5 * (bottom - top))
    if win is None:
        return 0, 0, 0, 0
    return win[0].start, win[0].stop, win[1].start, win[1].stop
