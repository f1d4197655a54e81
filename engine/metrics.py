"""Quality figures computed while frames stream past: seams and motion."""

from __future__ import annotations

import numpy as np

from engine.config import FRAMES_PER_LATENT


class SeamMeter:
    """Mean |frame difference| at window-boundary transitions vs the other transitions.

    A seam shows as a jump where one window hands over to the next. ``seam_ratio`` divides the
    mean difference at those transitions by the mean at the other latent-boundary transitions
    (or, when every latent boundary is a window boundary, as with stride 1, by the mean at the
    transitions inside a latent). ``motion`` is the overall mean difference: a still video makes
    any ratio meaningless, so the two are reported together.
    """

    def __init__(self, stride: int, window_starts: set[int] | None = None) -> None:
        self.stride = stride
        self._previous: np.ndarray | None = None
        self._index = 0
        self._sums = {"window": [0.0, 0], "latent": [0.0, 0], "inner": [0.0, 0]}
        self.window_starts = window_starts if window_starts is not None else set()

    def update(self, frame: np.ndarray) -> None:
        """Feed frames in order. ``window_starts`` holds the frame indices where a window's
        output begins; it may grow while frames are fed."""
        current = frame.astype(np.float32)
        if self._previous is not None:
            diff = float(np.abs(current - self._previous).mean())
            if self._index in self.window_starts:
                kind = "window"
            elif self._index % FRAMES_PER_LATENT == 0:
                kind = "latent"
            else:
                kind = "inner"
            self._sums[kind][0] += diff
            self._sums[kind][1] += 1
        self._previous = current
        self._index += 1

    def _mean(self, *kinds: str) -> float | None:
        total = sum(self._sums[k][0] for k in kinds)
        count = sum(self._sums[k][1] for k in kinds)
        return total / count if count else None

    def report(self) -> dict[str, float | str | None]:
        window = self._mean("window")
        reference_kind = "latent" if self.stride > 1 else "inner"
        reference = self._mean(reference_kind)
        ratio = window / reference if window is not None and reference else None
        return {
            "seam_ratio": ratio,
            "seam_reference": "latent_boundaries" if reference_kind == "latent" else "within_latent",
            "motion": self._mean("window", "latent", "inner"),
        }
