"""Stage 2: the audio-conditioned DiT (the teacher), trained by flow matching on cached latents.

Two things make lip-sync learnable in minutes of CPU rather than days of GPU:
- The audio encoder first learns the mouth directly: a linear probe on its per-frame features
  regresses the ground-truth mouth opening and width, alone for a few hundred steps and then
  beside the flow-matching loss. Cross-attention then only has to read an answer that the
  features already hold, instead of discovering phonetics through the denoising loss.
- Mouth latents weigh more in the loss, as the VAE's mouth pixels did.
The motion prefix gets a little noise, so the model learns to trust the reference over a
slightly wrong prefix: the live prefix is the model's own output, and that is what keeps hours
of generation from drifting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.livehuman import LiveHumanModel
from engine.sampler import shift_sigma
from engine.training.device import module_device, seeded_noise
from engine.training.stage import step_rng
from engine.training.windows import EncodedClip, WindowBatch, audio_tokens, sample_items, window_batch


@dataclass(frozen=True)
class DiTTrainConfig:
    audio_steps: int = 300
    steps: int = 1500
    batch: int = 16
    lr: float = 4e-4
    audio_lr: float = 1e-3
    aux_weight: float = 1.0
    mouth_weight: float = 4.0
    prefix_noise: float = 0.1


class MouthProbe(nn.Module):
    """Training-only linear read-out of the mouth from audio features; never shipped."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(features))


def aux_loss(probe: MouthProbe, features: torch.Tensor, batch: WindowBatch) -> torch.Tensor:
    err = (probe(features) - batch.aux_target).pow(2).sum(-1)  # (B, F)
    return (err * batch.aux_mask).sum() / batch.aux_mask.sum().clamp_min(1.0)


def text_context(model: LiveHumanModel, batch: int) -> torch.Tensor:
    """The empty prompt's embedding: the default model is not prompt-conditioned."""
    with torch.no_grad():
        return model.text.encode([""]).expand(batch, -1, -1)


def dit_velocity(
    model: LiveHumanModel,
    x: torch.Tensor,
    sigma: torch.Tensor,
    batch: WindowBatch,
    tokens: torch.Tensor,
    text: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DiT call with the batch's camera latents (zeros for static clips), no attributes, and
    ``text`` (B, L, Dt) as the prompt context: the empty prompt's unless the prompt stage passes one."""
    B = x.shape[0]
    return model.dit(
        x,
        sigma * 1000.0,
        batch.cond,
        tokens,
        text_context(model, B) if text is None else text,
        batch.camera,
        x.new_zeros(B, model.config.dit.num_attributes),
    )


def flow_matching_loss(
    model: LiveHumanModel,
    batch: WindowBatch,
    tokens: torch.Tensor,
    gen: torch.Generator,
    sigma: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wan's objective: x_s = (1-s) x0 + s n, predict v = n - x0. ``sigma`` (B,) fixes the noise
    levels (the camera and prompt stages use the live sampler's); by default they are drawn with
    its shift. ``text`` is the prompt context (the empty prompt's by default)."""
    B, device = batch.x0.shape[0], batch.x0.device
    if sigma is None:
        t = torch.rand(B, generator=gen)
        sigma = torch.tensor([shift_sigma(float(v), model.config.sampler.shift) for v in t])
    sigma = sigma.to(device)
    noise = seeded_noise(batch.x0.shape, gen, device)
    s = sigma.view(B, 1, 1, 1, 1)
    x = (1 - s) * batch.x0 + s * noise
    velocity = dit_velocity(model, x, sigma, batch, tokens, text)
    err = (velocity - (noise - batch.x0)).pow(2) * batch.weight
    return err.sum() / (batch.weight.sum() * batch.x0.shape[1])


def _draw_batch(
    encoded: list[EncodedClip],
    config: ModelConfig,
    cfg: DiTTrainConfig,
    seed: int,
    stage: str,
    step_index: int,
    mouth_weight: float,
    prefix_noise: float,
    device: torch.device,
) -> tuple[WindowBatch, torch.Generator]:
    """The step's windows and the generator its noise comes from, both fixed by (seed, stage, step),
    the windows on ``device``."""
    rng, gen = step_rng(seed, stage, step_index)
    items = sample_items(encoded, rng, cfg.batch, config.scheduler.window)
    return window_batch(encoded, items, config, mouth_weight, prefix_noise, gen).to(device), gen


def audio_step_fn(
    model: LiveHumanModel,
    probe: MouthProbe,
    encoded: list[EncodedClip],
    config: ModelConfig,
    cfg: DiTTrainConfig,
    seed: int,
) -> Callable[[int], dict[str, float]]:
    device = module_device(model)

    def step(step_index: int) -> dict[str, float]:
        batch, _ = _draw_batch(encoded, config, cfg, seed, "audio", step_index, 0.0, 0.0, device)
        features = model.audio(batch.audio)
        loss = aux_loss(probe, features, batch)
        loss.backward()
        return {"loss": float(loss.detach()), "aux": float(loss.detach())}

    return step


def dit_step_fn(
    model: LiveHumanModel,
    probe: MouthProbe,
    encoded: list[EncodedClip],
    config: ModelConfig,
    cfg: DiTTrainConfig,
    seed: int,
) -> Callable[[int], dict[str, float]]:
    device = module_device(model)

    def step(step_index: int) -> dict[str, float]:
        batch, gen = _draw_batch(
            encoded, config, cfg, seed, "dit", step_index, cfg.mouth_weight, cfg.prefix_noise, device
        )
        features, tokens = audio_tokens(model, batch, config)
        fm = flow_matching_loss(model, batch, tokens, gen)
        aux = aux_loss(probe, features, batch)
        (fm + cfg.aux_weight * aux).backward()
        return {
            "loss": float((fm + cfg.aux_weight * aux).detach()),
            "fm": float(fm.detach()),
            "aux": float(aux.detach()),
        }

    return step


@torch.no_grad()
def probe_correlation(
    model: LiveHumanModel, probe: MouthProbe, encoded: list[EncodedClip], config: ModelConfig
) -> float:
    """Correlation of the probe's mouth opening with the truth on whole held-out clips: how much
    of the mouth the audio features alone explain."""
    preds, truths = [], []
    device = module_device(model)
    for e in encoded:
        n = len(e.mouth)
        pad = (len(e.audio) - n * 640) // 2
        span = e.audio[pad : pad + n * 640 + config.audio.n_fft - config.audio.hop_length]
        features = model.audio(torch.from_numpy(span)[None].to(device))
        preds.append(probe(features)[0, :, 0].cpu().numpy())
        truths.append(e.mouth[:, 0])
    return float(np.corrcoef(np.concatenate(preds), np.concatenate(truths))[0, 1])
