"""Stage 5: the camera branch, fine-tuned on clips with camera moves, the rest of the model frozen.

Only the branch trains (``camera_embedding`` and the per-block ``camera_projections``). A zero
camera input adds exactly nothing to the DiT, so every static output of the finished model is
bit-identical to the student it started from: the camera is an add-on, not a retrain. The loss
is flow matching at the noise levels the live sampler visits (the 4-, 2- and 1-step schedules),
where the branch has to act, with the mouth weighted as in the DiT stage. The audio tokens come
from the frozen encoder, so they are computed without gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.dit import WanDiT
from engine.models.livehuman import LiveHumanModel
from engine.sampler import FlowSampler
from engine.training.device import module_device
from engine.training.distill_stage import STUDENT_STEPS
from engine.training.dit_stage import flow_matching_loss
from engine.training.stage import step_rng
from engine.training.windows import EncodedClip, audio_tokens, sample_items, window_batch


@dataclass(frozen=True)
class CameraTrainConfig:
    clips: int = 48  # camera clips rendered for this stage (every preset, intensities 20-100%)
    steps: int = 700
    batch: int = 8
    lr: float = 1e-3
    mouth_weight: float = 4.0


def camera_parameters(dit: WanDiT) -> list[nn.Parameter]:
    return [*dit.camera_embedding.parameters(), *dit.camera_projections.parameters()]


@torch.no_grad()
def init_camera_branch(dit: WanDiT) -> None:
    """A fresh branch: random embedding (so the projections get a gradient), zero projections."""
    nn.init.xavier_uniform_(dit.camera_embedding.weight.flatten(1))
    for projection in dit.camera_projections:
        nn.init.zeros_(projection.weight)


def freeze_all_but_camera(model: LiveHumanModel) -> list[nn.Parameter]:
    """Gradients for the camera branch only; returns its parameters."""
    model.requires_grad_(False)
    params = camera_parameters(model.dit)
    for p in params:
        p.requires_grad_(True)
    return params


def live_sigmas(config: ModelConfig) -> list[float]:
    sampler = FlowSampler(config.sampler)
    return sorted({s for steps in STUDENT_STEPS for s in sampler.sigmas(steps)})


def live_step_fn(
    model: LiveHumanModel,
    encoded: list[EncodedClip],
    config: ModelConfig,
    batch_size: int,
    mouth_weight: float,
    seed: int,
    stage: str,
    train_audio_encoder: bool = False,
) -> Callable[[int], dict[str, float]]:
    """A fine-tune step on windows of ``encoded`` clips: flow matching at the live sampler's noise
    levels. The camera and lip-sync stages differ only in their clips and trainable parameters."""
    sigmas = np.array(live_sigmas(config))
    device = module_device(model)

    def step(step_index: int) -> dict[str, float]:
        rng, gen = step_rng(seed, stage, step_index)
        items = sample_items(encoded, rng, batch_size, config.scheduler.window)
        batch = window_batch(encoded, items, config, mouth_weight, 0.0, gen).to(device)
        with torch.set_grad_enabled(train_audio_encoder):
            _, tokens = audio_tokens(model, batch, config)
        sigma = torch.tensor(rng.choice(sigmas, size=batch_size), dtype=torch.float32)
        loss = flow_matching_loss(model, batch, tokens, gen, sigma)
        loss.backward()
        return {"loss": float(loss.detach())}

    return step
