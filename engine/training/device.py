"""Where training computes: the CPU, or a lent GPU, drawing the same batches either way.

A seed must mean the same run on any machine, so everything random is drawn on the CPU, from
the step's CPU generators (``stage.step_rng``), and only then moved to the training device: a
CUDA generator draws other numbers from the same seed, so noise drawn there would train a GPU
run on other batches than the CPU run of that seed. Batches are built on the CPU too (the clips
and their latents live there), and caches written to disk (latents, trajectories, checkpoints)
hold CPU tensors, so a run started on a GPU resumes on a CPU and back. The arithmetic on the
device differs from the CPU's by rounding only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from engine.config import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def training_device(name: str) -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; ``cuda`` without one is an error."""
    if name not in DEVICES:
        raise ConfigError(f"device: unknown '{name}'; choose from {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: 'cuda' asked for, but torch {torch.__version__} sees no GPU")
    return torch.device(name)


def module_device(module: nn.Module) -> torch.device:
    """The device a module's weights (and so its inputs) live on."""
    return next(module.parameters()).device


def seeded_noise(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard normal noise from the CPU generator ``gen``, moved to ``device``."""
    return torch.randn(shape, generator=gen).to(device)


@contextmanager
def on_cpu(module: nn.Module) -> Iterator[nn.Module]:
    """The module on the CPU inside the block, back on its device after: random initialisation
    inside draws from the CPU's generator, so a seed initialises the same weights on any device.
    Moving keeps the parameter objects, so optimizers built on them stay valid."""
    device = module_device(module)
    module.to("cpu")
    try:
        yield module
    finally:
        module.to(device)
