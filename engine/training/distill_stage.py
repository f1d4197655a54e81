"""Stage 3: step distillation, a 40-step teacher into a student that works at 4, 2 and 1 steps.

The teacher integrates the flow ODE from noise with 40 Euler steps (on the sampler's shifted
grid), its overlap pinned to the prefix exactly as the live generator pins it. Each trajectory's
end points (noise, teacher sample) are cached on disk in chunks, so the stage resumes and the
teacher's cost is paid once.

The student runs the live sampler: x0-predict, then re-noise with fresh noise. So at its first
step it must map the trajectory's noise to the teacher's sample, and at a later step sigma it
sees the teacher's sample re-noised to sigma (what its own previous prediction becomes after
re-noising, once it is good) and must again land on that sample. Each batch draws one step
count from {4, 2, 1} and one of that count's steps, so all three counts are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.models.livehuman import LiveHumanModel
from engine.sampler import FlowSampler, shift_sigma
from engine.training.device import module_device, seeded_noise
from engine.training.dit_stage import MouthProbe, aux_loss, dit_velocity
from engine.training.stage import step_rng
from engine.training.windows import EncodedClip, audio_tokens, sample_items, window_batch

STUDENT_STEPS = (4, 2, 1)


@dataclass(frozen=True)
class DistillConfig:
    teacher_steps: int = 40
    trajectories: int = 768
    chunk: int = 64
    steps: int = 800
    batch: int = 16
    lr: float = 1e-4


@torch.no_grad()
def teacher_sample(
    model: LiveHumanModel,
    encoded: list[EncodedClip],
    items: list[tuple[int, int]],
    noise: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Euler-integrate the teacher from ``noise`` (B, C, W, h, w) to a clean window, overlap pinned;
    on the device of ``noise``."""
    config = model.config
    O = config.scheduler.overlap
    batch = window_batch(encoded, items, config, 0.0).to(noise.device)
    _, tokens = audio_tokens(model, batch, config)
    prefix = batch.x0[:, :, :O]
    grid = [shift_sigma(1.0 - i / steps, config.sampler.shift) for i in range(steps + 1)]  # 1 -> 0
    x = noise.clone()
    for sigma, sigma_next in zip(grid[:-1], grid[1:], strict=True):
        x[:, :, :O] = (1 - sigma) * prefix + sigma * noise[:, :, :O]
        v = dit_velocity(model, x, torch.full((x.shape[0],), sigma, device=x.device), batch, tokens)
        x = x + (sigma_next - sigma) * v
    return x


def cache_trajectories(
    model: LiveHumanModel,
    encoded: list[EncodedClip],
    cfg: DistillConfig,
    cache_dir: Path,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Teacher (items, noise, sample) for ``cfg.trajectories`` windows, one file per chunk: sampled
    on the model's device, kept on the CPU."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    device = module_device(model)
    chunks = -(-cfg.trajectories // cfg.chunk)
    model.eval()
    for c in range(chunks):
        path = cache_dir / f"chunk{c:04d}.pt"
        if not path.exists():
            rng, gen = step_rng(seed, "teacher", c)
            items = sample_items(encoded, rng, cfg.chunk, model.config.scheduler.window)
            e = encoded[0].latents
            noise = torch.randn(
                (cfg.chunk, e.shape[0], model.config.scheduler.window, *e.shape[2:]), generator=gen
            )
            sample = teacher_sample(model, encoded, items, noise.to(device), cfg.teacher_steps).cpu()
            tmp = path.with_suffix(".tmp")
            torch.save({"items": torch.tensor(items), "noise": noise, "sample": sample}, tmp)
            tmp.replace(path)
        if progress:
            progress(c + 1, chunks)
    parts = [torch.load(cache_dir / f"chunk{c:04d}.pt", weights_only=True) for c in range(chunks)]
    return {k: torch.cat([p[k] for p in parts]) for k in ("items", "noise", "sample")}


def distill_step_fn(
    student: LiveHumanModel,
    probe: MouthProbe,
    encoded: list[EncodedClip],
    trajectories: dict[str, torch.Tensor],
    config: ModelConfig,
    cfg: DistillConfig,
    mouth_weight: float,
    seed: int,
) -> Callable[[int], dict[str, float]]:
    sampler = FlowSampler(config.sampler)
    O = config.scheduler.overlap
    total = trajectories["items"].shape[0]
    device = module_device(student)

    def step(step_index: int) -> dict[str, float]:
        rng, gen = step_rng(seed, "distill", step_index)
        pick = torch.from_numpy(rng.choice(total, size=cfg.batch, replace=False))
        items = [tuple(int(v) for v in row) for row in trajectories["items"][pick]]
        batch = window_batch(encoded, items, config, mouth_weight).to(device)
        target, noise = (trajectories[k][pick].to(device) for k in ("sample", "noise"))
        # One step count per batch, then one of its steps.
        steps = int(rng.choice(STUDENT_STEPS))
        j = int(rng.integers(steps))
        sigma = sampler.sigmas(steps)[j]
        if j == 0:
            x = noise.clone()  # sigma is 1 at the first step: the trajectory's own noise
        else:
            fresh = seeded_noise(target.shape, gen, device)
            x = (1 - sigma) * target + sigma * fresh
            if j < steps - 1:  # the live generator pins the overlap at every step but the last
                x[:, :, :O] = (1 - sigma) * batch.x0[:, :, :O] + sigma * fresh[:, :, :O]
        features, tokens = audio_tokens(student, batch, config)
        v = dit_velocity(student, x, torch.full((cfg.batch,), sigma, device=device), batch, tokens)
        x0 = x - sigma * v
        loss = ((x0 - target).pow(2) * batch.weight).sum() / (batch.weight.sum() * target.shape[1])
        aux = aux_loss(probe, features, batch)
        (loss + aux).backward()
        return {
            "loss": float((loss + aux).detach()),
            "distill": float(loss.detach()),
            "aux": float(aux.detach()),
            "steps": float(steps),
        }

    return step
