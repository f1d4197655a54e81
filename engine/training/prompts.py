"""The prompt language the default model is trained on: phrases that set the avatar's attributes.

The renderer labels four attributes per clip (``avatar.Attributes``); two are in the language
(see ``ATTRIBUTES``). Each phrase below names one attribute at one level, with the range of
values it stands for; a prompt joins up to two phrases. An attribute a prompt does not mention
keeps the portrait's value, so the empty prompt means "as in the portrait".

This is a closed vocabulary on purpose: a byte-level text encoder trained for minutes learns the
phrases it sees, not English. A real text encoder (umT5) behind the same ``TextEncoder`` interface
would take free text; the prompt stage would train the same way on its embeddings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from engine.training.avatar import Attributes


@dataclass(frozen=True)
class Level:
    """One attribute at one level: the values it stands for and the phrases that say it."""

    attribute: str
    low: float
    high: float
    phrases: tuple[str, ...]


LEVELS: tuple[Level, ...] = (
    Level("smile", 0.8, 1.0, ("smiling", "a big smile", "grinning", "a happy smile")),
    Level("smile", 0.35, 0.55, ("a slight smile", "a gentle smile", "a faint smile")),
    Level("smile", 0.0, 0.05, ("serious", "not smiling", "a neutral mouth")),
    Level("mood", 0.85, 1.0, ("a bright warm background", "a sunny backdrop", "bright lighting")),
    Level("mood", 0.0, 0.15, ("a dark moody background", "a dim backdrop", "low-key lighting")),
)
# The renderer also labels ``brow`` and ``gaze_x``; they are left out because their control could not
# be shown on the default model: no brow estimator reached the validation bar (a frowning brow lands
# on the lashes at 128 px), and the VAE alone loses the gaze (the gaze estimator, 0.99 on renders,
# reads 0.51 on the same renders after a VAE round trip), so no prompt can put it back.
ATTRIBUTES: tuple[str, ...] = ("smile", "mood")
_SEPARATORS = (", ", " and ", ", ")  # a comma twice as often as "and"


def levels_of(attribute: str) -> list[Level]:
    return [level for level in LEVELS if level.attribute == attribute]


@dataclass(frozen=True)
class PromptTarget:
    """What a prompt asks for: the levels it names; ``apply`` turns a portrait's attributes into the
    attributes the video should show."""

    levels: tuple[Level, ...]
    values: tuple[float, ...]

    def apply(self, portrait: Attributes) -> Attributes:
        return dataclasses.replace(
            portrait, **{level.attribute: v for level, v in zip(self.levels, self.values, strict=True)}
        )

    def phrase(self, rng: np.random.Generator) -> str:
        """One wording of the prompt: a random phrase per level, in random order. The empty target
        is the empty prompt."""
        words = [str(rng.choice(level.phrases)) for level in self.levels]
        order = rng.permutation(len(words))
        text = ""
        for i, j in enumerate(order):
            text += (str(rng.choice(_SEPARATORS)) if i else "") + words[j]
        return text


def sample_target(rng: np.random.Generator, empty_fraction: float = 0.2) -> PromptTarget:
    """No attribute (``empty_fraction`` of the time), else one or two different attributes, each at a
    random level and a random value inside it."""
    if rng.random() < empty_fraction:
        return PromptTarget((), ())
    count = 1 if rng.random() < 0.7 else 2
    attributes = rng.choice(len(ATTRIBUTES), size=count, replace=False)
    levels = []
    for a in sorted(int(i) for i in attributes):
        options = levels_of(ATTRIBUTES[a])
        levels.append(options[int(rng.integers(len(options)))])
    values = tuple(float(rng.uniform(level.low, level.high)) for level in levels)
    return PromptTarget(tuple(levels), values)


def sample_start(rng: np.random.Generator, target: PromptTarget) -> PromptTarget:
    """Where a live change to ``target`` may come from: no prompt (half the time), or other levels
    of the same attributes."""
    if not target.levels or rng.random() < 0.5:
        return PromptTarget((), ())
    levels = []
    for level in target.levels:
        options = levels_of(level.attribute)
        levels.append(options[int(rng.integers(len(options)))])
    return PromptTarget(tuple(levels), tuple(float(rng.uniform(lv.low, lv.high)) for lv in levels))


def blend_attributes(portrait: Attributes, start: PromptTarget, target: PromptTarget, u: float) -> Attributes:
    """The attributes a fraction ``u`` of the way from what ``start`` shows to what ``target`` asks."""
    a, b = start.apply(portrait), target.apply(portrait)
    names = {level.attribute for level in target.levels}
    return dataclasses.replace(a, **{n: getattr(a, n) + u * (getattr(b, n) - getattr(a, n)) for n in names})
