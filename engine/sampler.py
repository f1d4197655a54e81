"""Few-step flow-matching sampler.

Flow matching puts a latent at noise level sigma on the straight line
``x_sigma = (1 - sigma) * x0 + sigma * noise``; the model predicts the velocity
``v = noise - x0`` (Wan's convention, so real checkpoints plug in). A distilled model is run at
1-4 of the fixed timesteps (1000, 750, 500, 250), warped by the shift
``t' = s*t / (1 + (s-1)*t)`` that spends more steps at high noise, where structure is decided.
"""

from __future__ import annotations

import torch

from engine.config import SamplerConfig


def shift_sigma(t: float, shift: float) -> float:
    """Warp a timestep fraction ``t`` in [0, 1] towards high noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


class FlowSampler:
    """Turns step counts into sigma schedules and applies one update at a time.

    The update is kept separate from the loop because the scheduler must edit the latent
    between steps (overwriting the overlap with the re-noised tail).
    """

    def __init__(self, config: SamplerConfig) -> None:
        self.config = config

    def sigmas(self, steps: int) -> list[float]:
        """The ``steps`` noise levels, drawn evenly from the configured timesteps."""
        timesteps = self.config.timesteps
        if not 1 <= steps <= len(timesteps):
            raise ValueError(f"steps must be between 1 and {len(timesteps)}, got {steps}")
        picks = [timesteps[(i * len(timesteps)) // steps] for i in range(steps)]
        return [shift_sigma(t / 1000.0, self.config.shift) for t in picks]

    @staticmethod
    def predict_x0(x: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
        return x - sigma * velocity

    def step(
        self,
        x: torch.Tensor,
        velocity: torch.Tensor,
        sigma: float,
        sigma_next: float,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        """Move from ``sigma`` to ``sigma_next`` (0 means: return the clean prediction).

        ``x0`` mode predicts the clean latent and re-noises it with fresh ``noise`` (what a
        step-distilled model is trained for); ``euler`` integrates the ODE instead.
        """
        if self.config.mode == "euler":
            return x + (sigma_next - sigma) * velocity
        x0 = self.predict_x0(x, velocity, sigma)
        if sigma_next <= 0.0 or noise is None:
            return x0
        return (1.0 - sigma_next) * x0 + sigma_next * noise
