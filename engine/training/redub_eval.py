"""Does a re-dub follow the new speech and keep the rest of the source? Held-out clips, scored
against the renderer's ground-truth re-dub.

The source is a held-out clip's track drawn with another clip's mouth (what a user uploads); the
ground truth is the same track with the mouth of the clip's own speech, which is the audio the
model hears. Two figures, with the issue's bars: full-frame PSNR against the ground truth (the
head motion, framing and everything but the mouth must follow the source), and lip-sync, the
mouth-opening estimate's correlation with the ground truth (the mouth must follow the speech,
not the source). Copying the source unchanged is scored beside them: it passes PSNR easily, so
only lip-sync can tell a re-dub from a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.config import SAMPLES_PER_FRAME
from engine.render import render_frames, with_overrides
from engine.runtime.base import Backend
from engine.training import estimators
from engine.training.data import Clip
from engine.training.redub_stage import with_mouth_of

PSNR_BAR_DB = 28.0
LIPSYNC_BAR = 0.8


def psnr(frames: np.ndarray, truth: np.ndarray) -> float:
    """Full-frame PSNR in dB of uint8 frames against uint8 ground truth."""
    mse = float(np.mean((frames.astype(np.float64) - truth.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _lipsync(frames: Sequence[np.ndarray], clips: Sequence[Clip]) -> float | None:
    """Pooled correlation of the estimated mouth opening with each clip's true one (``pearson``:
    0 for a mouth that never moves, None when the truth never does)."""
    estimate = np.concatenate(
        [estimators.mouth_opening(f, c.portrait(f.shape[1])) for f, c in zip(frames, clips, strict=True)]
    )
    truth = np.concatenate([c.track.mouth_open[: len(f)] for f, c in zip(frames, clips, strict=True)])
    return estimators.pearson(estimate, truth)


def redub_effects(
    backend: Backend,
    clips: Sequence[Clip],
    steps: int = 4,
    seed: int = 0,
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Clip i is re-dubbed from a source drawn with clip i+1's mouth (the next one, cyclically).
    Each is cut to an odd frame count, which the mirror loop keeps whole, so the output shows the
    source forward throughout and every frame has its ground truth."""
    config = with_overrides(backend.config, steps=steps)
    size = config.height
    outputs, sources, truths = [], [], []
    for i, clip in enumerate(clips):
        odd = clip.num_frames - (1 - clip.num_frames % 2)
        source = with_mouth_of(clip, clips[(i + 1) % len(clips)]).frames(0, odd, size)
        audio = clip.audio[: odd * SAMPLES_PER_FRAME]
        frames, _ = render_frames(backend, source[0], audio, config, seed=seed, video=source)
        n = min(len(frames), odd)
        outputs.append(frames[:n])
        sources.append(source[:n])
        truths.append(clip.frames(0, n, size))
        if tick is not None:
            tick()
    return {
        "steps": steps,
        "psnr_db": [round(psnr(o, t), 2) for o, t in zip(outputs, truths, strict=True)],
        "lipsync_corr": _lipsync(outputs, clips),
        "copy_psnr_db": [round(psnr(s, t), 2) for s, t in zip(sources, truths, strict=True)],
        "copy_lipsync_corr": _lipsync(sources, clips),
        "bars": {"psnr_db": PSNR_BAR_DB, "lipsync_corr": LIPSYNC_BAR},
    }
