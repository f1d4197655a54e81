"""Parity: every exported component against torch, through the Backend interface, on fixed inputs.

Both sides are driven through the same Backend calls the scheduler makes, so the check covers
the runtime's glue (tokenisation, the decoder cache fed back step after step, dtype handling)
and not only the graphs. Errors are recorded per component, in float32 output units, and an
export above its precision's tolerance fails; int8's larger error is reported, never hidden.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.runtime.base import Backend
from engine.runtime.manifest import PARITY_NAME, one_line
from export.errors import ExportError, ParityError
from export.graphs import Graph

log = logging.getLogger(__name__)

# (max abs, mean abs) per precision. Outputs are unit scale (layer-normed features, velocities,
# pixels in [-1, 1]); float32 differs only by kernel summation order.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (2e-3, 1e-4),
    "fp16": (5e-2, 5e-3),
    "bf16": (2e-1, 2e-2),
    "int8": (2.5e-1, 3e-2),
}
PROMPTS = ("", "a person talking to the camera", "é" * 40)  # empty, typical, truncated mid-character
DECODER_STEPS = 3  # enough for the cache outputs to be fed back twice


def _error(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    diff = (reference.float() - candidate.float()).abs()
    return float(diff.max()), float(diff.mean())


def _decode_stream(backend: Backend, latents: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """Frames and final cache of a stream decoded one latent at a time from the zero cache;
    ``audio`` (1, 4T, Da) is what its frames hear."""
    cache = backend.vae_decoder_cache(1)
    frames = []
    for t in range(latents.shape[2]):
        out, cache = backend.vae_decoder_step(latents[:, :, t : t + 1], cache, audio[:, 4 * t : 4 * t + 4])
        frames.append(out.flatten())
    return torch.cat([*frames, *(c.flatten() for c in cache)])


def _encode_stream(backend: Backend, frames: torch.Tensor) -> torch.Tensor:
    """Latents and final cache of a clip encoded four frames at a time from the zero cache."""
    cache = backend.vae_encoder_cache(1)
    latents = []
    for t in range(0, frames.shape[2], 4):
        latent, cache = backend.vae_encoder_step(frames[:, :, t : t + 4], cache)
        latents.append(latent.flatten())
    return torch.cat([*latents, *(c.flatten() for c in cache)])


def measure(
    reference: Backend, candidate: Backend, graphs: dict[str, Graph]
) -> dict[str, tuple[float, float]]:
    """(max abs, mean abs) error of ``candidate`` against ``reference`` per component."""
    latent, sound = graphs["vae_decoder_step"].inputs[:2]
    latents = torch.randn(
        *latent.shape[:2], DECODER_STEPS, *latent.shape[3:], generator=torch.Generator().manual_seed(1)
    )
    heard = torch.randn(1, 4 * DECODER_STEPS, sound.shape[2], generator=torch.Generator().manual_seed(3))

    group = graphs["vae_encoder_step"].inputs[0]  # (1, 3, 4, H, W)
    frames = (
        torch.rand(
            *group.shape[:2], 4 * DECODER_STEPS, *group.shape[3:], generator=torch.Generator().manual_seed(2)
        )
        .mul(2)
        .sub(1)
    )

    def method(name: str) -> Callable[..., torch.Tensor]:
        return lambda backend: getattr(backend, name)(*graphs[name].inputs)

    calls: dict[str, Callable[[Backend], torch.Tensor]] = {
        "text_encoder": lambda b: torch.cat([b.encode_text(p) for p in PROMPTS]),
        "audio_encoder": method("audio_encoder"),
        "dit_step": method("dit_step"),
        "vae_encoder_step": lambda b: _encode_stream(b, frames),
        "vae_decoder_step": lambda b: _decode_stream(b, latents, heard),
    }
    errors = {}
    for name, call in calls.items():
        expected = call(reference)
        try:
            actual = call(candidate)
        except Exception as exc:  # any runtime's failure to run an exported graph
            raise ExportError(f"the {candidate.name} {name} fails to run: {one_line(exc)}") from exc
        errors[name] = _error(expected, actual)
    return errors


def check_parity(
    reference: Backend,
    candidate: Backend,
    graphs: dict[str, Graph],
    precisions: dict[str, str],
    directory: Path,
) -> dict[str, Any]:
    """Measure, write ``parity.json`` in ``directory``, and raise ParityError above tolerance."""
    report: dict[str, Any] = {}
    for name, (max_abs, mean_abs) in measure(reference, candidate, graphs).items():
        tol_max, tol_mean = TOLERANCES[precisions[name]]
        report[name] = {
            "precision": precisions[name],
            "max_abs": max_abs,
            "mean_abs": mean_abs,
            "tolerance": {"max_abs": tol_max, "mean_abs": tol_mean},
            "ok": max_abs <= tol_max and mean_abs <= tol_mean,
        }
        log.info("parity %s (%s): max abs %.2e, mean abs %.2e", name, precisions[name], max_abs, mean_abs)
    path = directory / PARITY_NAME
    path.write_text(json.dumps(report, indent=2) + "\n")
    failed = [
        f"{name} ({r['precision']}) max {r['max_abs']:.3g} / mean {r['mean_abs']:.3g} > "
        f"{r['tolerance']['max_abs']:.3g} / {r['tolerance']['mean_abs']:.3g}"
        for name, r in report.items()
        if not r["ok"]
    ]
    if failed:
        raise ParityError(f"parity check failed for {'; '.join(failed)} (see {path})")
    return report
