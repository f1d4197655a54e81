"""Camera moves: eight presets with a continuous intensity, mixed in pairs, as per-frame 2D poses;
and the warp that turns a session's reference latent into a camera-moved reference video, which
the DiT's zero-initialised camera branch (``WanDiT.camera_embedding``) reads.

A pose is (zoom, shift_x, shift_y), as the viewer sees it: zoom > 1 makes the subject larger;
shifts are the fraction of the frame's width or height that the scene moves, positive right and
down. So ``pan_left`` (the camera turns left) moves the scene right, ``crane_up`` (the camera
rises) moves it down.

Depth-free: the whole picture is scaled about its centre and shifted, one affine map. A portrait's
depth range is small against the camera distance, so the missing parallax is a small error, and
the same map is cheap enough to apply every window. Where it applies is the model config's
``scheduler.camera_warp``:

- "latents" (DESIGN's ControlNet path): the warp runs in latent space (the tiny VAE's latents are
  a 16x16 grid whose colour shortcut makes them an image), no VAE encode per window, and the DiT's
  branch renders the move; poses and warp took 0.53 ms per window on the 2-core CPU.
- "frames": each decoded frame is warped (``warp_frames``). The tiny preset's default, because its
  trained branch only moves content in whole latent cells: a pan came out as two 8-pixel jumps
  over 4 s, and the ~1% handheld shake as nothing. The branch still reads a re-dub source video.

Moves ease in over ``MOVE_S`` and then hold, so hours of streaming stay framed. Poses are a pure
function of (move, frame, where the move started from), so a live change eases from the pose on
screen to the new move's end pose, from the next window on: no jump.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import FPS, ConfigError, ModelConfig

PRESETS = ("static", "push_in", "push_out", "pan_left", "pan_right", "crane_up", "crane_down", "handheld")
MOVE_S = 4.0  # ease-in time of a move
ZOOM = 0.25  # push_in at 100%: 1.25x
SHIFT_X = 14.0 / 128.0  # pan at 100%: 11% of the frame width
SHIFT_Y = 12.0 / 128.0  # crane at 100%: 9% of the frame height
# handheld at 100%: a smooth shake of about 1% of the frame, from three incommensurate sines per
# axis, so it never repeats visibly and has no drift (each sine is zero-mean).
SHAKE = ((0.011, 0.31), (0.006, 0.73), (0.003, 1.37))
SHAKE_ZOOM = 0.005
MAX_MOVES = 2

Pose = tuple[float, float, float]
IDENTITY: Pose = (1.0, 0.0, 0.0)


@dataclass(frozen=True)
class CameraMove:
    """Up to two presets with intensities in [0, 1]: ``parse_camera("push_in:50+pan_left:30")``."""

    presets: tuple[tuple[str, float], ...] = (("static", 0.0),)

    def __str__(self) -> str:
        return "+".join(f"{name}:{round(100 * intensity)}" for name, intensity in self.presets)

    @property
    def is_static(self) -> bool:
        return all(name == "static" or intensity == 0.0 for name, intensity in self.presets)

    def end_pose(self) -> Pose:
        """Where the eased moves arrive (handheld adds its shake on top, around this)."""
        zoom, x, y = 1.0, 0.0, 0.0
        for name, a in self.presets:
            if name == "push_in":
                zoom *= 1.0 + ZOOM * a
            elif name == "push_out":
                zoom /= 1.0 + ZOOM * a
            elif name in ("pan_left", "pan_right"):
                x += SHIFT_X * a * (1.0 if name == "pan_left" else -1.0)
            elif name in ("crane_up", "crane_down"):
                y += SHIFT_Y * a * (1.0 if name == "crane_up" else -1.0)
        return zoom, x, y

    def shake(self, t: np.ndarray) -> np.ndarray:
        """(len(t), 3) handheld offsets (zoom, x, y) at times ``t`` seconds; zeros without it."""
        a = sum(i for name, i in self.presets if name == "handheld")
        out = np.zeros((len(t), 3))
        if a:
            for axis, phase in ((1, 0.0), (2, 1.9)):
                out[:, axis] = a * sum(
                    amp * np.sin(2 * math.pi * f * t + phase * k) for k, (amp, f) in enumerate(SHAKE)
                )
            out[:, 0] = a * SHAKE_ZOOM * np.sin(2 * math.pi * 0.23 * t + 0.7)
        return out


def parse_camera(text: str | None) -> CameraMove:
    """``PRESET[:INTENSITY][+PRESET:INTENSITY]``, intensity in percent (default 100); one line
    naming the valid values when it is anything else."""
    if text is None or not text.strip():
        return CameraMove()
    presets = []
    for part in text.strip().split("+"):
        match = re.fullmatch(r"\s*([a-z_]+)\s*(?::\s*([0-9]+(?:\.[0-9]+)?)\s*%?)?\s*", part)
        if not match or match.group(1) not in PRESETS:
            raise ConfigError(
                f"camera '{text}': unknown preset '{part.strip()}'; valid presets: {', '.join(PRESETS)} "
                "(as PRESET[:INTENSITY 0-100][+PRESET:INTENSITY])"
            )
        intensity = 100.0 if match.group(2) is None else float(match.group(2))
        if not 0.0 <= intensity <= 100.0:
            raise ConfigError(f"camera '{text}': intensity {intensity:g} is outside 0-100")
        presets.append((match.group(1), intensity / 100.0))
    if len(presets) > MAX_MOVES:
        raise ConfigError(f"camera '{text}': at most {MAX_MOVES} presets can be mixed, got {len(presets)}")
    return CameraMove(tuple(presets))


def check_camera(config: ModelConfig, move: CameraMove | None) -> None:
    """A camera move on a model without a trained camera branch is refused, not ignored."""
    if move is not None and not move.is_static and not config.capabilities.camera:
        raise ConfigError(
            f"camera '{move}': model '{config.name}' has no trained camera branch (capabilities.camera "
            "is false); use a model trained with one, such as the default"
        )


def smoothstep(u: np.ndarray) -> np.ndarray:
    """Smoothstep: zero velocity at both ends, so a move starts and stops without a jerk."""
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


@dataclass(frozen=True)
class _Segment:
    from_frame: int
    move: CameraMove
    start_pose: Pose  # the eased pose (no shake) where this move began
    previous: CameraMove  # whose shake fades out while this move eases in


class CameraPath:
    """The camera over a whole stream: moves begun at given frames, each easing from the pose the
    previous one had reached. Poses are a pure function of the frame index, so a window generated
    twice (a rollback after an interrupt) sees the same camera."""

    KEEP = 8  # moves remembered; older ones ended long before any window that can still run

    def __init__(self, move: CameraMove | None = None) -> None:
        self._segments = [_Segment(-(10**9), CameraMove(), IDENTITY, CameraMove())]
        if move is not None and not move.is_static:
            self.change(move, 0)

    @property
    def is_static(self) -> bool:
        return len(self._segments) == 1 and self._segments[0].move.is_static

    def change(self, move: CameraMove, from_frame: int) -> None:
        """Ease from the pose at ``from_frame`` to ``move``; later moves than that are replaced."""
        self._segments = [s for s in self._segments if s.from_frame < from_frame] or self._segments[:1]
        start = tuple(float(v) for v in self._poses(np.array([from_frame], np.float64), shake=False)[0])
        self._segments.append(_Segment(from_frame, move, start, self._segments[-1].move))
        del self._segments[: -self.KEEP]

    def poses(self, frames: np.ndarray) -> np.ndarray:
        """(len(frames), 3) poses at stream frame indices ``frames``: eased moves plus shake, the
        previous move's shake fading out as the new one eases in."""
        return self._poses(np.asarray(frames, np.float64), shake=True)

    def _poses(self, frames: np.ndarray, shake: bool) -> np.ndarray:
        poses = np.zeros((len(frames), 3))
        starts = np.array([s.from_frame for s in self._segments])
        which = np.searchsorted(starts, frames, side="right") - 1
        for i, seg in enumerate(self._segments):
            pick = which == i
            if not pick.any():
                continue
            u = smoothstep((frames[pick] - seg.from_frame) / (MOVE_S * FPS))[:, None]
            begin, end = np.asarray(seg.start_pose), np.asarray(seg.move.end_pose())
            poses[pick] = begin + u * (end - begin)
            # Zoom eases in log space, so push_in and push_out are mirror images.
            poses[pick, 0] = np.exp(np.log(begin[0]) + u[:, 0] * (np.log(end[0]) - np.log(begin[0])))
            if shake:
                t = frames[pick] / FPS
                offsets = u * seg.move.shake(t) + (1.0 - u) * seg.previous.shake(t)
                poses[pick, 0] *= 1.0 + offsets[:, 0]
                poses[pick, 1:] += offsets[:, 1:]
        return poses

    def latent_poses(self, first_latent: int, count: int) -> np.ndarray:
        """(count, 3): the mean pose over each stream latent's 4 frames."""
        frames = np.arange(4 * first_latent, 4 * (first_latent + count))
        return self.poses(frames).reshape(count, 4, 3).mean(axis=1)


