"""Add-on stage: the VAE decoder learns to read audio, with the encoder frozen.

Why. A latent holds four frames in 8 channels at 1/8 resolution, and the mouth changes within
those four frames as fast as speech does: on 3 held-out clips the VAE round trip kept 0.83 of the
mouth's correlation with the truth over all frames but only 0.63 on speech frames (0.30 for the
part of the mouth's motion inside a latent), which capped the whole model below the lip-sync bar
whatever the DiT did. Here the decoder's audio adapters (``DecoderAudioAdapter``) learn to place
the mouth in each frame from that frame's audio feature, and the rest of the decoder adapts with
them. The encoder is frozen, so latents mean what they meant and the DiT, its branches and the
audio encoder (whose features the adapters read) stand as trained.

What it decodes. Live, the decoder only ever sees the DiT's latents, whose mouth is less sure
than the encoder's (``rollout``). So half the segments decode the DiT's own latents
(``rollout.teacher_forced_latents``: sampled from the true previous latent, so they line up
with the clip's frames) and half the encoder's with a little noise; the decoder learns how far
to trust a latent's mouth against the audio. Trials of this recipe in scripts outside the repo,
on the default model after the lip-sync stage's on-policy phase (the standard report's 4
held-out clips, 4 steps, lip-sync all / speech frames): 0.918 / 0.802 before; 1200 steps on
encoder latents alone 0.922 / 0.812; 1200 steps half generated 0.933 / 0.845 (5.5 min on the
2-core CPU), and the encoder's latents then decode better too (round trip 0.874 -> 0.895 on
speech frames); 2400 steps with 80% generated 0.925 / 0.836. The stage as configured
(``livehuman train --finetune default --redo lipsync,decoder``) gave the shipped model's 0.935 /
0.846 (benchmarks/results/quality-default-20261126T165926Z.json).

How. 3-latent segments of the lip-sync stage's encoded clips (a still, then 8 frames), cropped
to 8x8 latents (64x64 pixels, mostly around the mouth); the loss is L1 with the mouth weighted,
plus L1 on frame-to-frame differences, so motion lands in the frames where it happens rather
than at latent boundaries. The first latent stands for four frames decoded as one, so its frame
carries no loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import FRAMES_PER_LATENT, SAMPLES_PER_FRAME
from engine.models.livehuman import LiveHumanModel
from engine.training.data import Clip
from engine.training.device import module_device
from engine.training.stage import step_rng
from engine.training.vae_stage import SEGMENT_FRAMES, mouth_weights, to_model_frames
from engine.training.windows import EncodedClip


@dataclass(frozen=True)
class DecoderTrainConfig:
    steps: int = 1200
    batch: int = 4
    crop: int = 64
    lr: float = 3e-4  # the adapters'; the decoder's own weights move at DECODER_LR_SCALE of it
    mouth_weight: float = 8.0
    motion_weight: float = 1.0  # the frame-difference term
    latent_noise: float = 0.2  # at most this many latent standard deviations on encoder latents
    mouth_crops: float = 0.7  # the fraction of crops centred on the mouth
    generated: float = 0.5  # the fraction of segments decoding the DiT's latents
    sample_steps: int = 4  # the DiT's latents are sampled at the live default


DECODER_LR_SCALE = 0.2


def decoder_lacks_audio(model: LiveHumanModel) -> bool:
    """True while the decoder's audio adapters are the identity (their output still zero)."""
    return not any(bool(a.out.conv.weight.detach().any()) for a in model.vae.decoder.audio_adapters)


def decoder_parameter_groups(model: LiveHumanModel) -> list[dict]:
    """Freeze everything but the decoder; (re)initialise adapters that loaded as zeros (a weights
    file from before they existed), since a zero input layer would pass no gradient."""
    model.requires_grad_(False)
    decoder = model.vae.decoder
    for adapter in decoder.audio_adapters:
        for layer in (adapter.content.conv, adapter.sound):
            if not layer.weight.detach().any():
                layer.reset_parameters()
    decoder.requires_grad_(True)
    adapters = list(decoder.audio_adapters.parameters())
    ids = {id(p) for p in adapters}
    rest = [p for p in decoder.parameters() if id(p) not in ids]
    return [{"params": adapters}, {"params": rest, "lr_scale": DECODER_LR_SCALE}]


