"""A session's prompt over time: the text context each window sees, easing across a live change.

A prompt reaches the DiT as a text context (1, L, Dt) from the text encoder. Swapping it between
two windows would change the picture within one latent (4 frames); instead a change blends the
context from the one on screen to the new one over ``EASE_LATENTS`` (about a second), with the
same smoothstep as a camera move. A blended context only gives a blended picture because the
prompt stage trains it to: part of its clips are drawn part of the way between two prompts and
paired with the matching blend of their contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.config import ConfigError, ModelConfig
from engine.models.camera import smoothstep

EASE_LATENTS = 6  # 24 frames, ~1 s


def check_prompt(config: ModelConfig, prompt: str) -> None:
    """A prompt the model cannot follow is refused, not ignored: no prompt control, or longer than
    its text encoder reads (the rest would be cut off silently)."""
    if not prompt:
        return
    if not config.capabilities.prompt:
        raise ConfigError(
            f"prompt: model '{config.name}' has no prompt control (capabilities.prompt is false); "
            "use one trained with it, such as --preset default-prompt"
        )
    size = len(prompt.encode("utf-8"))
    if size > config.text.max_tokens:
        raise ConfigError(f"prompt: {size} bytes, but this model reads at most {config.text.max_tokens}")


@dataclass(frozen=True)
class _Change:
    from_latent: int
    start: torch.Tensor  # (1, L, Dt) the context on screen when the change was made
    end: torch.Tensor  # (1, L, Dt) the new prompt's context


class PromptPath:
    """Text contexts as a pure function of the stream latent, so a window generated twice (a
    rollback after an interrupt) sees the same prompt."""

    KEEP = 4  # changes remembered; older ones finished easing before any window that can still run

    def __init__(self, text: torch.Tensor) -> None:
        self._changes = [_Change(-(10**9), text, text)]

    def change(self, text: torch.Tensor, from_latent: int) -> None:
        """Ease to ``text`` from stream latent ``from_latent`` on; later changes are replaced."""
        self._changes = [c for c in self._changes if c.from_latent < from_latent] or self._changes[:1]
        self._changes.append(_Change(from_latent, self.at(from_latent), text))
        del self._changes[: -self.KEEP]

    def at(self, latent: int) -> torch.Tensor:
        """(1, L, Dt) the context of a window whose first new latent is ``latent``."""
        change = next(c for c in reversed(self._changes) if c.from_latent <= latent)
        u = float(smoothstep(np.array((latent - change.from_latent + 1) / EASE_LATENTS)))
        if u >= 1.0:
            return change.end
        return change.start + u * (change.end - change.start)
