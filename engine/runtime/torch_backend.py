"""The reference backend: eager PyTorch on the CPU (or a CUDA device when asked)."""

from __future__ import annotations

import torch

from engine.models.livehuman import LiveHumanModel
from engine.runtime.base import Backend, DecoderCache


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: LiveHumanModel, device: str = "cpu", threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model.to(device).eval()
        self.config = model.config
        self.device = torch.device(device)

    def _in(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, torch.float32)

    @torch.inference_mode()
    def audio_encoder(self, samples: torch.Tensor) -> torch.Tensor:
        return self.model.audio(self._in(samples)).float().cpu()

    @torch.inference_mode()
    def dit_step(self, x, timestep, cond, audio, text, camera, attributes) -> torch.Tensor:  # noqa: ANN001
        args = [self._in(t) for t in (x, timestep, cond, audio, text, camera, attributes)]
        return self.model.dit(*args).float().cpu()

    @torch.inference_mode()
    def vae_encoder(self, frames: torch.Tensor) -> torch.Tensor:
        mean, _ = self.model.vae.encode(self._in(frames))
        return mean.float().cpu()

    @torch.inference_mode()
    def vae_decoder_step(
        self, latent: torch.Tensor, cache: DecoderCache
    ) -> tuple[torch.Tensor, DecoderCache]:
        frames, cache = self.model.vae.decode_step(self._in(latent), cache)
        return frames.float().cpu(), cache

    def vae_decoder_cache(self, batch: int = 1) -> DecoderCache:
        c = self.config
        return self.model.vae.decoder_cache(batch, c.latent_height, c.latent_width, device=self.device)

    @torch.inference_mode()
    def encode_text(self, prompt: str) -> torch.Tensor:
        return self.model.text.encode([prompt]).float().cpu()
