"""The session's audio timeline: model audio (16 kHz) and viewer audio (48 kHz) on one clock.

Audio is the master clock. Position ``x`` (in 16 kHz samples) is video frame ``x // 640`` and
viewer sample ``3 * x``. Pushed audio is resampled once per stream to each rate by stateful
resamplers, so how it was chunked never changes a sample. Silence inserted at a missed deadline
is marked as such (segment ``None``) and can be revoked until video has been generated over it.
"""

from __future__ import annotations

import numpy as np

from engine.config import MODEL_SAMPLE_RATE, OUTPUT_SAMPLE_RATE
from engine.resample import StreamResampler

RATIO = OUTPUT_SAMPLE_RATE // MODEL_SAMPLE_RATE  # 3


class _Buffer:
    """A growable float32 array addressed by global sample index, trimmed from the front."""

    def __init__(self) -> None:
        self.base = 0  # global index of data[0]
        self.data = np.zeros(0, np.float32)

    @property
    def end(self) -> int:
        return self.base + len(self.data)

    def append(self, samples: np.ndarray) -> None:
        self.data = np.concatenate([self.data, samples.astype(np.float32, copy=False)])

    def resize(self, end: int) -> None:
        """Cut or zero-extend so that the buffer ends at global index ``end``."""
        keep = max(end - self.base, 0)
        if keep <= len(self.data):
            self.data = self.data[:keep]
        else:
            self.data = np.concatenate([self.data, np.zeros(keep - len(self.data), np.float32)])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop); zeros outside what is held (before 0 or past the end)."""
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start, self.base), min(stop, self.end)
        if hi > lo:
            out[lo - start : hi - start] = self.data[lo - self.base : hi - self.base]
        return out

    def zero(self, start: int, stop: int) -> None:
        lo, hi = max(start, self.base), min(stop, self.end)
        if hi > lo:
            self.data[lo - self.base : hi - self.base] = 0.0

    def trim(self, before: int) -> None:
        cut = min(max(before - self.base, 0), len(self.data))
        if cut:
            self.data = self.data[cut:].copy()
            self.base += cut


class Timeline:
    """Both audio buffers plus which speech segment drove each stretch of them."""

    def __init__(self) -> None:
        self.model = _Buffer()
        self.output = _Buffer()
        self._rate: int | None = None
        self._to_model: StreamResampler | None = None
        self._to_output: StreamResampler | None = None
        # (start, end, segment_id) in model samples; segment None is inserted silence.
        self._spans: list[tuple[int, int, int | None]] = []
        self.input_samples = 0  # at the input rate, for exact end-of-input durations
        self.input_seconds = 0.0

    @property
    def end(self) -> int:
        """End of the model audio: what windows can be generated over."""
        return self.model.end

    @property
    def speech_end(self) -> int:
        """End of the last pushed (not inserted) audio, or 0."""
        for _start, stop, seg in reversed(self._spans):
            if seg is not None:
                return stop
        return 0

    @property
    def ends_in_silence(self) -> bool:
        """True when the last stretch of the timeline is inserted silence."""
        return bool(self._spans) and self._spans[-1][2] is None

    def push(self, samples: np.ndarray, sample_rate: int, segment_id: int | None) -> None:
        """Append mono float32 audio at its own rate."""
        if sample_rate != self._rate:
            self.sync()
            self._rate = sample_rate
            self._to_model = StreamResampler(sample_rate, MODEL_SAMPLE_RATE)
            self._to_output = StreamResampler(sample_rate, OUTPUT_SAMPLE_RATE)
        assert self._to_model is not None and self._to_output is not None
        self.input_seconds += len(samples) / sample_rate
        start = self.model.end
        self.model.append(self._to_model.process(samples))
        self.output.append(self._to_output.process(samples))
        self._mark(start, self.model.end, segment_id)

    def sync(self) -> None:
        """Flush the resamplers so both buffers reach the same point, then align them exactly.

        Called where the pushed stream is interrupted (silence inserted, end of input, a new
        rate): the next audio starts a new resampler stream.
        """
        if self._to_model is not None and self._to_output is not None:
            seg = self._spans[-1][2] if self._spans else None
            start = self.model.end
            self.model.append(self._to_model.flush())
            self.output.append(self._to_output.flush())
            self._mark(start, self.model.end, seg)
        self._rate = self._to_model = self._to_output = None
        self.output.resize(RATIO * self.model.end)

    def pad_silence(self, end: int) -> None:
        """Insert silence up to model position ``end`` (a deadline passed, or end of input)."""
        self.sync()
        if end > self.model.end:
            start = self.model.end
            self.model.resize(end)
            self.output.resize(RATIO * end)
            self._mark(start, end, None)

    def truncate(self, end: int) -> None:
        """Drop everything from model position ``end`` on (interrupt, or revoked silence)."""
        self._rate = self._to_model = self._to_output = None
        self.model.resize(min(end, self.model.end))
        self.output.resize(RATIO * self.model.end)
        kept = []
        for start, stop, seg in self._spans:
            if start < end:
                kept.append((start, min(stop, end), seg))
        self._spans = kept

    def mute(self, start: int, stop: int) -> None:
        """Silence what viewers hear in model positions [start, stop)."""
        self.output.zero(RATIO * start, RATIO * stop)

    def trim(self, before: int) -> None:
        """Forget audio before ``before``: memory stays flat over hours of streaming."""
        self.model.trim(before)
        self.output.trim(RATIO * before)
        self._spans = [s for s in self._spans if s[1] > before]

    def sizes(self) -> dict[str, int]:
        """Samples held per buffer and speech spans: what ``trim`` must keep bounded."""
        return {
            "model_samples": len(self.model.data),
            "output_samples": len(self.output.data),
            "spans": len(self._spans),
        }

    def segment_at(self, position: int) -> int | None:
        for start, stop, seg in reversed(self._spans):
            if start <= position < stop:
                return seg
        return None

    def _mark(self, start: int, stop: int, segment_id: int | None) -> None:
        if stop <= start:
            return
        if self._spans and self._spans[-1][2] == segment_id and self._spans[-1][1] == start:
            self._spans[-1] = (self._spans[-1][0], stop, segment_id)
        else:
            self._spans.append((start, stop, segment_id))
