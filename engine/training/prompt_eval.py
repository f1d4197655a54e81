"""Does a prompt move what it names? Held-out portraits rendered under opposite prompts.

For each attribute, two prompts at opposite levels ("smiling" / "serious") are rendered over the
same held-out portrait, speech and seed; the attribute's validated estimator
(``attribute_estimates``) must move the named way. Opposite prompts rather than prompt against
no prompt, because a portrait may already smile: "smiling" need not change it, but "smiling"
must always smile more than "serious". The same difference on the renderer's own frames (the
clip's track drawn at each level's middle value) says how much of the asked change came through.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.render import render_frames, with_overrides
from engine.runtime.base import Backend
from engine.training import avatar
from engine.training.attribute_estimates import ESTIMATORS
from engine.training.data import Clip
from engine.training.prompts import Level, levels_of

# (attribute, the level that should read higher, the one that should read lower)
OPPOSITES: tuple[tuple[str, int, int], ...] = (("smile", 0, 2), ("mood", 0, 1))


def _level_value(level: Level) -> float:
    return 0.5 * (level.low + level.high)


def prompt_effects(
    backend: Backend,
    clips: list[Clip],
    steps: int = 4,
    seed: int = 0,
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Per attribute: the estimate's change from the low prompt to the high one, on generated video
    and on the renderer's ground truth, per clip; ``moved_right_way`` is the share of clips where
    the generated change has the ground truth's sign. ``tick`` is called after each render."""
    config = with_overrides(backend.config, steps=steps)
    size = config.height
    out: dict[str, Any] = {}
    for attribute, high_index, low_index in OPPOSITES:
        levels = levels_of(attribute)
        high, low = levels[high_index], levels[low_index]
        estimate = ESTIMATORS[attribute]
        generated, truth = [], []
        for clip in clips:
            portrait = clip.portrait(size)
            means = {}
            for level in (high, low):
                prompt = level.phrases[0]
                frames, _ = render_frames(backend, portrait, clip.audio, config, seed=seed, prompt=prompt)
                if tick is not None:
                    tick()
                drawn = dataclasses.replace(clip.attributes, **{attribute: _level_value(level)})
                rendered = avatar.render_clip(clip.identity, drawn, clip.track, size)
                means[level] = (
                    float(np.mean(estimate(frames, portrait))),
                    float(np.mean(estimate(rendered, portrait))),
                )
            generated.append(means[high][0] - means[low][0])
            truth.append(means[high][1] - means[low][1])
        gen, tru = np.array(generated), np.array(truth)
        out[attribute] = {
            "prompts": [high.phrases[0], low.phrases[0]],
            "change_generated": [round(v, 4) for v in gen],
            "change_truth": [round(v, 4) for v in tru],
            "moved_right_way": float(np.mean(np.sign(gen) == np.sign(tru))),
            "fraction_of_truth": float(gen.mean() / tru.mean()) if abs(tru.mean()) > 1e-9 else None,
        }
    return out
