"""Streaming rational resampler whose output does not depend on how the input was chunked.

Audio reaches a session in chunks of whatever size the network delivered, and is resampled twice:
to 16 kHz for the model and to 48 kHz for viewers. The model's output must be reproducible from
the audio alone, so output sample ``m`` is a fixed function of the global input samples: a
float64 dot product computed the same way for every ``m``, fed from exactly the history the next
outputs need. Chunking then changes only *when* an output is emitted, never its bits.

The filter is a Kaiser-windowed sinc evaluated at each output's fractional position (a
polyphase FIR with one phase per distinct fraction), designed here in numpy so there is no scipy
dependency. It is zero-phase: an output waits for ``half_taps`` input samples after it, which is
the resampler's latency.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Passband flat to 90% of the lower Nyquist, stopband from the lower Nyquist itself: the cutoff
# sits mid-transition, so nothing above the output Nyquist survives to alias.
_PASSBAND_EDGE = 0.90
_STOPBAND_EDGE = 1.00
# Design target; Kaiser's length formula is approximate, so aim above the 60 dB we promise.
_ATTENUATION_DB = 70.0
# Taps per gathered block. Keeps the (outputs, taps) float64 scratch near 0.5 MB: blocks of
# 2 MB measured ~8x slower, as every block then paid for fresh pages from the allocator.
_BLOCK_TAPS = 65_536


def _kaiser_beta(attenuation_db: float) -> float:
    """Kaiser's empirical beta for a stopband attenuation (Oppenheim & Schafer, eq. 7.62)."""
    if attenuation_db > 50:
        return 0.1102 * (attenuation_db - 8.7)
    if attenuation_db >= 21:
        return 0.5842 * (attenuation_db - 21) ** 0.4 + 0.07886 * (attenuation_db - 21)
    return 0.0


def _design_polyphase(up: int, down: int) -> tuple[np.ndarray, int]:
    """Phase table ``(up, 2*half_taps)`` float64 and ``half_taps`` for resampling by ``up/down``.

    Row ``p`` holds the taps for an output lying ``p/up`` of an input sample after input
    ``n0``; tap ``j`` weights input ``n0 - half_taps + 1 + j``. Each row is normalised to unit
    sum so every phase passes DC exactly, which keeps the per-phase gain ripple out of the output.
    """
    # Frequencies in cycles per *input* sample; the lower Nyquist is min(1, up/down) / 2.
    nyquist = 0.5 * min(1.0, up / down)
    cutoff = 0.5 * (_PASSBAND_EDGE + _STOPBAND_EDGE) * nyquist
    transition = (_STOPBAND_EDGE - _PASSBAND_EDGE) * nyquist
    num_taps = (_ATTENUATION_DB - 7.95) / (2.285 * 2 * math.pi * transition) + 1
    half_taps = math.ceil(num_taps / 2)

    frac = np.arange(up, dtype=np.float64)[:, None] / up  # (up, 1)
    dist = frac + (half_taps - 1) - np.arange(2 * half_taps, dtype=np.float64)[None, :]  # (up, taps)
    beta = _kaiser_beta(_ATTENUATION_DB)
    window = np.i0(beta * np.sqrt(np.clip(1.0 - (dist / half_taps) ** 2, 0.0, None))) / np.i0(beta)
    table = 2 * cutoff * np.sinc(2 * cutoff * dist) * window  # (up, taps)
    table /= table.sum(axis=1, keepdims=True)
    return table, half_taps


class StreamResampler:
    """Resample 1-D float32 audio from ``in_rate`` to ``out_rate``, pushed in chunks of any size.

    ``process`` emits every output whose input support has fully arrived; ``flush`` ends the
    stream, treating the future as silence, so the total output length is
    ``round(n_in * out_rate / in_rate)``, and leaves the resampler ready for a new stream.
    Samples before the first are silence too.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        g = math.gcd(in_rate, out_rate)
        self._up, self._down = out_rate // g, in_rate // g
        self._identity = in_rate == out_rate
        # Equal rates never reach the filter: no taps, so no history and no latency.
        if self._identity:
            self._table, self._half = np.ones((1, 1)), 0
        else:
            self._table, self._half = _design_polyphase(self._up, self._down)
        self._reset()

    def _reset(self) -> None:
        self._n_in = 0  # input samples received since the stream began
        self._next_out = 0  # global index of the next output to emit
        # History of global input samples [_buf_start, _buf_start + len); index < 0 is silence.
        self._buf_start = -self._half
        self._buf = np.zeros(self._half, dtype=np.float64)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Push input samples; returns the float32 outputs that became computable (maybe none)."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 1:
            raise ValueError(f"expected 1-D mono audio, got shape {chunk.shape}")
        if self._identity:
            self._n_in += chunk.size
            return chunk.astype(np.float32, copy=True)
        self._buf = np.concatenate([self._buf, chunk.astype(np.float64)])
        self._n_in += chunk.size
        # Output m needs inputs up to floor(m*down/up) + half; the last arrived input is n_in - 1.
        last_n0 = self._n_in - 1 - self._half
        end = ((last_n0 + 1) * self._up - 1) // self._down + 1
        return self._emit(end)

    def flush(self) -> np.ndarray:
        """Emit the remaining outputs with silence as the future, then reset for a new stream."""
        if self._identity:
            self._reset()
            return np.zeros(0, dtype=np.float32)
        total = (2 * self._n_in * self._up + self._down) // (2 * self._down)  # round half up
        self._buf = np.concatenate([self._buf, np.zeros(self._half + 1, dtype=np.float64)])
        out = self._emit(total)
        self._reset()
        return out

    def _emit(self, end: int) -> np.ndarray:
        """Compute outputs [_next_out, end) and drop the history no later output needs."""
        start = self._next_out
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        # Row i of the view is the filter's support for an output whose first tap is input
        # _buf_start + i; indexing it by rows copies contiguous runs, far cheaper than gathering
        # (outputs, taps) single elements.
        windows = sliding_window_view(self._buf, 2 * self._half)  # (len - taps + 1, taps)
        out = np.empty(end - start, dtype=np.float32)
        block = max(1, _BLOCK_TAPS // windows.shape[1])
        for lo in range(start, end, block):
            m = np.arange(lo, min(lo + block, end), dtype=np.int64)
            n0, phase = np.divmod(m * self._down, self._up)
            x = windows[n0 - self._half + 1 - self._buf_start]  # (n_out, taps)
            x *= self._table[phase]
            # Each output's row sum runs in the same order whatever block it lands in, which is
            # what makes the result independent of chunking.
            out[lo - start : lo - start + m.size] = x.sum(axis=1)
        self._next_out = end
        keep_from = (end * self._down) // self._up - self._half + 1
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
        return out