def trajectory(move: CameraMove, num_frames: int) -> np.ndarray:
    """(num_frames, 3) poses of ``move`` begun at frame 0 from the identity pose."""
    return CameraPath(move).poses(np.arange(num_frames))


def warp(images: torch.Tensor, poses: np.ndarray) -> torch.Tensor:
    """Warp ``images`` (N, C, H, W) by ``poses`` (N, 3), depth-free: output pixel p shows the input
    at centre + (p - centre - shift) / zoom; the border colour extends past the edges."""
    poses_t = torch.as_tensor(np.asarray(poses), dtype=images.dtype)
    zoom, x, y = poses_t[:, 0], poses_t[:, 1], poses_t[:, 2]
    theta = torch.zeros(len(poses_t), 2, 3, dtype=images.dtype)
    # affine_grid works in [-1, 1] coordinates: a shift of s frame widths is 2s there.
    theta[:, 0, 0] = 1.0 / zoom
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, 0, 2] = -2.0 * x / zoom
    theta[:, 1, 2] = -2.0 * y / zoom
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def warp_frames(frames: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Warp uint8 frames (N, H, W, 3) by ``poses`` (N, 3) as ``warp`` does; frames at the identity
    pose come back untouched (bit-exact, not resampled)."""
    poses = np.asarray(poses, np.float64)
    move = ~np.all(poses == np.asarray(IDENTITY), axis=1)
    if not move.any():
        return frames
    out = frames.copy()
    images = torch.from_numpy(frames[move]).permute(0, 3, 1, 2).float()
    moved = warp(images, poses[move]).round().clamp(0, 255).to(torch.uint8)
    out[move] = moved.permute(0, 2, 3, 1).numpy()
    return out


def camera_latents(
    reference: torch.Tensor, poses: np.ndarray, video: torch.Tensor | None = None
) -> torch.Tensor:
    """What the camera branch reads: the reference latent (1, C, 1, h, w), or each latent of a
    re-dub source ``video`` (1, C, T, h, w), moved along ``poses`` (T, 3), less the reference, as
    (1, C, T, h, w). Without a video the identity pose gives exactly zero, the input a model without
    a camera gets, so ``static`` (and any move at 0%) is the base model."""
    still = reference[0, :, 0]  # (C, h, w)
    poses = np.asarray(poses, np.float64)
    frames = still[None].expand(len(poses), -1, -1, -1) if video is None else video[0].transpose(0, 1)
    moved = frames.clone()  # (T, C, h, w); the identity pose is exact, not resampling round-off
    move = ~np.all(poses == np.asarray(IDENTITY), axis=1)
    if move.any():  # a re-dub with a static camera warps nothing, every window
        moved[move] = warp(frames[move].contiguous(), poses[move])
    return (moved - still[None]).permute(1, 0, 2, 3)[None]
