"""Procedural avatar renderer and the estimators that read its state back out of frames."""

from __future__ import annotations

import numpy as np
import pytest

from engine.training import avatar, estimators


def _ident(seed: int = 0) -> avatar.Identity:
    return avatar.Identity.sample(np.random.default_rng(seed))


def _skin_centroid(img: np.ndarray, ident: avatar.Identity) -> np.ndarray:
    """Centroid (x, y) of the face's skin-coloured pixels."""
    ys, xs = np.nonzero(np.abs(img.astype(int) - np.asarray(ident.skin_rgb)).sum(-1) < 25)
    return np.array([xs.mean(), ys.mean()])


def test_render_frame_shape_determinism_and_identity() -> None:
    track = avatar.Track.neutral(1)
    a = avatar.render_frame(_ident(0), avatar.Attributes.NEUTRAL, track, 0)
    b = avatar.render_frame(_ident(0), avatar.Attributes.NEUTRAL, track, 0)
    c = avatar.render_frame(_ident(1), avatar.Attributes.NEUTRAL, track, 0)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5.0


def test_identity_and_attributes_round_trip() -> None:
    ident = _ident(3)
    assert avatar.Identity.from_dict(ident.to_dict()) == ident
    attrs = avatar.Attributes.sample(np.random.default_rng(1))
    assert avatar.Attributes.from_dict(attrs.to_dict()) == attrs
    track = avatar.idle_track(np.random.default_rng(0), 30)
    again = avatar.Track.from_arrays(track.to_arrays())
    assert len(again) == 30 and len(track.frames(5, 10)) == 5


def test_mouth_open_changes_only_the_mouth_box() -> None:
    ident = _ident(2)
    track = avatar.Track.neutral(2)
    track.mouth_open[1] = 1.0
    closed, open_ = (avatar.render_frame(ident, avatar.Attributes.NEUTRAL, track, i) for i in range(2))
    diff = np.abs(closed.astype(int) - open_.astype(int)).sum(-1) > 30
    y0, y1, x0, x1 = avatar.mouth_box(ident, track, 1)
    inside = diff[y0:y1, x0:x1].sum()
    assert inside > 150
    # Far outside (beyond the chin, which drops with the jaw) nothing changes.
    near = diff[max(y0 - 8, 0) : y1 + 8, max(x0 - 8, 0) : x1 + 8].sum()
    assert diff.sum() - near == 0 and diff.sum() - inside <= 0.1 * inside
    # Closed lips show no dark interior.
    lum = closed[y0:y1, x0:x1].astype(float) @ [0.2126, 0.7152, 0.0722]
    assert lum.min() > 30.0


@pytest.mark.parametrize(
    ("preset", "axis", "sign"),
    [("pan_left", 0, 1), ("pan_right", 0, -1), ("crane_up", 1, 1), ("crane_down", 1, -1)],
)
def test_camera_directions(preset: str, axis: int, sign: int) -> None:
    ident = _ident(4)
    zoom, cx, cy = avatar.camera_track(preset, 1.0, 150, np.random.default_rng(0))
    track = avatar.Track.neutral(150)
    track.cam_zoom, track.cam_x, track.cam_y = zoom, cx, cy
    first = avatar.render_frame(ident, avatar.Attributes.NEUTRAL, track, 0)
    last = avatar.render_frame(ident, avatar.Attributes.NEUTRAL, track, 149)
    shift = _skin_centroid(last, ident)[axis] - _skin_centroid(first, ident)[axis]
    assert sign * shift > 4.0


def test_push_in_enlarges_and_zero_intensity_is_static() -> None:
    ident = _ident(5)
    rng = np.random.default_rng(0)
    zoom, cx, cy = avatar.camera_track("push_in", 1.0, 150, rng)
    assert zoom[-1] > 1.2 and zoom[0] == pytest.approx(1.0)
    zoom_out, _, _ = avatar.camera_track("push_out", 1.0, 150, rng)
    assert zoom_out[-1] < 0.85

    def face_width(z: float) -> int:
        track = avatar.Track.neutral(1)
        track.cam_zoom[0] = z
        img = avatar.render_frame(ident, avatar.Attributes.NEUTRAL, track, 0).astype(int)
        row = img[64]
        return int((np.abs(row - np.asarray(ident.skin_rgb)).sum(-1) < 30).sum())

    assert face_width(float(zoom[-1])) > face_width(1.0) + 6
    for preset in avatar.CAMERA_PRESETS:
        z, x, y = avatar.camera_track(preset, 0.0, 50, np.random.default_rng(1))
        assert np.allclose(z, 1.0) and np.allclose(x, 0.0) and np.allclose(y, 0.0)
    hz, hx, hy = avatar.camera_track("handheld", 1.0, 500, np.random.default_rng(2))
    assert abs(hx.mean()) < 1e-3 and 0.2 < np.abs(hx).max() < 3.0


def test_blink_closes_eyes_and_idle_motion_is_bounded() -> None:
    ident = _ident(6)
    track = avatar.Track.neutral(2)
    track.blink[1] = 1.0
    open_, shut = (avatar.render_frame(ident, avatar.Attributes.NEUTRAL, track, i) for i in range(2))
    white = [(img.min(-1) > 215).sum() for img in (open_, shut)]
    assert white[0] > 40 and white[1] < 0.2 * white[0]

    idle = avatar.idle_track(np.random.default_rng(7), 60 * avatar.FPS)
    blinks = np.sum(np.diff((idle.blink > 0.5).astype(int)) == 1)
    assert 8 <= blinks <= 32
    assert np.abs(idle.head_x).max() <= 4.0 and abs(idle.head_x.mean()) < 0.5
    assert np.abs(idle.head_tilt).max() <= 0.06
    assert np.all(idle.cam_zoom == 1.0) and np.all(idle.mouth_open == 0.0)


def test_ciede2000_matches_sharma_pairs() -> None:
    lab1 = np.array([[50, 2.6772, -79.7751], [50, -1.3802, -84.2814], [50, 0, 0], [2.0776, 0.0795, -1.135]])
    lab2 = np.array([[50, 0, -82.7485], [50, 0, -82.7485], [50, -1, 2], [0.9033, -0.0636, -0.5514]])
    assert np.allclose(estimators.ciede2000(lab1, lab2), [2.0425, 1.0000, 2.3669, 0.9082], atol=1e-4)
    white = estimators.rgb_to_lab(np.array([255, 255, 255], np.uint8))
    assert np.allclose(white, [100.0, 0.0, 0.0], atol=0.01)


def test_validate_estimators() -> None:
    scores = estimators.validate_estimators(rng_seed=0, clips=6, frames=120)
    assert scores["mouth_corr"] >= 0.95
    assert scores["mouth_corr_blurred"] >= 0.9
    assert scores["closed_accuracy"] >= 0.95
    assert scores["identity_other"] > 3.0 * scores["identity_self"]
    assert scores["gaze_corr"] >= 0.8
    # smile_estimate is not validated yet (corr ~0.7 on long clips, worse on short ones); prompt
    # control, which needs it, is issue 7's work, so nothing here relies on it.
