"""Camera moves: parsing with one-line errors, directions as the viewer sees them, intensity,
mixing, a live change without a jump, and the warp the branch reads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.config import FPS, ConfigError, get_preset
from engine.models.camera import (
    IDENTITY,
    PRESETS,
    CameraMove,
    CameraPath,
    camera_latents,
    check_camera,
    parse_camera,
    trajectory,
    warp,
    warp_frames,
)

SECONDS = 6


def end(text: str) -> np.ndarray:
    return trajectory(parse_camera(text), SECONDS * FPS)[-1]


def test_parse_takes_presets_intensities_and_pairs() -> None:
    assert parse_camera("push_in").presets == (("push_in", 1.0),)
    assert parse_camera("pan_left:30").presets == (("pan_left", 0.3),)
    assert parse_camera("push_in:50+handheld:20").presets == (("push_in", 0.5), ("handheld", 0.2))
    assert parse_camera(None).is_static and parse_camera("").is_static
    assert parse_camera("crane_up:0").is_static


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("orbit", "valid presets: static, push_in"),
        ("pan_left:150", "outside 0-100"),
        ("push_in:x", "push_in:x"),
    ],
)
def test_a_bad_camera_is_one_line_naming_the_valid_values(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_camera(text)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_at_most_two_presets_mix() -> None:
    with pytest.raises(ConfigError, match="at most 2"):
        parse_camera("push_in+pan_left+crane_up")


def test_each_preset_moves_the_picture_its_stated_way() -> None:
    zoom, x, y = 0, 1, 2
    assert end("push_in")[zoom] > 1.2 and end("push_out")[zoom] < 1 / 1.2
    assert end("pan_left")[x] > 0.1 and end("pan_right")[x] < -0.1  # the scene moves right / left
    assert end("crane_up")[y] > 0.08 and end("crane_down")[y] < -0.08  # the scene moves down / up
    for text in ("push_in", "push_out"):
        assert end(text)[x] == 0 and end(text)[y] == 0
    shake = trajectory(parse_camera("handheld"), 60 * FPS)
    assert 0.005 < np.abs(shake[:, x]).max() < 0.03, "a small shake"
    assert abs(shake[:, x].mean()) < 0.002 and abs(shake[:, y].mean()) < 0.002, "no drift"
    assert np.abs(np.diff(shake[:, x])).max() < 0.003, "smooth"


def test_zero_intensity_is_static_and_motion_grows_with_intensity() -> None:
    static = trajectory(CameraMove(), 100)
    for preset in PRESETS:
        assert np.array_equal(trajectory(parse_camera(f"{preset}:0"), 100), static)
    for preset in PRESETS[1:]:
        sizes = [
            np.abs(trajectory(parse_camera(f"{preset}:{i}"), 100) - static).sum() for i in (10, 40, 70, 100)
        ]
        assert all(a < b for a, b in zip(sizes, sizes[1:], strict=False)), (preset, sizes)


def test_two_presets_mix() -> None:
    mixed = end("push_in:50+pan_left:50")
    assert mixed[0] == pytest.approx(end("push_in:50")[0]) and mixed[1] == pytest.approx(
        end("pan_left:50")[1]
    )


def test_a_live_change_eases_from_the_pose_on_screen() -> None:
    path = CameraPath(parse_camera("pan_left"))
    path.change(parse_camera("crane_up+handheld"), from_frame=60)  # mid-move
    poses = path.poses(np.arange(200))
    steps = np.abs(np.diff(poses, axis=0)).max(axis=0)
    assert (steps < 0.006).all(), steps  # no jump anywhere, the change included
    # Poses are relative to the portrait's framing, not cumulative, so hours of changes stay framed:
    # the pan eases back out while the crane eases in.
    assert abs(poses[-1][1]) < 0.01 and poses[-1][2] > 0.08
    before = CameraPath(parse_camera("pan_left")).poses(np.arange(60))
    assert np.array_equal(poses[:60], before), "frames before the change keep their poses"


def test_the_warp_moves_content_the_way_the_pose_says() -> None:
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 14:18, 14:18] = 1.0
    ys, xs = np.mgrid[0:32, 0:32]

    def centroid(pose: tuple[float, float, float]) -> tuple[float, float, float]:
        out = warp(image, np.array([pose]))[0, 0].numpy()
        return (out * xs).sum() / out.sum(), (out * ys).sum() / out.sum(), out.sum()

    cx, cy, mass = centroid((1.0, 0.0, 0.0))
    right, _, _ = centroid((1.0, 0.25, 0.0))
    _, down, _ = centroid((1.0, 0.0, 0.25))
    _, _, bigger = centroid((1.5, 0.0, 0.0))
    assert right - cx == pytest.approx(8.0, abs=0.5) and down - cy == pytest.approx(8.0, abs=0.5)
    assert bigger / mass == pytest.approx(1.5**2, rel=0.1)


def test_a_static_camera_feeds_the_branch_exact_zeros() -> None:
    reference = torch.randn(1, 8, 1, 16, 16)
    poses = np.array([[1.0, 0.0, 0.0], [1.1, 0.02, 0.0]])
    latents = camera_latents(reference, poses)
    assert latents.shape == (1, 8, 2, 16, 16)
    assert torch.equal(latents[:, :, 0], torch.zeros(1, 8, 16, 16)) and latents[:, :, 1].abs().max() > 0


def test_a_model_without_the_branch_refuses_a_move_in_one_line() -> None:
    with pytest.raises(ConfigError, match="no trained camera branch"):
        check_camera(get_preset("tiny"), parse_camera("push_in"))
    check_camera(get_preset("tiny"), parse_camera("static"))  # static needs no branch


def test_a_live_change_reaches_the_dit_from_the_next_windows_first_new_latent() -> None:
    from tests.live_change import around_a_change

    tiny = get_preset("tiny")
    latents = dataclasses.replace(tiny, scheduler=dataclasses.replace(tiny.scheduler, camera_warp="latents"))
    cameras, before, config, _, _ = around_a_change(
        5, lambda scheduler, _: scheduler.set_camera(parse_camera("pan_left")), seconds=2.0, config=latents
    )
    O = config.scheduler.overlap
    assert all(torch.equal(c, torch.zeros_like(c)) for c in cameras[:before]), "static until the change"
    first_after = cameras[before]
    assert torch.equal(first_after[:, :, :O], torch.zeros_like(first_after[:, :, :O])), (
        "the overlap keeps its camera"
    )
    assert first_after[:, :, O:].abs().max() > 0, "the first new latent moves"
    assert cameras[-1].abs().max() > first_after.abs().max(), "and the move eases in"


def test_a_camera_on_frames_moves_exactly_the_frames_after_the_change_and_not_the_dit_input() -> None:
    """The tiny preset applies the camera to decoded frames: the DiT sees no camera at all, so the
    moved run is the unchanged run's frames, each warped by its pose from the change on."""
    from tests.live_change import around_a_change

    assert get_preset("tiny").scheduler.camera_warp == "frames"
    unchanged = around_a_change(5, None, seconds=2.0)
    moved = around_a_change(5, lambda scheduler, _: scheduler.set_camera(parse_camera("pan_left")), 2.0)
    assert all(torch.equal(c, torch.zeros_like(c)) for c in moved.inputs)
    poses = moved.scheduler.generator.camera.poses(np.arange(len(moved.frames)))
    first_moved = int(np.argmax(~np.all(poses == IDENTITY, axis=1)))
    assert first_moved >= 8 and np.abs(poses[-1, 1]) > 0.01, "frames already made keep their camera"
    assert np.array_equal(moved.frames, warp_frames(unchanged.frames, poses))
