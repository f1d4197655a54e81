"""Add-on stage: the VAE decoder learns to read audio, with the encoder frozen.

Why. A latent holds four frames in 8 channels at 1/8 resolution, and the mouth changes within
those four frames as fast as speech does: on 3 held-out clips the VAE round trip kept 0.83 of the
mouth's correlation with the truth over all frames but only 0.63 on speech frames (0.30 for the
part of the mouth's motion inside a latent), which capped the whole model below the lip-sync bar
whatever the DiT did. Here the decoder's audio adapters (``DecoderAudioAdapter``) learn to place
the mouth in each frame from that frame's audio feature, and the rest of the decoder adapts with
them. The encoder is frozen, so latents mean what they meant and the DiT, its branches and the
audio encoder (whose features the adapters read) stand as trained.

How. 9-frame segments of the lip-sync stage's portrait clips, 64x64 crops (mostly around the
mouth), encoded by the frozen encoder; the latents get a little noise (a DiT's latents are not
an encoder's); the loss is L1 with the mouth weighted, plus L1 on frame-to-frame differences, so
motion lands in the frames where it happens rather than at latent boundaries.

Measured on the default model: this stage as configured (``livehuman train --finetune default
--addons decoder``, 1200 steps, 723 s on the 2-core CPU), with the scheduler's ``boundary_ease``,
took the standard report (``livehuman eval --preset default --clips 4 --steps 4``) from lip-sync
0.71 / 0.41 on speech frames to 0.88 / 0.73 (benchmarks/results/quality-default-20261126T062132Z
and -080818Z). The decoder then moves the mouth inside each latent, which makes latent-to-latent
flicker stand out more: ``boundary_ease`` is what answers that (seam ratio 0.82 in the report).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import FRAMES_PER_LATENT, SAMPLES_PER_FRAME
from engine.models.livehuman import LiveHumanModel
from engine.training.data import Clip
from engine.training.stage import step_rng
from engine.training.vae_stage import SEGMENT_FRAMES, vae_segments


@dataclass(frozen=True)
class DecoderTrainConfig:
    steps: int = 1200
    batch: int = 4
    crop: int = 64
    lr: float = 1e-3  # the adapters'; the decoder's own weights move at DECODER_LR_SCALE of it
    mouth_weight: float = 8.0
    motion_weight: float = 1.0  # the frame-difference term
    latent_noise: float = 0.2  # at most this many latent standard deviations of noise
    mouth_crops: float = 0.7  # the fraction of crops centred on the mouth


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
    """(F, Da) the audio encoder's feature for each clip frame (frame j from sample 640 j on)."""
    n = clip.num_frames
    audio = np.zeros(model.audio.num_samples(n), np.float32)
    audio[: min(len(clip.audio), n * SAMPLES_PER_FRAME)] = clip.audio[: n * SAMPLES_PER_FRAME]
    return model.audio(torch.from_numpy(audio)[None])[0]


def decoder_step_fn(
    model: LiveHumanModel, clips: list[Clip], features: list[torch.Tensor], cfg: DecoderTrainConfig, seed: int
) -> Callable[[int], dict[str, float]]:
    vae, size = model.vae, model.config.height
    lead = FRAMES_PER_LATENT - 1  # decode() makes 3 frames before a segment's first (dropped)

    def step(step_index: int) -> dict[str, float]:
        rng, gen = step_rng(seed, "decoder", step_index)
        video, weight, picks = vae_segments(
            clips, rng, cfg.batch, cfg.crop, size, cfg.mouth_weight, cfg.mouth_crops
        )  # (B, 3, 9, c, c), (B, 1, 9, c, c)
        silence = features[0].new_zeros(lead, features[0].shape[1])  # what the dropped frames hear
        heard = [torch.cat([silence, features[i][s : s + SEGMENT_FRAMES]]) for i, s in picks]
        with torch.no_grad():
            mean, _ = vae.encode(video)
            sigma = cfg.latent_noise * torch.rand(len(picks), 1, 1, 1, 1, generator=gen) * mean.std()
            latents = mean + sigma * torch.randn(mean.shape, generator=gen)
        recon = vae.decode(latents, torch.stack(heard))
        l1 = ((recon - video).abs() * weight).sum() / (weight.sum() * 3)
        moved, truth, w = recon.diff(dim=2), video.diff(dim=2), weight[:, :, 1:]
        motion = ((moved - truth).abs() * w).sum() / (w.sum() * 3)
        loss = l1 + cfg.motion_weight * motion
        loss.backward()
        return {"loss": loss.item(), "l1": l1.item(), "motion": motion.item()}

    return step
