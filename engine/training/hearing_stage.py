"""Add-on stage: hearing, the audio encoder deepened and taught the mouth directly.

Why. Every part of the model that moves the mouth (the DiT's audio cross-attention, the VAE
decoder's audio adapters) reads the audio encoder's per-frame features, so none of them can make
the mouth follow speech better than those features tell it. ``benchmarks/audio_ceiling.py``
measured the encoder as the DiT stage left it (2 blocks, 300 steps alone with a linear probe,
then shared with the flow-matching loss): an MLP reading 5 frames of its features followed the
true mouth of held-out clips at 0.930, 0.850 on speech frames, which put the 0.85 speech bar out
of reach of any reader. Held-out voices are the hard part: speech no training clip has.

How. The encoder gets ``num_layers`` blocks (new ones start as the identity, so it begins as the
encoder it was) and trains alone, against the renderer's mouth opening and width, through a
training-only head that reads 5 frames of features as the DiT's tokens do, on many more voices
and sentences than the DiT stages use (audio is cheap: no frames are rendered). It trains on
exactly the spans the live scheduler cuts, zero padding and edges included. The features then
mean something new, so the stages that read them are reset to run again: the DiT's audio token
positions to zero (the lip-sync stage's marker) and the decoder's adapters to the identity (the
decoder stage's).

Measured on the default model, 2-core CPU (``livehuman train --finetune default --addons
hearing,lipsync,decoder``: this stage 261 s with its 600 clips, then lip-sync 1526 s, decoder 777 s):
- the features (``benchmarks/audio_ceiling.py``, 8 held-out clips): ridge probe 0.921 / 0.827
  (all / speech frames) -> 0.948 / 0.886, MLP probe 0.930 / 0.850 -> 0.953 / 0.896;
- the whole model (``livehuman eval --preset DIR --clips 4 --steps 4``,
  benchmarks/results/quality-default-20261126T080818Z -> -140514Z): lip-sync 0.883 / 0.730 ->
  0.914 / 0.792, re-dub lip-sync 0.783 -> 0.846, seam ratio 0.82 -> 0.84, idle mouth closed 100%.

Then again, on the shipped model as its lip-sync and decoder stages had left it (360 clips), with
the sizes below: 6 blocks instead of 4, 1800 clips instead of 600, 12000 steps instead of 4000
(``livehuman train --finetune default --addons hearing,lipsync,decoder`` with this config; this
stage 515 s, then lip-sync 1076 s and decoder 922 s, their 360 clips' latents reused):
- the features: ridge probe 0.948 / 0.886 -> 0.970 / 0.936, MLP probe 0.953 / 0.896 -> 0.973 /
  0.941;
- the whole model: lip-sync 0.938 / 0.855 -> 0.955 / 0.899 on the standard report's 4 clips
  (quality-default-20261126T214249Z -> 20261127T013029Z), 0.921 / 0.831 -> 0.941 / 0.876 on 8,
  re-dub lip-sync 0.882 -> 0.908.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from engine.models.audio import AudioResBlock
from engine.models.livehuman import LiveHumanModel
from engine.training.device import module_device
from engine.training.stage import step_rng
from engine.training.windows import AudioTrack, audio_window, sample_items


@dataclass(frozen=True)
class HearingTrainConfig:
    clips: int = 1800  # audio-only training clips (every training voice, many more sentences)
    steps: int = 12000
    batch: int = 16
    lr: float = 1e-3
    num_layers: int = 6  # the encoder's blocks after this stage
    head_frames: int = 5  # frames the head reads, centred: the DiT's tokens span 2 either side


class MouthHead(nn.Module):
    """Training-only read-out of mouth opening and width from a frame's features and its
    neighbours; never shipped."""

    def __init__(self, dim: int, frames: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, 2, kernel_size=frames, padding=frames // 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, D) -> (B, F, 2) in [0, 1]."""
        return torch.sigmoid(self.conv(features.transpose(1, 2))).transpose(1, 2)


def lacks_depth(model: LiveHumanModel, cfg: HearingTrainConfig) -> bool:
    """The stage's marker: a model whose encoder is shallower than the plan's predates it."""
    return model.config.audio.num_layers < cfg.num_layers


def deepen_encoder(model: LiveHumanModel, num_layers: int) -> None:
    """Append residual blocks whose output layer is zero (the encoder computes what it did) and
    record the depth in the model's config, which the saved weights are loaded with."""
    audio = model.audio
    while len(audio.blocks) < num_layers:
        block = AudioResBlock(audio.cfg.dim).to(module_device(audio))
        nn.init.zeros_(block.mlp[-1].weight)
        nn.init.zeros_(block.mlp[-1].bias)
        audio.blocks.append(block)
    audio.cfg = dataclasses.replace(audio.cfg, num_layers=len(audio.blocks))
    model.config = dataclasses.replace(model.config, audio=audio.cfg)


@torch.no_grad()
def reset_readers(model: LiveHumanModel) -> None:
    """Mark the lip-sync and decoder stages as not done: their weights read the old features."""
    model.dit.audio_position.zero_()
    for adapter in model.vae.decoder.audio_adapters:
        nn.init.zeros_(adapter.out.conv.weight)
        nn.init.zeros_(adapter.out.conv.bias)


def hearing_step_fn(
    model: LiveHumanModel, head: MouthHead, tracks: list[AudioTrack], cfg: HearingTrainConfig, seed: int
) -> Callable[[int], dict[str, float]]:
    config = model.config
    device = module_device(model)

    def step(step_index: int) -> dict[str, float]:
        rng, _ = step_rng(seed, "hearing", step_index)
        items = sample_items(tracks, rng, cfg.batch, config.scheduler.window)
        cuts = [audio_window(tracks[i], k, config) for i, k in items]
        audio, target, inside = (torch.stack(parts).to(device) for parts in zip(*cuts, strict=True))
        err = (head(model.audio(audio)) - target).pow(2).sum(-1)  # (B, F)
        loss = (err * inside).sum() / inside.sum().clamp_min(1.0)
        loss.backward()
        return {"loss": float(loss.detach())}

    return step
