"""The reference backend: eager PyTorch on the CPU, or on a CUDA device with a faster path.

On CUDA the DiT can run in bf16 (or fp16) and the DiT and decoder step can be compiled with
``torch.compile(mode="reduce-overhead")``, which replays CUDA graphs. Only the DiT is lowered, as
in the exported backends: the compute is there, and the VAE, audio and text encoders stay
float32. CUDA-graph replays overwrite the previous replay's outputs, so the decoder's cache is
cloned before it is handed out: the scheduler keeps caches in snapshots.
"""

from __future__ import annotations

import torch

from engine.models.livehuman import LiveHumanModel
from engine.runtime.base import Backend, BackendUnavailable, DecoderCache


class TorchBackend(Backend):
    """``model`` is moved to ``device`` (and its DiT cast to ``dtype``) in place."""

    name = "torch"

    def __init__(
        self,
        model: LiveHumanModel,
        device: str = "cpu",
        threads: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"torch: device '{device}' asked for, but torch {torch.__version__} sees no GPU"
            )
        if (dtype != torch.float32 or compile) and self.device.type != "cuda":
            raise ValueError("torch: a reduced-precision DiT and compile are CUDA options (device='cuda')")
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model.to(device).eval()
        self.model.dit.to(dtype)
        self.config = model.config
        self.dtype = dtype
        self._dit = torch.compile(self.model.dit, mode="reduce-overhead") if compile else self.model.dit
        decode = self.model.vae.decode_step
        self._decode_step = torch.compile(decode, mode="reduce-overhead") if compile else decode
        self.compiled = compile

    def _in(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return t.to(self.device, dtype)

    @torch.inference_mode()
    def audio_encoder(self, samples: torch.Tensor) -> torch.Tensor:
        return self.model.audio(self._in(samples)).float().cpu()

    @torch.inference_mode()
    def dit_step(self, x, timestep, cond, audio, text, camera, attributes) -> torch.Tensor:  # noqa: ANN001
        # The timestep stays float32: the sinusoidal embedding needs its resolution.
        args = [self._in(t, self.dtype) for t in (x, cond, audio, text, camera, attributes)]
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        return self._dit(args[0], self._in(timestep), *args[1:]).float().cpu()

    @torch.inference_mode()
    def vae_encoder(self, frames: torch.Tensor) -> torch.Tensor:
        # A whole clip in one call: the same latents as stepping (the encoder is causal), faster.
        mean, _ = self.model.vae.encode(self._in(frames))
        return mean.float().cpu()

    @torch.inference_mode()
    def vae_encoder_step(
        self, frames: torch.Tensor, cache: DecoderCache
    ) -> tuple[torch.Tensor, DecoderCache]:
        latent, cache = self.model.vae.encode_step(self._in(frames), cache)
        return latent.float().cpu(), cache

    def vae_encoder_cache(self, batch: int = 1) -> DecoderCache:
        c = self.config
        return self.model.vae.encoder_cache(batch, c.height, c.width, device=self.device)

    @torch.inference_mode()
    def vae_decoder_step(
        self, latent: torch.Tensor, cache: DecoderCache, audio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, DecoderCache]:
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        audio = self.silence(latent.shape[0]) if audio is None else audio
        frames, cache = self._decode_step(self._in(latent), cache, self._in(audio))
        if self.compiled:
            cache = tuple(c.clone() for c in cache)
        return frames.float().cpu(), cache

    def vae_decoder_cache(self, batch: int = 1) -> DecoderCache:
        c = self.config
        return self.model.vae.decoder_cache(batch, c.latent_height, c.latent_width, device=self.device)

    @torch.inference_mode()
    def encode_text(self, prompt: str) -> torch.Tensor:
        return self.model.text.encode([prompt]).float().cpu()
