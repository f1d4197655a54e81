"""Stage 6: re-dubbing a video, fine-tuned through the camera branch, the rest of the model frozen.

The renderer draws the ground truth directly: one track (identity, head motion, blinks, camera)
rendered twice, with the mouth of another sentence (the source a user would upload) and with the
mouth of this clip's speech (the re-dub). The branch reads the source's latents less the
reference (``engine.redub``), the target is the re-dub, and the audio is the new speech, so the
only way to lower the loss is to copy the source everywhere but the mouth and to take the mouth
from the audio; the mouth weighs heavily for that reason. Windows of camera clips are mixed in,
so the branch keeps following camera moves, and since a zero branch input still adds nothing,
a plain portrait session is bit-identical to the model before this stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import ModelConfig
from engine.models.livehuman import LiveHumanModel
from engine.training import data
from engine.training.camera_stage import live_sigmas
from engine.training.device import module_device
from engine.training.dit_stage import flow_matching_loss
from engine.training.stage import step_rng
from engine.training.vae_stage import to_model_frames
from engine.training.windows import EncodedClip, audio_tokens, encode_clip, sample_items, window_batch


@dataclass(frozen=True)
class RedubTrainConfig:
    clips: int = 48  # re-dub pairs rendered for this stage
    frames: int = 101  # frames of each encoded: 4 s, 26 latents
    steps: int = 1500
    batch: int = 8
    lr: float = 1e-3
    mouth_weight: float = 20.0  # the mouth is all that differs from the source
    camera_mouth_weight: float = 4.0  # the camera stage's, for its clips
    camera_share: float = 0.35  # steps drawn from camera clips, so camera moves keep working
    camera_fraction: float = 0.25  # re-dub sources with a camera move of their own


@dataclass
class RedubClip:
    target: EncodedClip  # the re-dub; its reference is the source's first frame as a still
    source: torch.Tensor  # (C, T, h, w) the source video's latents, clip-latent aligned with target


def with_mouth_of(clip: data.Clip, other: data.Clip) -> data.Clip:
    """``clip``'s track with ``other``'s mouth (closed and neutral past ``other``'s end)."""
    track = clip.track.frames(0, clip.num_frames)
    n = min(clip.num_frames, other.num_frames)
    track.mouth_open = np.zeros(clip.num_frames, np.float32)
    track.mouth_width = np.full(clip.num_frames, 0.5, np.float32)
    track.mouth_open[:n] = other.track.mouth_open[:n]
    track.mouth_width[:n] = other.track.mouth_width[:n]
    return dataclasses.replace(clip, track=track)


@torch.no_grad()
def redub_clip(model: LiveHumanModel, clip: data.Clip, source: data.Clip, frames: int) -> RedubClip:
    """The pair as the DiT sees it: target latents of ``clip`` and latents of ``source`` (same
    track, other mouth), the reference being the source's first frame."""
    cfg = model.config
    target = encode_clip(model, clip, frames)
    n = 1 + 4 * (target.latents.shape[1] - 1)
    frames_in = to_model_frames(source.frames(0, n, cfg.height))[None].to(module_device(model))
    latents = model.vae.encode(frames_in)[0][0].cpu()
    reference = model.vae.encode(frames_in[:, :, :1])[0][0].cpu()
    return RedubClip(dataclasses.replace(target, reference=reference, camera=None), latents)


def make_redub_clips(
    model: LiveHumanModel,
    cfg: RedubTrainConfig,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[RedubClip]:
    out = []
    for i in range(cfg.clips):
        clip = data.make_clip("train", i, seed + 3, camera_fraction=cfg.camera_fraction)
        other = data.make_clip("train", cfg.clips + i, seed + 3)
        out.append(redub_clip(model, clip, with_mouth_of(clip, other), cfg.frames))
        if progress:
            progress(i + 1, cfg.clips)
    return out


def redub_step_fn(
    model: LiveHumanModel,
    clips: list[RedubClip],
    camera_clips: list[EncodedClip],
    config: ModelConfig,
    cfg: RedubTrainConfig,
    seed: int,
) -> Callable[[int], dict[str, float]]:
    sigmas = np.array(live_sigmas(config))
    targets = [c.target for c in clips]
    W = config.scheduler.window
    device = module_device(model)

    def step(step_index: int) -> dict[str, float]:
        rng, gen = step_rng(seed, "video", step_index)
        on_camera = bool(camera_clips) and rng.random() < cfg.camera_share
        encoded = camera_clips if on_camera else targets
        items = sample_items(encoded, rng, cfg.batch, W)
        weight = cfg.camera_mouth_weight if on_camera else cfg.mouth_weight
        batch = window_batch(encoded, items, config, weight, 0.0, gen)
        if not on_camera:
            for row, (c, k) in enumerate(items):
                batch.camera[row] = clips[c].source[:, k : k + W] - clips[c].target.reference
        batch = batch.to(device)
        with torch.no_grad():
            _, tokens = audio_tokens(model, batch, config)
        sigma = torch.tensor(rng.choice(sigmas, size=cfg.batch), dtype=torch.float32)
        loss = flow_matching_loss(model, batch, tokens, gen, sigma)
        loss.backward()
        return {"loss": float(loss.detach()), "camera": float(on_camera)}

    return step
