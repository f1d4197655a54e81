"""Bench-mode stamps: a frame-index code drawn into every frame and a tone marker in its audio.

With ``--bench-stamp`` every outgoing frame carries its own index, so a client that receives the
stream (WebRTC, RTMP, a recording) can tell which frame it is looking at and which audio drove it,
after any codec, without trusting container timestamps. The latency benchmarks read both.

Video: a grid of 8 x 4 black/white cells in the top-left corner, row-major: a sync pair ``1 0``,
the index modulo 2**24 (MSB first), a CRC-4 of those bits and a closing sync pair ``0 1``. The cell
size is 1/16 of the frame's shorter side (never under 8 px), so the code scales with the picture:
a frame that was scaled as a whole still reads back, and the cells stay large enough to survive
H.264/VP8 at low bitrates. Cells are sampled over their inner half, where block edges and ringing
do not reach, and any cell that is neither clearly dark nor clearly light makes the read fail
rather than guess.

Audio: frame ``f`` with ``f % 25 == 0`` (once a second) gets a 40 ms burst over its own audio: a
3.5 kHz pilot plus a code tone at one of 8 frequencies (1-2.75 kHz) chosen by ``(f // 25) % 8``.
The burst's onset marks the frame's first sample; the code tells apart markers up to 4 s either
side of where a caller expects them, so a receiver whose audio clock is offset by a few seconds
still maps every marker to the right frame. Opus and AAC keep both tones even at speech bitrates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from engine.config import FPS, OUTPUT_SAMPLE_RATE

if TYPE_CHECKING:  # engine.scheduler pulls in torch; readers of stamps should not need it
    from engine.scheduler import OutputFrame

AUDIO_RATE: Final = OUTPUT_SAMPLE_RATE  # markers are mixed into, and found in, 48 kHz audio
SAMPLES_PER_FRAME: Final = AUDIO_RATE // FPS  # 1920 samples of 48 kHz audio per video frame

# --- video code -----------------------------------------------------------------------------------
STAMP_BITS: Final = 24  # indices wrap after 2**24 frames (about 7.7 days at 25 fps)
GRID_COLS: Final = 8
GRID_ROWS: Final = 4
CELLS_PER_SHORT_SIDE: Final = 16
MIN_CELL_PX: Final = 8
_SYNC_HEAD: Final = (1, 0)
_SYNC_TAIL: Final = (0, 1)
_CRC_BITS: Final = 4
# Mean luma of a cell's inner half must be below DARK or above LIGHT to count as a bit.
_DARK: Final = 100.0
_LIGHT: Final = 156.0

# --- audio marker ---------------------------------------------------------------------------------
MARKER_PERIOD_FRAMES: Final = 25  # one marker a second
MARKER_FREQUENCIES_HZ: Final = tuple(1000 + 250 * j for j in range(8))  # the code tone, by code
PILOT_HZ: Final = 3500  # sounds with every code tone: speech seldom holds two such peaks at once
MARKER_AMPLITUDE: Final = 0.2  # of each tone
_RAMP_SAMPLES: Final = 240  # 5 ms raised-cosine edges: no clicks, so codecs do not smear the onset
_WINDOW: Final = 960  # 20 ms analysis window: 50 Hz bins, every marker tone sits on a bin
_HOP: Final = 240  # 5 ms
# Shares of a window's power above 800 Hz (each tone counted over its bin and the two beside it).
# Voiced speech keeps most of its power below 800 Hz, so loud speech under a marker does not hide
# it; a formant harmonic can own that band, but not together with the pilot at a similar level.
_BAND_LOW_HZ: Final = 800
_MIN_TONE_SHARE: Final = 0.15  # each tone
_MIN_MARKER_SHARE: Final = 0.5  # both tones together
_MAX_TONE_RATIO: Final = 4.0  # codecs tilt the spectrum, but not by 6 dB between 1 and 3.5 kHz
_MIN_TONE_RMS: Final = 0.01
# The burst (40 ms) seen through the 20 ms window lasts at most 60 ms; speech harmonics last longer.
_MIN_RUN_S: Final = 0.03
_MAX_RUN_S: Final = 0.075


@dataclass(frozen=True)
class Marker:
    """An audio marker found in a stream: the frame it belongs to and where its burst begins."""

    frame: int  # index of the video frame whose audio carries the marker
    sample: int  # estimated first sample of the burst, on the caller's 48 kHz timeline
    code: int  # which of the 8 frequencies was heard


def _cell_size(height: int, width: int) -> float:
    return max(float(MIN_CELL_PX), min(height, width) / CELLS_PER_SHORT_SIDE)


def _cell_edges(count: int, cell: float) -> list[int]:
    # Edges are rounded from a float cell size (not multiples of a rounded size), so a frame that
    # was rescaled as a whole puts every edge within a pixel of where the reader looks.
    return [round(k * cell) for k in range(count + 1)]


def _crc4(bits: list[int]) -> list[int]:
    """CRC-4/ITU (x^4 + x + 1) of a bit list, MSB first."""
    register = 0
    for bit in bits:
        feedback = ((register >> 3) & 1) ^ bit
        register = ((register << 1) & 0xF) ^ (0x3 if feedback else 0)
    return [(register >> (3 - k)) & 1 for k in range(_CRC_BITS)]


def _encode_bits(index: int) -> list[int]:
    value = index % (1 << STAMP_BITS)
    data = [(value >> (STAMP_BITS - 1 - k)) & 1 for k in range(STAMP_BITS)]
    return [*_SYNC_HEAD, *data, *_crc4(data), *_SYNC_TAIL]


def check_geometry(height: int, width: int) -> float:
    """The cell size for a frame; ValueError when the frame has no room for the code."""
    cell = _cell_size(height, width)
    if GRID_COLS * cell > width or GRID_ROWS * cell > height:
        raise ValueError(
            f"a {width}x{height} frame is too small for a bench stamp: it needs "
            f"{GRID_COLS * MIN_CELL_PX}x{GRID_ROWS * MIN_CELL_PX} px at least"
        )
    return cell


def draw_stamp(rgb: np.ndarray, index: int) -> np.ndarray:
    """A copy of ``rgb`` (H, W, 3) uint8 with ``index`` coded in its top-left corner."""
    height, width = rgb.shape[:2]
    cell = check_geometry(height, width)
    xs, ys = _cell_edges(GRID_COLS, cell), _cell_edges(GRID_ROWS, cell)
    out = rgb.copy()  # a repeated frame shares its pixels with the frame before it
    for k, bit in enumerate(_encode_bits(index)):
        row, col = divmod(k, GRID_COLS)
        out[ys[row] : ys[row + 1], xs[col] : xs[col + 1]] = 255 if bit else 0
    return out


def read_stamp(rgb: np.ndarray) -> int | None:
    """The index coded in a frame (modulo 2**24), or None when no intact code is there.

    ``rgb`` is the frame at the geometry it was stamped at, or that frame scaled as a whole
    (crop away any padding an output profile added first).
    """
    height, width = rgb.shape[:2]
    cell = _cell_size(height, width)
    if GRID_COLS * cell > width or GRID_ROWS * cell > height:
        return None
    xs, ys = _cell_edges(GRID_COLS, cell), _cell_edges(GRID_ROWS, cell)
    margin = max(1, round(cell / 4))
    luma = rgb[: ys[-1], : xs[-1]].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    bits = []
    for k in range(GRID_COLS * GRID_ROWS):
        row, col = divmod(k, GRID_COLS)
        level = float(
            luma[ys[row] + margin : ys[row + 1] - margin, xs[col] + margin : xs[col + 1] - margin].mean()
        )
        if _DARK <= level <= _LIGHT:
            return None
        bits.append(int(level > _LIGHT))
    head, data = bits[:2], bits[2 : 2 + STAMP_BITS]
    crc, tail = bits[2 + STAMP_BITS : -2], bits[-2:]
    if tuple(head) != _SYNC_HEAD or tuple(tail) != _SYNC_TAIL or crc != _crc4(data):
        return None
    return int("".join(map(str, data)), 2)


def marker_burst(code: int) -> np.ndarray:
    """The 40 ms burst (1920 samples at 48 kHz) of marker ``code`` (0-7), edges tapered."""
    t = np.arange(SAMPLES_PER_FRAME) / AUDIO_RATE
    tones = np.sin(2 * np.pi * MARKER_FREQUENCIES_HZ[code] * t) + np.sin(2 * np.pi * PILOT_HZ * t)
    burst = MARKER_AMPLITUDE * tones
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(_RAMP_SAMPLES) / _RAMP_SAMPLES)
    burst[:_RAMP_SAMPLES] *= ramp
    burst[-_RAMP_SAMPLES:] *= ramp[::-1]
    return burst.astype(np.float32)


def add_marker(audio: np.ndarray, index: int) -> np.ndarray:
    """A copy of frame ``index``'s 48 kHz audio with its marker mixed in, when it has one."""
    if index % MARKER_PERIOD_FRAMES:
        return audio
    if audio.shape != (SAMPLES_PER_FRAME,):
        raise ValueError(f"frame audio must be ({SAMPLES_PER_FRAME},) samples, got {audio.shape}")
    code = (index // MARKER_PERIOD_FRAMES) % len(MARKER_FREQUENCIES_HZ)
    return np.clip(audio + marker_burst(code), -1.0, 1.0).astype(np.float32)


def stamp_frame(frame: OutputFrame) -> OutputFrame:
    """The frame with its index drawn in and its audio marker added: a Session frame hook.

    Raises ValueError for frames under 64x32 px, which have no room for the code; check the
    session size before installing the hook.
    """
    return dataclasses.replace(
        frame, rgb=draw_stamp(frame.rgb, frame.index), audio=add_marker(frame.audio, frame.index)
    )


def detect_markers(audio_48k: np.ndarray, start_sample: int) -> list[Marker]:
    """Every marker burst in mono 48 kHz audio whose first sample is ``start_sample``.

    ``start_sample`` is where the audio sits on the session timeline (frame ``f`` starts at
    ``f * 1920``); it may be off by up to 4 s, since the code tone settles which marker it is.
    A burst is a 30-75 ms stretch where the pilot and one code tone together hold most of the
    power above 800 Hz; its onset is the centre of that stretch's energy (the window smears it
    symmetrically) less half a burst, good to a few milliseconds.
    """
    audio = np.asarray(audio_48k, dtype=np.float32).reshape(-1)
    if len(audio) < _WINDOW:
        return []
    window = np.hanning(_WINDOW).astype(np.float32)
    starts = np.arange(0, len(audio) - _WINDOW + 1, _HOP)
    codes, pilot, band = _tone_power(audio, starts, window)
    code = codes.max(axis=1)
    # A tone of RMS r gives a windowed power of (r * sum(window))**2 / 2 * 1.5 over its 3 bins.
    floor = (_MIN_TONE_RMS * window.sum()) ** 2 * 0.75
    present = (
        (np.minimum(code, pilot) >= _MIN_TONE_SHARE * band)
        & (code + pilot >= _MIN_MARKER_SHARE * band)
        & (np.maximum(code, pilot) <= _MAX_TONE_RATIO * np.minimum(code, pilot))
        & (np.minimum(code, pilot) >= floor)
    )

    markers = []
    hop = 0
    while hop < len(starts):
        if not present[hop]:
            hop += 1
            continue
        end = hop
        while end < len(starts) and present[end]:
            end += 1
        if _MIN_RUN_S <= (end - hop) * _HOP / AUDIO_RATE <= _MAX_RUN_S:
            # Speech with a harmonic on another code's bin can win single windows, never the sum.
            run_code = int(codes[hop:end].sum(axis=0).argmax())
            weights = codes[hop:end, run_code] + pilot[hop:end]
            centres = starts[hop:end] + _WINDOW / 2
            onset = float((weights * centres).sum() / weights.sum()) - SAMPLES_PER_FRAME / 2
            markers.append(_marker_at(start_sample + round(onset), run_code))
        hop = end
    return markers


def _tone_power(
    audio: np.ndarray, starts: np.ndarray, window: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windowed power per hop: of each code tone (hops, codes), the pilot and all above 800 Hz.

    Computed a block of hops at a time, so a benchmark can scan minutes of audio in one call.
    """
    bin_hz = AUDIO_RATE / _WINDOW
    code_bins = [round(f / bin_hz) for f in MARKER_FREQUENCIES_HZ]
    pilot_bin, band_bin = round(PILOT_HZ / bin_hz), round(_BAND_LOW_HZ / bin_hz)
    frames = np.lib.stride_tricks.sliding_window_view(audio, _WINDOW)
    codes = np.empty((len(starts), len(code_bins)), np.float64)
    pilot = np.empty(len(starts), np.float64)
    band = np.empty(len(starts), np.float64)
    for block in range(0, len(starts), 4096):
        rows = slice(block, block + 4096)
        power = np.abs(np.fft.rfft(frames[starts[rows]] * window, axis=1)) ** 2  # (hops, bins)
        codes[rows] = np.stack([power[:, b - 1 : b + 2].sum(axis=1) for b in code_bins], axis=1)
        pilot[rows] = power[:, pilot_bin - 1 : pilot_bin + 2].sum(axis=1)
        band[rows] = power[:, band_bin:].sum(axis=1) + 1e-12
    return codes, pilot, band


def _marker_at(sample: int, code: int) -> Marker:
    period = MARKER_PERIOD_FRAMES * SAMPLES_PER_FRAME
    codes = len(MARKER_FREQUENCIES_HZ)
    estimate = sample / period  # which marker the position alone suggests
    number = code + codes * round((estimate - code) / codes)  # the nearest one with this code
    return Marker(frame=number * MARKER_PERIOD_FRAMES, sample=sample, code=code)


def find_markers(audio_48k: np.ndarray, start_sample: int) -> list[int]:
    """Frame indices whose audio marker is present in ``audio_48k`` (see ``detect_markers``)."""
    return [marker.frame for marker in detect_markers(audio_48k, start_sample)]
