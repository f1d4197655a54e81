"""The Backend calls over exported components, shared by the onnxruntime and TensorRT runtimes.

An exported model is five graphs with fixed signatures (see ``engine.runtime.manifest``); what
differs between runtimes is only how one graph runs. This class maps the scheduler's calls onto
``run(component, *tensors)``, checks shapes against the manifest (so a wrong window length is a
clear error rather than a runtime's stack trace) and turns prompts into ids without the torch
text encoder.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from engine.runtime.base import Backend, DecoderCache
from engine.runtime.manifest import Manifest, prompt_ids


class GraphBackend(Backend):
    manifest: Manifest

    @abstractmethod
    def _execute(self, component: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run one component on CPU tensors of the manifest's shapes; float32 CPU outputs."""

    def run(self, component: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        specs = self.manifest.components[component].inputs
        if len(inputs) != len(specs):
            raise ValueError(f"{self.name} {component}: {len(inputs)} inputs, the export has {len(specs)}")
        for spec, tensor in zip(specs, inputs, strict=True):
            if tuple(tensor.shape) != spec.shape:
                raise ValueError(
                    f"{self.name} {component}: input '{spec.name}' has shape {tuple(tensor.shape)}, "
                    f"the export has the fixed shape {spec.shape}"
                )
        return self._execute(component, list(inputs))

    def audio_encoder(self, samples: torch.Tensor) -> torch.Tensor:
        return self.run("audio_encoder", samples)[0]

    def dit_step(self, x, timestep, cond, audio, text, camera, attributes) -> torch.Tensor:  # noqa: ANN001
        return self.run("dit_step", x, timestep, cond, audio, text, camera, attributes)[0]

    def vae_encoder_step(
        self, frames: torch.Tensor, cache: DecoderCache
    ) -> tuple[torch.Tensor, DecoderCache]:
        latent, *new_cache = self.run("vae_encoder_step", frames, *cache)
        return latent, tuple(new_cache)

    def vae_encoder_cache(self, batch: int = 1) -> DecoderCache:
        return self._zero_cache("vae_encoder_step", batch)

    def vae_decoder_step(
        self, latent: torch.Tensor, cache: DecoderCache, audio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, DecoderCache]:
        audio = self.silence(latent.shape[0]) if audio is None else audio
        frames, *new_cache = self.run("vae_decoder_step", latent, audio, *cache)
        return frames, tuple(new_cache)

    def vae_decoder_cache(self, batch: int = 1) -> DecoderCache:
        return self._zero_cache("vae_decoder_step", batch)

    def _zero_cache(self, component: str, batch: int) -> DecoderCache:
        specs = [s for s in self.manifest.components[component].inputs if s.name.startswith("cache_")]
        if batch != specs[0].shape[0]:
            raise ValueError(
                f"{self.name}: {component} was exported for batch {specs[0].shape[0]}, not {batch}"
            )
        return tuple(torch.zeros(spec.shape) for spec in specs)

    def encode_text(self, prompt: str) -> torch.Tensor:
        return self.run("text_encoder", torch.from_numpy(prompt_ids(prompt, self.manifest.tokenizer)))[0]
