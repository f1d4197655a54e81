"""Reading the prompt's attributes back out of video, to check that a prompt moves what it names.

A prompt is judged by comparison: the same portrait, speech and seed rendered with and without
it, so every estimate here is a per-clip mean and only its *change* matters. The validation
matches that use: it renders one identity and track at two values of an attribute and correlates
the change in the estimate with the change in the value, over random identities: on the renders
themselves (the bar, >= 0.95) and through the model's own VAE (what generated video allows).

* smile: ``estimators.smile_estimate`` (corner height against the upper lip's top), mean over frames.
* mood: log brightness of the background at the picture's left and right edges (which the head
  never covers) over the skin's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from engine.training import avatar
from engine.training.estimators import _box, _lum, _Reference, smile_estimate

_EDGE = 10.0  # design units of each side strip read for the background


def mood_estimate(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(F,) log brightness of the background at the picture's left and right edges over the skin's.

    The mood scales the background's colour, so its log brightness moves by the same amount
    whatever the colour; the skin, which the mood leaves alone, cancels a global brightness change."""
    frames = np.asarray(frames, np.float32)
    ref = _Reference(reference)
    size = frames.shape[1]
    edge = max(1, int(round(_EDGE * size / avatar.CANVAS)))
    strips = np.concatenate([frames[:, : size // 2, :edge], frames[:, : size // 2, -edge:]], axis=2)
    rows, cols = _box((avatar.CENTER * ref.k, avatar.FACE_CY * ref.k), -5.0, 5.0, 1.0, 7.0, ref.k, size)
    background = _lum(strips).mean(axis=(1, 2))
    skin = _lum(frames[:, rows, cols]).mean(axis=(1, 2))
    return np.log(np.maximum(background, 1.0)) - np.log(np.maximum(skin, 1.0))


ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "smile": smile_estimate,
    "mood": mood_estimate,
}


def attribute_estimates(frames: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Per-clip means of each attribute's estimate; compare two clips of one portrait."""
    return {name: float(np.mean(estimate(frames, reference))) for name, estimate in ESTIMATORS.items()}


def validate_attribute_estimators(
    seed: int = 0,
    pairs: int = 16,
    frames: int = 24,
    through: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """Correlation of each estimate's change with its attribute's change over ``pairs`` random
    identities, each rendered at two random values of it with one track. ``through`` passes the
    renders through something first (the model's VAE, to see what generated video allows)."""
    rng = np.random.default_rng(seed)
    changes: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in ESTIMATORS}
    for _ in range(pairs):
        ident, attrs = avatar.Identity.sample(rng), avatar.Attributes.sample(rng)
        track = avatar.idle_track(rng, frames)
        reference = avatar.portrait(ident, attrs)
        for name, estimate in ESTIMATORS.items():
            values = [float(getattr(avatar.Attributes.sample(rng), name)) for _ in range(2)]
            means = []
            for value in values:
                video = avatar.render_clip(ident, dataclasses.replace(attrs, **{name: value}), track)
                means.append(
                    float(np.mean(estimate(video if through is None else through(video), reference)))
                )
            changes[name][0].append(means[1] - means[0])
            changes[name][1].append(values[1] - values[0])
    return {f"{name}_corr": float(np.corrcoef(est, truth)[0, 1]) for name, (est, truth) in changes.items()}
