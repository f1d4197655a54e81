"""Flow-matching sampler: the shift warp, step selection, and the x0 / Euler updates."""

from __future__ import annotations

import pytest
import torch

from engine.config import SamplerConfig
from engine.sampler import FlowSampler, shift_sigma


def test_shift_warps_towards_noise_and_keeps_the_ends() -> None:
    assert shift_sigma(1.0, 3.0) == 1.0 and shift_sigma(0.0, 3.0) == 0.0
    assert shift_sigma(0.5, 3.0) == pytest.approx(0.75)  # s t / (1 + (s-1) t)
    assert shift_sigma(0.25, 1.0) == pytest.approx(0.25)


@pytest.mark.parametrize("steps,timesteps", [(4, [1000, 750, 500, 250]), (2, [1000, 500]), (1, [1000])])
def test_steps_are_drawn_from_the_distilled_timesteps(steps: int, timesteps: list[int]) -> None:
    sampler = FlowSampler(SamplerConfig(shift=5.0))
    assert sampler.sigmas(steps) == pytest.approx([shift_sigma(t / 1000, 5.0) for t in timesteps])
    with pytest.raises(ValueError, match="steps"):
        sampler.sigmas(5)


def test_x0_step_predicts_then_renoises_and_euler_integrates() -> None:
    x0, noise, fresh = torch.randn(8), torch.randn(8), torch.randn(8)
    sigma, sigma_next = 0.8, 0.4
    x = (1 - sigma) * x0 + sigma * noise
    velocity = noise - x0  # the exact flow-matching velocity
    renoised = FlowSampler(SamplerConfig(mode="x0")).step(x, velocity, sigma, sigma_next, fresh)
    torch.testing.assert_close(renoised, (1 - sigma_next) * x0 + sigma_next * fresh)
    final = FlowSampler(SamplerConfig(mode="x0")).step(x, velocity, sigma, 0.0, None)
    torch.testing.assert_close(final, x0)
    euler = FlowSampler(SamplerConfig(mode="euler")).step(x, velocity, sigma, sigma_next, fresh)
    torch.testing.assert_close(euler, (1 - sigma_next) * x0 + sigma_next * noise)
