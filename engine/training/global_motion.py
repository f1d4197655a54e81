"""Global motion between two frames, as a camera pose: what the camera tests read from video.

``global_motion(a, b)`` finds the (zoom, x, y) with ``b ~ warp(a, pose)`` in the units of
``engine.models.camera`` (zoom about the centre, shifts in frame widths and heights, positive
right and down). Zoom by a 1-D search (warp ``a`` by each candidate zoom), translation by phase
correlation of the zoomed ``a`` against ``b`` with a parabolic sub-pixel peak, and the candidate
whose full warp matches ``b`` best wins. A portrait on a plain background has few features, which
is why this compares whole frames instead of tracking points. ``validate_global_motion`` scores
it on the renderer's own camera moves.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.models.camera import warp

ZOOMS = np.geomspace(0.72, 1.4, 41)


def _gray(frame: np.ndarray) -> np.ndarray:
    return np.asarray(frame, np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


def _warp(gray: np.ndarray, pose: tuple[float, float, float]) -> np.ndarray:
    image = torch.from_numpy(gray).float()[None, None]
    return warp(image, np.array([pose]))[0, 0].double().numpy()


def _subpixel(c: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """Parabolic refinement of a correlation peak at (i, j), wrapping at the edges."""
    h, w = c.shape

    def offset(m: float, z: float, p: float) -> float:
        denominator = m - 2 * z + p
        return 0.0 if denominator == 0 else 0.5 * (m - p) / denominator

    dy = offset(c[(i - 1) % h, j], c[i, j], c[(i + 1) % h, j])
    dx = offset(c[i, (j - 1) % w], c[i, j], c[i, (j + 1) % w])
    return i + dy, j + dx


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(dx, dy) in pixels such that ``b`` is ``a`` moved right by dx and down by dy."""
    h, w = a.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    cross = fb * np.conj(fa)
    c = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12)).real
    i, j = np.unravel_index(int(np.argmax(c)), c.shape)
    y, x = _subpixel(c, int(i), int(j))
    return (x + w / 2) % w - w / 2, (y + h / 2) % h - h / 2


def global_motion(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """The camera pose (zoom, x, y) that carries frame ``a`` (H, W, 3) onto frame ``b``."""
    ga, gb = _gray(a), _gray(b)
    h, w = ga.shape
    best: tuple[float, tuple[float, float, float]] | None = None
    for zoom in ZOOMS:
        zoomed = _warp(ga, (float(zoom), 0.0, 0.0))
        dx, dy = _shift(zoomed, gb)
        pose = (float(zoom), dx / w, dy / h)
        error = float(np.abs(_warp(ga, pose) - gb).mean())
        if best is None or error < best[0]:
            best = (error, pose)
    assert best is not None
    return best[1]


def validate_global_motion(clips: int = 8, seed: int = 0, frames: int = 150) -> dict[str, float]:
    """Estimated against true camera poses between frame 0 and frame ``frames`` of rendered camera
    clips (every preset): correlation per axis and the sign agreement of clear moves. Idle head
    motion is in the renders too, so it is part of the error."""
    from engine.training.avatar import CANVAS
    from engine.training.data import make_clip

    truth, estimate = [], []
    for index in range(clips):
        clip = make_clip("val", index, seed, camera_fraction=1.0)
        last = min(frames, clip.num_frames - 1)
        video = clip.frames(0, last + 1)
        t = clip.track
        truth.append((t.cam_zoom[last] / t.cam_zoom[0], t.cam_x[last] / CANVAS, t.cam_y[last] / CANVAS))
        estimate.append(global_motion(video[0], video[last]))
    truth_a, estimate_a = np.array(truth), np.array(estimate)
    clear = np.abs(truth_a - [1.0, 0.0, 0.0]) > [0.05, 0.03, 0.03]
    signs = np.sign(estimate_a - [1.0, 0.0, 0.0]) == np.sign(truth_a - [1.0, 0.0, 0.0])
    return {
        "mean_abs_error_zoom": float(np.abs(truth_a[:, 0] - estimate_a[:, 0]).mean()),
        "mean_abs_error_x": float(np.abs(truth_a[:, 1] - estimate_a[:, 1]).mean()),
        "mean_abs_error_y": float(np.abs(truth_a[:, 2] - estimate_a[:, 2]).mean()),
        "sign_agreement": float(signs[clear].mean()) if clear.any() else 1.0,
        "clear_moves": int(clear.sum()),
    }
