"""Clips as the DiT sees them: latents, reference, audio; cut into scheduler-shaped windows.

Once the VAE is trained every clip is encoded once, and the DiT stages sample windows from the
cache. A window is cut with the geometry the live scheduler uses (``window_audio_span``), so the
audio encoder trains on exactly the spans, edges and zero padding it will meet at inference.

Frame bookkeeping. Encoding a clip gives latent 0 for frame 0 alone (a still, like the encoded
portrait) and latent k >= 1 for frames [4k-3, 4k+1). The scheduler's stream latent n covers
stream frames [4n, 4n+4), with audio at sample 640*i for stream frame i. So clip latent k is
stream latent k-1, stream frame i is clip frame i+1, and its audio starts at clip sample 640*(i+1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import FRAMES_PER_LATENT, SAMPLES_PER_FRAME, ModelConfig
from engine.models.audio import latent_audio_tokens, window_audio_span
from engine.models.camera import camera_latents
from engine.models.livehuman import LiveHumanModel
from engine.training import avatar
from engine.training.data import Clip
from engine.training.device import module_device
from engine.training.vae_stage import to_model_frames

# Zero padding either side of a clip's audio, so any span near its edges can be cut.
_AUDIO_PAD_FRAMES = 32


@dataclass
class EncodedClip:
    latents: torch.Tensor  # (C, T, h, w): clip latents, 0 a still of frame 0
    reference: torch.Tensor  # (C, 1, h, w): the encoded portrait
    audio: np.ndarray  # (N,) float32 at 16 kHz, zero-padded by _AUDIO_PAD_FRAMES each side
    mouth: np.ndarray  # (F, 2) float32 ground-truth mouth open and width per clip frame
    mouth_mask: torch.Tensor  # (T, h, w) 1 on latent pixels the mouth touches in that latent
    camera: np.ndarray | None = None  # (T, 3) camera pose (zoom, x, y) per clip latent; None: static

    @property
    def num_latents(self) -> int:
        return self.latents.shape[1]


@torch.no_grad()
def encode_clip(model: LiveHumanModel, clip: Clip, max_frames: int = 301) -> EncodedClip:
    """The clip's latents on the CPU (where the stages cache and batch them), encoded on the
    model's device."""
    cfg = model.config
    device = module_device(model)
    n = 1 + FRAMES_PER_LATENT * ((min(clip.num_frames, max_frames) - 1) // FRAMES_PER_LATENT)
    latents = model.vae.encode(to_model_frames(clip.frames(0, n, cfg.height))[None].to(device))[0].cpu()
    reference = model.vae.encode(to_model_frames(clip.portrait(cfg.height)[None])[None].to(device))[0].cpu()
    T, f = latents.shape[2], cfg.vae.spatial_factor
    mask = torch.zeros(T, cfg.latent_height, cfg.latent_width)
    for k in range(T):
        for frame in range(max(0, 4 * k - 3), 4 * k + 1):
            y0, y1, x0, x1 = clip.mouth_box(frame, cfg.height)
            mask[k, y0 // f : -(-y1 // f), x0 // f : -(-x1 // f)] = 1.0
    moved = clip.meta.get("camera", {}).get("preset", "static") != "static"
    return EncodedClip(
        latents=latents[0],
        reference=reference[0],
        audio=_padded_audio(clip, n),
        mouth=_mouth(clip, n),
        mouth_mask=mask,
        camera=clip_latent_poses(clip, T) if moved else None,
    )


def _padded_audio(clip: Clip, frames: int) -> np.ndarray:
    pad = np.zeros(_AUDIO_PAD_FRAMES * SAMPLES_PER_FRAME, np.float32)
    return np.concatenate([pad, clip.audio[: frames * SAMPLES_PER_FRAME], pad])


def _mouth(clip: Clip, frames: int) -> np.ndarray:
    return np.stack([clip.track.mouth_open[:frames], clip.track.mouth_width[:frames]], axis=1).astype(
        np.float32
    )


@dataclass
class AudioTrack:
    """A clip's audio and mouth alone, as ``EncodedClip`` holds them: what the hearing stage
    trains on (no frames, so no rendering or encoding)."""

    audio: np.ndarray  # (N,) float32 at 16 kHz, zero-padded by _AUDIO_PAD_FRAMES each side
    mouth: np.ndarray  # (F, 2) float32 ground-truth mouth open and width per clip frame

    @property
    def num_latents(self) -> int:
        """Clip latents, counted as ``encode_clip`` does (latent 0 is frame 0 alone)."""
        return 1 + (len(self.mouth) - 1) // FRAMES_PER_LATENT


def clip_audio_track(clip: Clip) -> AudioTrack:
    return AudioTrack(audio=_padded_audio(clip, clip.num_frames), mouth=_mouth(clip, clip.num_frames))


def audio_window(
    track: AudioTrack | EncodedClip, k: int, config: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(audio (span samples,), mouth target (span frames, 2), inside (span frames,)) for the window
    whose first latent is clip latent ``k``: the span the scheduler cuts for stream latent k-1,
    read at clip frame = stream frame + 1."""
    first, count = window_audio_span(config, k - 1)
    start = (first + 1 + _AUDIO_PAD_FRAMES) * SAMPLES_PER_FRAME
    n = count * SAMPLES_PER_FRAME + config.audio.n_fft - config.audio.hop_length
    frames = np.arange(first + 1, first + 1 + count)
    inside = (frames >= 0) & (frames < len(track.mouth))
    target = np.zeros((count, 2), np.float32)
    target[inside] = track.mouth[frames[inside]]
    return (
        torch.from_numpy(track.audio[start : start + n]),
        torch.from_numpy(target),
        torch.from_numpy(inside.astype(np.float32)),
    )


def clip_latent_poses(clip: Clip, latents: int) -> np.ndarray:
    """(latents, 3) mean camera pose over each clip latent's frames (latent 0 is frame 0 alone)."""
    t = clip.track
    frames = np.stack([t.cam_zoom, t.cam_x / avatar.CANVAS, t.cam_y / avatar.CANVAS], axis=1).astype(
        np.float64
    )
    poses = [frames[0]]
    poses += [frames[4 * k - 3 : 4 * k + 1].mean(axis=0) for k in range(1, latents)]
    return np.stack(poses)


def encode_clips(
    model: LiveHumanModel,
    clips: list[Clip],
    max_frames: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[EncodedClip]:
    encoded = []
    for i, clip in enumerate(clips):
        encoded.append(encode_clip(model, clip, max_frames))
        if progress:
            progress(i + 1, len(clips))
    return encoded


@dataclass
class WindowBatch:
    x0: torch.Tensor  # (B, C, W, h, w) clean latents of the window
    cond: torch.Tensor  # (B, 2C+1, W, h, w) mask, motion prefix, reference
    audio: torch.Tensor  # (B, span samples) model audio of the window's span
    aux_target: torch.Tensor  # (B, span frames, 2) mouth open/width per span frame
    aux_mask: torch.Tensor  # (B, span frames) 1 where the frame is inside the clip
    weight: torch.Tensor  # (B, 1, W, h, w) loss weight, heavier on the mouth
    camera: torch.Tensor  # (B, C, W, h, w) camera latents (zeros for a static camera)
    items: list[tuple[int, int]]  # (clip index, clip latent of the window's first latent)

    def to(self, device: torch.device) -> WindowBatch:
        """The batch with its tensors on ``device``: batches are drawn on the CPU (see
        ``engine.training.device``) and moved once, just before the model reads them."""
        tensors = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(
            self, **{k: v.to(device) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
        )


def sample_items(
    clips: list[EncodedClip] | list[AudioTrack], rng: np.random.Generator, count: int, window: int
) -> list[tuple[int, int]]:
    """Random (clip, first latent) pairs; clips weighted by how many windows they hold."""
    sizes = np.array([c.num_latents - window + 1 for c in clips], dtype=np.float64)
    picks = rng.choice(len(clips), size=count, p=sizes / sizes.sum())
    return [(int(c), int(rng.integers(0, sizes[c]))) for c in picks]


def window_batch(
    encoded: list[EncodedClip],
    items: list[tuple[int, int]],
    config: ModelConfig,
    mouth_weight: float,
    prefix_noise: float = 0.0,
    gen: torch.Generator | None = None,
) -> WindowBatch:
    s = config.scheduler
    W, O = s.window, s.overlap
    x0, cond, audio, aux_t, aux_m, weight, camera = [], [], [], [], [], [], []
    for clip_index, k in items:
        e = encoded[clip_index]
        window = e.latents[:, k : k + W]  # (C, W, h, w)
        C, _, h, w = window.shape
        # 1. Conditioning as the generator builds it: mask + clean prefix on the overlap,
        # reference everywhere.
        mask = torch.zeros(1, W, h, w)
        mask[:, :O] = 1.0
        motion = torch.zeros_like(window)
        motion[:, :O] = window[:, :O]
        if prefix_noise:
            motion[:, :O] += prefix_noise * torch.randn(C, O, h, w, generator=gen)
        cond.append(torch.cat([mask, motion, e.reference.expand(-1, W, -1, -1)]))
        x0.append(window)
        weight.append(1.0 + mouth_weight * e.mouth_mask[k : k + W][None])
        poses = None if e.camera is None else e.camera[k : k + W]
        camera.append(
            torch.zeros_like(window) if poses is None else camera_latents(e.reference[None], poses)[0]
        )
        # 2. The audio span and the mouth over it.
        span_audio, target, inside = audio_window(e, k, config)
        audio.append(span_audio)
        aux_t.append(target)
        aux_m.append(inside)
    return WindowBatch(
        x0=torch.stack(x0),
        cond=torch.stack(cond),
        audio=torch.stack(audio),
        aux_target=torch.stack(aux_t),
        aux_mask=torch.stack(aux_m),
        weight=torch.stack(weight),
        camera=torch.stack(camera),
        items=list(items),
    )


def audio_tokens(
    model: LiveHumanModel, batch: WindowBatch, config: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, F, D), tokens (B, W, K, D)) for a batch, through the trainable encoder."""
    features = model.audio(batch.audio)
    first, _ = window_audio_span(config, 0)
    a = config.audio
    tokens = latent_audio_tokens(
        features, first, 0, config.scheduler.window, a.context_before_frames, a.context_after_frames
    )
    return features, tokens
