"""StreamResampler: chunking never changes the bits, and the filter does what its design says."""

from __future__ import annotations

import numpy as np
import pytest

from engine.resample import StreamResampler

RATE_PAIRS = [(44100, 16000), (48000, 16000), (8000, 16000), (16000, 48000), (22050, 48000)]


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)


def _run(rs: StreamResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Push ``x`` cut into consecutive pieces of ``sizes`` (cycled), then flush."""
    out, pos, i = [], 0, 0
    while pos < x.size:
        out.append(rs.process(x[pos : pos + sizes[i % len(sizes)]]))
        pos += sizes[i % len(sizes)]
        i += 1
    out.append(rs.flush())
    for piece in out:
        assert piece.dtype == np.float32
    return np.concatenate(out)


def _expected_len(n_in: int, in_rate: int, out_rate: int) -> int:
    return (2 * n_in * out_rate + in_rate) // (2 * in_rate)  # round, ties up


def _tone(rate: int, freq: float, n: int) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(n) / rate).astype(np.float32)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_output_is_bit_identical_whatever_the_chunking(in_rate: int, out_rate: int) -> None:
    x = _noise(in_rate // 4)
    whole = _run(StreamResampler(in_rate, out_rate), x, [x.size])
    assert whole.size == _expected_len(x.size, in_rate, out_rate)
    for sizes in ([137], [320], [1000, 1, 7, 0, 2500, 64]):
        np.testing.assert_array_equal(_run(StreamResampler(in_rate, out_rate), x, sizes), whole)
    # Sample-by-sample pushing is slow in Python, so it gets a shorter signal of its own.
    short = x[:1500]
    np.testing.assert_array_equal(
        _run(StreamResampler(in_rate, out_rate), short, [1]),
        _run(StreamResampler(in_rate, out_rate), short, [short.size]),
    )


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
@pytest.mark.parametrize("n_in", [0, 1, 2, 3, 441, 1001, 4999])
def test_total_length(in_rate: int, out_rate: int, n_in: int) -> None:
    y = _run(StreamResampler(in_rate, out_rate), _noise(n_in), [97])
    assert y.size == _expected_len(n_in, in_rate, out_rate)


def test_ties_round_up() -> None:
    # 32 kHz -> 16 kHz of 3 samples is 1.5 outputs: the one ratio family where a tie can occur.
    assert _run(StreamResampler(32000, 16000), _noise(3), [3]).size == 2


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_1khz_sine_keeps_amplitude_and_phase(in_rate: int, out_rate: int) -> None:
    x = _tone(in_rate, 1000.0, in_rate // 4)
    y = _run(StreamResampler(in_rate, out_rate), x, [320]).astype(np.float64)
    ideal = np.sin(2 * np.pi * 1000.0 * np.arange(y.size) / out_rate)
    # Away from the edges, where the filter sees silence on one side.
    mid = slice(y.size // 8, -(y.size // 8))
    # Sample-wise comparison with the ideal tone also pins the timing: zero-phase, no delay.
    assert np.max(np.abs(y[mid] - ideal[mid])) < 0.01
    amplitude = np.sqrt(2 * np.mean(y[mid] ** 2))
    assert abs(amplitude - 1.0) < 0.01


@pytest.mark.parametrize(("in_rate", "out_rate"), [(48000, 16000), (44100, 16000)])
@pytest.mark.parametrize("over_nyquist", [1.05, 1.5])
def test_tone_above_output_nyquist_is_removed(in_rate: int, out_rate: int, over_nyquist: float) -> None:
    x = _tone(in_rate, over_nyquist * out_rate / 2, in_rate // 4)
    y = _run(StreamResampler(in_rate, out_rate), x, [320]).astype(np.float64)
    mid = y[y.size // 8 : -(y.size // 8)]
    assert 20 * np.log10(np.sqrt(2 * np.mean(mid**2))) <= -50.0


@pytest.mark.parametrize(("in_rate", "out_rate"), [(16000, 48000), (22050, 48000), (8000, 16000)])
def test_upsampling_images_are_removed(in_rate: int, out_rate: int) -> None:
    # A tone near the input Nyquist mirrors to just above it; the filter must remove the image.
    freq = 0.85 * in_rate / 2
    y = _run(StreamResampler(in_rate, out_rate), _tone(in_rate, freq, in_rate // 2), [320])
    mid = y[y.size // 8 : -(y.size // 8)].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(mid.size)))
    freqs = np.fft.rfftfreq(mid.size, 1 / out_rate)
    images = spectrum[freqs > in_rate / 2 * 1.02].max()
    assert 20 * np.log10(images / spectrum.max()) <= -50.0


def test_equal_rates_pass_through_unchanged() -> None:
    rs = StreamResampler(16000, 16000)
    x = _noise(1000)
    np.testing.assert_array_equal(rs.process(x[:333]), x[:333])
    np.testing.assert_array_equal(rs.process(x[333:]), x[333:])
    assert rs.flush().size == 0


def test_flush_starts_a_fresh_stream() -> None:
    rs = StreamResampler(44100, 16000)
    first = _run(rs, _noise(5000, seed=1), [500])
    again = _run(rs, _noise(5000, seed=1), [500])
    np.testing.assert_array_equal(first, again)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0, 16000)
    with pytest.raises(ValueError):
        StreamResampler(48000, 16000).process(np.zeros((2, 10), dtype=np.float32))
