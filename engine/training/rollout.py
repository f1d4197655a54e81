"""The live sampler replayed on training windows: the states and latents the DiT itself makes.

Why. A flow-matching fine-tune shows the DiT ``x_sigma = (1 - sigma) x0 + sigma n`` built from the
true latent, but at 4 steps every state after the first is built from the model's own previous
prediction, and the decoder only ever decodes the model's latents, never the encoder's. Measured
on the default model before these phases, in scripts outside the repo (the standard report's 4
held-out clips, 4 steps, decoded with and without the audio): the DiT's latents alone carried the mouth at
0.30 on speech frames where the encoder's carry 0.44, and decoding them cost 0.08 of the speech
lip-sync that the encoder's latents keep (0.79 against 0.87). The lip-sync stage's on-policy
phase trains on these states; the decoder stage trains on these latents.

A window is sampled as ``Generator.run`` samples it: the same sigmas, the overlap pinned to the
re-noised prefix at every step but the last, fresh noise between steps (x0 mode). The prefix is
the true latent (teacher forcing), so what comes out lines up with the clip's frames.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.models.livehuman import LiveHumanModel
from engine.sampler import FlowSampler
from engine.training.device import module_device, seeded_noise
from engine.training.dit_stage import dit_velocity
from engine.training.windows import EncodedClip, WindowBatch, audio_tokens, window_batch


@torch.no_grad()
def sampler_states(
    model: LiveHumanModel,
    batch: WindowBatch,
    tokens: torch.Tensor,
    sigmas: list[float],
    gen: torch.Generator,
    last: int | None = None,
) -> list[torch.Tensor]:
    """The DiT's input at each step (len(sigmas) states) followed by the sampled window, or only
    the states up to index ``last`` when that is given (the rest are not needed). On the batch's
    device, the noise drawn from ``gen`` on the CPU."""
    sampler = FlowSampler(model.config.sampler)
    O = model.config.scheduler.overlap
    prefix = batch.x0[:, :, :O]
    final = len(sigmas) - 1
    device = batch.x0.device
    x = seeded_noise(batch.x0.shape, gen, device)
    states = []
    for j, sigma in enumerate(sigmas):
        if j < final:
            x[:, :, :O] = (1.0 - sigma) * prefix + sigma * seeded_noise(prefix.shape, gen, device)
        states.append(x.clone())
        if j == last:
            return states
        velocity = dit_velocity(model, x, torch.full((x.shape[0],), sigma, device=device), batch, tokens)
        noise = None if j == final else seeded_noise(x.shape, gen, device)
        x = sampler.step(x, velocity, sigma, 0.0 if j == final else sigmas[j + 1], noise)
    return [*states, x]


@torch.no_grad()
def teacher_forced_latents(
    model: LiveHumanModel,
    encoded: list[EncodedClip],
    steps: int,
    seed: int,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[torch.Tensor]:
    """Each clip's latents with latent k+1 replaced by the one the DiT samples (at ``steps``) for
    the window whose prefix is the true latent k: what the live decoder meets one window on.
    Latent 0 (the still of frame 0) stays the encoder's. ``progress(batches done, batches)``.
    Sampled on the model's device, returned on the CPU."""
    config = model.config
    device = module_device(model)
    W, O = config.scheduler.window, config.scheduler.overlap
    sigmas = FlowSampler(config.sampler).sigmas(steps)
    gen = torch.Generator().manual_seed(seed)
    items = [(c, k) for c, e in enumerate(encoded) for k in range(e.num_latents - W + 1)]
    latents = [e.latents.clone() for e in encoded]
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    for done, chunk in enumerate(chunks, 1):
        batch = window_batch(encoded, chunk, config, 0.0).to(device)
        _, tokens = audio_tokens(model, batch, config)
        window = sampler_states(model, batch, tokens, sigmas, gen)[-1].cpu()
        for i, (c, k) in enumerate(chunk):
            latents[c][:, k + O : k + W] = window[i, :, O:]
        if progress:
            progress(done, len(chunks))
    return latents