@torch.no_grad()
def clip_features(model: LiveHumanModel, clip: Clip) -> torch.Tensor:
    """(F, Da) the audio encoder's feature for each clip frame (frame j from sample 640 j on), on
    the CPU."""
    n = clip.num_frames
    audio = np.zeros(model.audio.num_samples(n), np.float32)
    audio[: min(len(clip.audio), n * SAMPLES_PER_FRAME)] = clip.audio[: n * SAMPLES_PER_FRAME]
    return model.audio(torch.from_numpy(audio)[None].to(module_device(model)))[0].cpu()


SEGMENT_LATENTS = 1 + (SEGMENT_FRAMES - 1) // FRAMES_PER_LATENT  # a still, then latents of 4 frames


def _latent_crop(
    clip: Clip, frame: int, size: int, factor: int, crop: int, rng: np.random.Generator, mouth: float
) -> tuple[int, int]:
    """A crop's origin in latent pixels: near the mouth in frame ``frame`` with probability
    ``mouth``, anywhere otherwise."""
    room = size // factor - crop
    if rng.random() < mouth:
        y0, y1, x0, x1 = clip.mouth_box(frame, size)
        cy = (y0 + y1) // (2 * factor) - crop // 2 + int(rng.integers(-1, 2))
        cx = (x0 + x1) // (2 * factor) - crop // 2 + int(rng.integers(-1, 2))
        return int(np.clip(cy, 0, room)), int(np.clip(cx, 0, room))
    return int(rng.integers(0, room + 1)), int(rng.integers(0, room + 1))


def decoder_step_fn(
    model: LiveHumanModel,
    clips: list[Clip],
    encoded: list[EncodedClip],
    generated: list[torch.Tensor],
    features: list[torch.Tensor],
    cfg: DecoderTrainConfig,
    seed: int,
) -> Callable[[int], dict[str, float]]:
    """``encoded[i]`` and ``generated[i]`` (its DiT latents) are ``clips[i]``'s, ``features[i]`` its
    audio features per frame."""
    vae, size, factor = model.vae, model.config.height, model.config.vae.spatial_factor
    crop = cfg.crop // factor
    scales = [float(e.latents.std()) for e in encoded]  # each clip's latent spread, for the noise
    device = module_device(model)

    def step(step_index: int) -> dict[str, float]:
        rng, gen = step_rng(seed, "decoder", step_index)
        latents, videos, weights, heard = [], [], [], []
        for _ in range(cfg.batch):
            c = int(rng.integers(len(clips)))
            m = int(rng.integers(1, encoded[c].num_latents - SEGMENT_LATENTS + 1))
            first = FRAMES_PER_LATENT * m  # latent m's last frame: the still's
            cy, cx = _latent_crop(
                clips[c], first + FRAMES_PER_LATENT, size, factor, crop, rng, cfg.mouth_crops
            )
            segment = encoded[c].latents[:, m : m + SEGMENT_LATENTS].clone()
            if rng.random() < cfg.generated:
                segment[:, 1:] = generated[c][:, m + 1 : m + SEGMENT_LATENTS]
            else:
                sigma = cfg.latent_noise * float(rng.random()) * scales[c]
                segment += sigma * torch.randn(segment.shape, generator=gen)
            latents.append(segment[:, :, cy : cy + crop, cx : cx + crop])
            y, x, side = cy * factor, cx * factor, cfg.crop
            frames = clips[c].frames(first, first + SEGMENT_FRAMES, size)[:, y : y + side, x : x + side]
            weight = mouth_weights(clips[c], first, SEGMENT_FRAMES, size, cfg.mouth_weight)
            weight[0] = 0.0
            videos.append(to_model_frames(frames))
            weights.append(torch.from_numpy(weight[None, :, y : y + side, x : x + side]))
            # decode() makes 3 frames before a segment's first (dropped): they hear latent m's.
            heard.append(features[c][first - FRAMES_PER_LATENT + 1 : first + SEGMENT_FRAMES])
        video, weight, latent, audio = (
            torch.stack(parts).to(device) for parts in (videos, weights, latents, heard)
        )
        recon = vae.decode(latent, audio)
        l1 = ((recon - video).abs() * weight).sum() / (weight.sum() * 3)
        moved, truth, w = recon.diff(dim=2), video.diff(dim=2), weight[:, :, 1:]
        motion = ((moved - truth).abs() * w).sum() / (w.sum() * 3)
        loss = l1 + cfg.motion_weight * motion
        loss.backward()
        return {"loss": loss.item(), "l1": l1.item(), "motion": motion.item()}

    return step
