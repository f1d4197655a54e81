"""The one interface the scheduler sees: four components with explicit state.

Every backend (torch reference, onnxruntime, TensorRT) implements the same four calls with the
same shapes, so the scheduler runs unchanged on any of them. Tensors cross this boundary as
float32 torch tensors on the CPU; a backend moves them to its device and back, which keeps the
scheduler free of device logic.

Shapes (B batch, C latent channels, T latent frames, h/w latent size, H/W pixels, F frames):
- ``audio_encoder(samples (B, F*640 + n_fft - hop)) -> features (B, F, Da)``: one feature per
  video frame of the span.
- ``dit_step(x (B,C,T,h,w), timestep (B,) in [0,1000], cond (B,2C+1,T,h,w),
  audio (B,T,N,Da), text (B,L,Dt), camera (B,C,T,h,w), attributes (B,A)) -> velocity (B,C,T,h,w)``
- ``vae_encoder_step(frames (B,3,4,H,W) in [-1,1], cache) -> (latent (B,C,1,h,w), cache)``.
  ``vae_encoder_cache(B)`` gives the zero cache; ``vae_encoder`` (whole clips, F = 1 + 4(T-1),
  frame 0 encoded as a still) is built on the step, so every backend encodes a portrait and a
  re-dub source video, of any length, with the same four-frame graph.
- ``vae_decoder_step(latent (B,C,1,h,w), cache, audio (B,4,Da)) -> (frames (B,3,4,H,W) in
  [-1,1], cache)``: audio is the four frames' features from ``audio_encoder`` (the decoder hears
  them to place the mouth within the latent); None is silence. ``vae_decoder_cache(B)`` gives the
  zero cache a stream starts from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from engine.config import FRAMES_PER_LATENT, ModelConfig

DecoderCache = tuple[torch.Tensor, ...]


class BackendUnavailable(RuntimeError):
    """Raised when a backend cannot load; the message is one line a user can act on."""


class Backend(ABC):
    """A model runtime. Stateless between calls: streaming state is passed in and returned."""

    name: str
    config: ModelConfig

    @abstractmethod
    def audio_encoder(self, samples: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def dit_step(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        cond: torch.Tensor,
        audio: torch.Tensor,
        text: torch.Tensor,
        camera: torch.Tensor,
        attributes: torch.Tensor,
    ) -> torch.Tensor: ...

    @abstractmethod
    def vae_encoder_step(
        self, frames: torch.Tensor, cache: DecoderCache
    ) -> tuple[torch.Tensor, DecoderCache]: ...

    @abstractmethod
    def vae_encoder_cache(self, batch: int = 1) -> DecoderCache: ...

    def vae_encoder(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1 + 4(T-1), H, W) -> (B, C, T, h, w): frame 0 as a still, then groups of four."""
        if (frames.shape[2] - 1) % 4:
            raise ValueError(f"vae_encoder: need 1 + 4k frames, got {frames.shape[2]}")
        cache = self.vae_encoder_cache(frames.shape[0])
        latents = []
        for t in range(0, frames.shape[2], 4):
            group = frames[:, :, :1].expand(-1, -1, 4, -1, -1) if t == 0 else frames[:, :, t - 3 : t + 1]
            latent, cache = self.vae_encoder_step(group.contiguous(), cache)
            latents.append(latent)
        return torch.cat(latents, dim=2)

    @abstractmethod
    def vae_decoder_step(
        self, latent: torch.Tensor, cache: DecoderCache, audio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, DecoderCache]: ...

    def silence(self, batch: int = 1) -> torch.Tensor:
        """(B, 4, Da) the decoder's audio for frames with nothing to hear."""
        return torch.zeros(batch, FRAMES_PER_LATENT, self.config.audio.dim)

    @abstractmethod
    def vae_decoder_cache(self, batch: int = 1) -> DecoderCache: ...

    @abstractmethod
    def encode_text(self, prompt: str) -> torch.Tensor:
        """(1, L, Dt) prompt embedding; runs once per session or prompt change, not per window."""
