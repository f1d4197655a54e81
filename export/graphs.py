"""The five exported components as plain ``nn.Module``s with fixed example inputs.

Each wrapper turns one Backend call into a graph with named tensors: no tuples of state, no
Python options, float32 at every boundary. A reduced-precision component computes inside in
fp16/bf16 and casts at its edges, so runtimes never juggle dtypes and the timestep keeps its
float32 resolution. Shapes come from the config (the window the scheduler runs, one portrait
frame, one latent per decoder step); TensorRT needs them fixed and onnxruntime runs them fastest.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from engine.config import FPS, ModelConfig
from engine.models.dit import WanDiT
from engine.models.livehuman import LiveHumanModel
from engine.models.text import PAD_ID, ByteTextEncoder
from engine.models.vae import CausalVAE

# Only the DiT runs in reduced precision: it is where the compute is. The VAE's RMS norm sums
# squares over channels, which overflows fp16, and the audio and text encoders are too small to
# gain. int8 is onnxruntime's dynamic quantisation of the DiT's MatMuls (see export/onnx_export.py).
LOWERED_COMPONENTS = ("dit_step",)
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Graph:
    """A component ready for ``torch.onnx.export``."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    # Whether opset 23 may keep SDPA as ONNX's fused Attention. The text encoder's (B, 1, 1, L)
    # key mask is broadcast over queries, which onnxruntime's Attention kernel rejects; it runs
    # once per prompt, so its plain MatMul/Softmax costs nothing.
    fused_attention: bool = True


class TextEncoderGraph(nn.Module):
    def __init__(self, text: ByteTextEncoder) -> None:
        super().__init__()
        self.text = text

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text(ids)  # (1, L, Dt)


class DiTStepGraph(nn.Module):
    """One velocity evaluation, computed in ``dtype`` with float32 inputs and output."""

    def __init__(self, dit: WanDiT, dtype: torch.dtype) -> None:
        super().__init__()
        self.dit = dit.to(dtype)
        self.dtype = dtype

    def forward(self, x, timestep, cond, audio, text, camera, attributes) -> torch.Tensor:  # noqa: ANN001
        # The timestep stays float32: the sinusoidal embedding reads it before casting, and fp16
        # would round 967.7 to 967.5.
        lowered = [t.to(self.dtype) for t in (x, cond, audio, text, camera, attributes)]
        x, cond, audio, text, camera, attributes = lowered
        return self.dit(x, timestep, cond, audio, text, camera, attributes).float()  # (1, C, W, h, w)


class VAEEncoderStepGraph(nn.Module):
    """``encode_step`` with its cache flattened into graph inputs and outputs, in call order."""

    def __init__(self, vae: CausalVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, frames: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        latent, new_cache = self.vae.encode_step(frames, cache)
        return (latent, *new_cache)  # (1, C, 1, h, w), then each cache entry


class VAEDecoderStepGraph(nn.Module):
    """``decode_step`` with its cache flattened into graph inputs and outputs, in call order."""

    def __init__(self, vae: CausalVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(
        self, latent: torch.Tensor, audio: torch.Tensor, *cache: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        frames, new_cache = self.vae.decode_step(latent, cache, audio)
        return (frames, *new_cache)  # (1, 3, 4, H, W), then each cache entry


def audio_frames(config: ModelConfig) -> int:
    """Video frames of features per window: history, context before, the window's latents and
    context after; the span ``engine.generator.WindowGenerator.audio_span`` feeds the encoder."""
    a = config.audio
    history = a.history_ms * FPS // 1000
    return history + a.context_before_frames + 4 * config.scheduler.window + a.context_after_frames


def build_graphs(model: LiveHumanModel, precision: str) -> dict[str, Graph]:
    """Every component of ``model`` as a Graph; ``model`` itself is left untouched.

    The DiT is copied before any cast, so the caller's model stays the float32 reference that
    parity is measured against.
    """
    c = model.config
    C, W, h, w = c.vae.latent_channels, c.scheduler.window, c.latent_height, c.latent_width
    a = c.audio
    tokens = a.context_before_frames + 4 + a.context_after_frames
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    # int8 is quantised from the float32 graph, after export.
    dit = DiTStepGraph(copy.deepcopy(model.dit).eval(), TORCH_DTYPES.get(precision, torch.float32))
    cache = model.vae.decoder_cache(1, h, w)
    encoder_cache = model.vae.encoder_cache(1, c.height, c.width)
    return {
        "text_encoder": Graph(
            TextEncoderGraph(model.text),
            (torch.full((1, c.text.max_tokens), PAD_ID, dtype=torch.long),),
            ["ids"],
            ["prompt_embedding"],
            fused_attention=False,
        ),
        "audio_encoder": Graph(
            model.audio,
            (0.1 * randn(1, model.audio.num_samples(audio_frames(c))),),
            ["samples"],
            ["audio_features"],
        ),
        "dit_step": Graph(
            dit,
            (
                randn(1, C, W, h, w),
                torch.tensor([500.0]),
                randn(1, 2 * C + 1, W, h, w),
                randn(1, W, tokens, a.dim),
                randn(1, c.text.max_tokens, c.text.dim),
                torch.zeros(1, C, W, h, w),
                torch.zeros(1, c.dit.num_attributes),
            ),
            ["x", "timestep", "cond", "audio", "text", "camera", "attributes"],
            ["velocity"],
        ),
        "vae_encoder_step": Graph(
            VAEEncoderStepGraph(model.vae),
            (randn(1, 3, 4, c.height, c.width).clamp(-1, 1), *encoder_cache),
            ["frames", *(f"cache_{i}" for i in range(len(encoder_cache)))],
            ["latent_mean", *(f"next_cache_{i}" for i in range(len(encoder_cache)))],
        ),
        "vae_decoder_step": Graph(
            VAEDecoderStepGraph(model.vae),
            (randn(1, C, 1, h, w), randn(1, 4, a.dim), *cache),
            ["latent", "audio", *(f"cache_{i}" for i in range(len(cache)))],
            ["frames", *(f"next_cache_{i}" for i in range(len(cache)))],
        ),
    }
