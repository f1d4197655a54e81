"""Fake backends whose outputs are known in closed form, to prove the scheduler's mechanisms."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from engine.config import SAMPLES_PER_FRAME, ModelConfig, SchedulerConfig, get_preset
from engine.runtime.base import Backend, DecoderCache

SIZE = 16  # pixels; the fakes ignore the VAE and work at any size


def fake_config(size: int = SIZE, **scheduler: object) -> ModelConfig:
    """The tiny preset's audio and text settings on a small square canvas, 4 latent channels."""
    tiny = get_preset("tiny")
    config = dataclasses.replace(
        tiny,
        height=size,
        width=size,
        vae=dataclasses.replace(tiny.vae, latent_channels=4),
        dit=dataclasses.replace(tiny.dit, latent_channels=4),
        scheduler=dataclasses.replace(SchedulerConfig(), **scheduler),
    )
    if "playout_delay_ms" not in scheduler:  # larger windows need a longer delay
        delay = max(
            config.scheduler.playout_delay_ms,
            math.ceil(config.audio_wait_ms) + config.scheduler.compute_budget_ms,
        )
        config = dataclasses.replace(
            config, scheduler=dataclasses.replace(config.scheduler, playout_delay_ms=delay)
        )
    return config.validate()


class FakeBackend(Backend):
    """Audio features = RMS energy of each video frame's own samples. The DiT predicts a clean
    latent chosen by ``target`` (via the velocity that yields it); the decoder paints frame j of a
    latent with the latent's channel j, and records every latent it is handed and what it hears."""

    name = "fake"

    def __init__(self, config: ModelConfig, target: str = "energy") -> None:
        self.config = config
        self.target = target
        self.calls = 0
        self.dit_inputs: list[torch.Tensor] = []
        self.decoded: list[torch.Tensor] = []
        self.heard: list[torch.Tensor | None] = []
        self.threads: set[str] = set()
        self.on_dit: Callable[[], bool] | None = None  # runs inside dit_step until it returns True

    def audio_encoder(self, samples: torch.Tensor) -> torch.Tensor:
        frames = (
            samples.shape[1] - (self.config.audio.n_fft - self.config.audio.hop_length)
        ) // SAMPLES_PER_FRAME
        chunks = samples[:, : frames * SAMPLES_PER_FRAME].reshape(1, frames, SAMPLES_PER_FRAME)
        energy = chunks.pow(2).mean(-1).sqrt()  # (1, F)
        return energy[..., None].expand(-1, -1, self.config.audio.dim).clone()

    def dit_step(self, x, timestep, cond, audio, text, camera, attributes) -> torch.Tensor:  # noqa: ANN001
        import threading

        self.threads.add(threading.current_thread().name)
        if self.on_dit is not None and self.on_dit():
            self.on_dit = None
        steps = self.config.scheduler.steps
        window_index = self.calls // steps
        self.calls += 1
        self.dit_inputs.append(x.clone())
        sigma = float(timestep[0]) / 1000.0
        if self.target == "window":
            x0 = torch.full_like(x, float(window_index))
        else:  # channel j of latent t = energy of the latent's own video frame j
            before = self.config.audio.context_before_frames
            own = audio[0, :, before : before + 4, 0]  # (T, 4)
            x0 = torch.zeros_like(x)
            x0[0, :4] = own.T[:, :, None, None]
        return (x - x0) / sigma

    def vae_encoder_step(
        self, frames: torch.Tensor, cache: DecoderCache
    ) -> tuple[torch.Tensor, DecoderCache]:
        c = self.config
        return torch.zeros(1, c.vae.latent_channels, 1, c.latent_height, c.latent_width), cache

    def vae_encoder_cache(self, batch: int = 1) -> DecoderCache:
        return (torch.zeros(batch),)

    def vae_decoder_step(
        self, latent: torch.Tensor, cache: DecoderCache, audio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, DecoderCache]:
        self.decoded.append(latent.clone())
        self.heard.append(None if audio is None else audio.clone())
        values = latent[0, :4, 0].mean(dim=(-1, -2))  # (4,)
        frames = values.view(1, 1, 4, 1, 1).expand(1, 3, 4, self.config.height, self.config.width)
        return frames * 2.0 - 1.0, (cache[0] + 1,)

    def vae_decoder_cache(self, batch: int = 1) -> DecoderCache:
        return (torch.zeros(batch),)

    def encode_text(self, prompt: str) -> torch.Tensor:
        """Distinct per prompt length, so a test can see which prompt reached the scheduler."""
        return torch.full((1, 4, self.config.text.dim), float(len(prompt.encode())))
