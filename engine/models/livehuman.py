"""The whole model family in one module: one state dict, one config, one set of weights."""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.audio import AudioEncoder
from engine.models.dit import WanDiT
from engine.models.text import ByteTextEncoder
from engine.models.vae import CausalVAE


class LiveHumanModel(nn.Module):
    """DiT + causal VAE + audio encoder + text encoder, as saved beside ``config.json``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.dit = WanDiT(config.dit)
        self.vae = CausalVAE(config.vae, config.audio.dim)
        self.audio = AudioEncoder(config.audio)
        self.text = ByteTextEncoder(config.text)

    @classmethod
    def random(cls, config: ModelConfig, seed: int = 0) -> LiveHumanModel:
        """Deterministic random weights: speed does not depend on weight values, so presets
        without a checkpoint still run and benchmark honestly."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config).eval()
            # Wan zero-initialises its output head and we zero the audio branch's and the decoder's
            # audio adapters' outputs, which makes an untrained model a constant; give them small
            # weights so that random presets exercise every path (and audio changes the picture).
            with torch.no_grad():
                for name, param in model.named_parameters():
                    audio_out = ".audio_attn.o." in name or ".audio_adapters." in name
                    if name.startswith("dit.head.head") or audio_out:
                        param.normal_(0.0, 0.02)
            return model
