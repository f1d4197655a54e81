"""Ground-truth mouth track from phonemes (visemes), for training the lip-sync model.

The model must learn *what* is said, not how loud: a loudness-driven mouth opens on loud fricatives
and stays open through /m/ and /p/. So the target comes from the phonemes espeak-ng reports, each
mapped to a viseme (mouth opening 0..1, mouth width 0..1 with 0 rounded "oo", 0.5 neutral, 1 spread
"ee"). Speech is coarticulated: lips move before the sound and never jump, so the piecewise target
is shifted earlier by ``LEAD_S`` and smoothed with a Gaussian. That smoothing would blur the short
lip closures of /p b m/ into a half-open mouth, yet those closures are the most visible cue of all,
so they are re-imposed after smoothing: fully closed over at least ``MIN_CLOSURE_S``, which is longer
than one 25 fps frame, so every closure lands on at least one frame.

A plosive's phoneme event marks its release; its closure is the ~40 ms of silence before it. The
uniform lead therefore also moves /p b/ spans onto their closures.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from engine.training.espeak import Phoneme

log = logging.getLogger(__name__)

LEAD_S = 0.040  # mouth shape leads the sound
SIGMA_S = 0.030  # coarticulation smoothing
MIN_CLOSURE_S = 0.050  # bilabial closures are held fully closed at least this long
_RES = 1000  # internal timeline resolution, samples per second

CLOSED = (0.0, 0.5)
NEUTRAL = (0.3, 0.5)
_H_OPEN = 0.2

# Viseme classes: (open, width).
_CLASSES: dict[str, tuple[float, float]] = {
    "bilabial": (0.0, 0.5),
    "labiodental": (0.1, 0.6),
    "alveolar": (0.2, 0.55),
    "postalveolar": (0.25, 0.25),
    "velar": (0.3, 0.5),
    "open": (0.9, 0.55),
    "mid": (0.5, 0.55),
    "close_front": (0.25, 0.9),
    "rounded": (0.35, 0.15),
    "r": (0.3, 0.3),
}

_BY_CLASS: dict[str, tuple[str, ...]] = {
    "bilabial": ("p", "b", "m"),
    "labiodental": ("f", "v"),
    "alveolar": ("t", "d", "n", "s", "z", "l", "T", "D", "t#", "t[", "n-", "@L", "L", "?", "j"),
    "postalveolar": ("S", "Z", "tS", "dZ"),
    "velar": ("k", "g", "N", "x"),
    "open": ("a", "aa", "A:", "A", "A@", "0", "aI", "aU", "aI@", "aI3", "aU@", "aI2"),
    "mid": ("e", "E", "@", "3", "3:", "V", "a#", "@2", "@5", "e@", "eI", "@-", "I#", "I2"),
    "close_front": ("i", "i:", "I", "i@", "i@3", "IR", "I@"),
    "rounded": ("u:", "U", "O:", "O", "O2", "O@", "o@", "oU", "OI", "U@", "w", "w#", "u", "o"),
    "r": ("r", "r-", "*", "R"),
}
_TABLE: dict[str, tuple[float, float]] = {s: _CLASSES[c] for c, syms in _BY_CLASS.items() for s in syms}
# Slightly finer vowel shades than the class defaults.
_TABLE.update(
    {
        "A:": (1.0, 0.5),
        "aa": (0.95, 0.55),
        "a": (0.85, 0.6),
        "0": (0.75, 0.35),
        "O:": (0.45, 0.2),
        "u:": (0.3, 0.1),
        "U": (0.35, 0.2),
        "w": (0.3, 0.1),
        "E": (0.55, 0.65),
        "e": (0.5, 0.7),
        "@": (0.45, 0.5),
        "3:": (0.45, 0.45),
        "V": (0.6, 0.5),
        "I": (0.3, 0.8),
        "i:": (0.25, 0.95),
        "j": (0.25, 0.8),
        "@L": (0.3, 0.5),
    }
)
# Diphthongs glide: first half one target, second half another.
_GLIDES: dict[str, tuple[str, str]] = {
    "aI": ("a", "I"),
    "aU": ("a", "U"),
    "eI": ("e", "I"),
    "oU": ("O:", "U"),
    "OI": ("O:", "I"),
    "e@": ("E", "@"),
    "i@": ("i:", "@"),
    "i@3": ("i:", "@"),
    "U@": ("U", "@"),
    "aI@": ("a", "@"),
    "aI3": ("a", "@"),
    "aU@": ("a", "@"),
    "aI2": ("a", "I"),
    "O@": ("O:", "@"),
    "o@": ("O:", "@"),
}
_FIRST_LETTER: dict[str, str] = {
    "p": "bilabial",
    "b": "bilabial",
    "m": "bilabial",
    "f": "labiodental",
    "v": "labiodental",
    "t": "alveolar",
    "d": "alveolar",
    "n": "alveolar",
    "s": "alveolar",
    "z": "alveolar",
    "l": "alveolar",
    "T": "alveolar",
    "D": "alveolar",
    "S": "postalveolar",
    "Z": "postalveolar",
    "k": "velar",
    "g": "velar",
    "N": "velar",
    "a": "open",
    "A": "open",
    "e": "mid",
    "E": "mid",
    "@": "mid",
    "3": "mid",
    "V": "mid",
    "i": "close_front",
    "I": "close_front",
    "u": "rounded",
    "U": "rounded",
    "o": "rounded",
    "O": "rounded",
    "w": "rounded",
    "r": "r",
}
_STRIP = "',;%=:#-/0123456789[]"


def is_silence(symbol: str) -> bool:
    """Pauses (``_``, ``_:``, ``_!``, ...) and empty symbols: mouth closed, not speech."""
    return not symbol or symbol.startswith("_")


def is_bilabial(symbol: str) -> bool:
    return symbol.strip("',;%=") in ("p", "b", "m")


@lru_cache(maxsize=512)
def viseme_target(symbol: str) -> tuple[float, float]:
    """(open, width) for an espeak-ng English phoneme mnemonic; a diphthong gives its glide's mean."""
    if is_silence(symbol):
        return CLOSED
    a, b = _segments(symbol)
    return ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)


def _lookup(symbol: str) -> tuple[float, float]:
    for candidate in (symbol, symbol.strip("',;%="), symbol.rstrip(_STRIP) or symbol):
        if candidate in _TABLE:
            return _TABLE[candidate]
    bare = symbol.strip(_STRIP)
    if bare and bare[0] in _FIRST_LETTER:
        log.debug("viseme: unknown phoneme %r, matched by first letter %r", symbol, bare[0])
        return _CLASSES[_FIRST_LETTER[bare[0]]]
    log.debug("viseme: unknown phoneme %r, using neutral", symbol)
    return NEUTRAL


@lru_cache(maxsize=512)
def _segments(symbol: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Targets for the first and second half of the phoneme (equal unless it is a diphthong)."""
    key = symbol.strip("',;%=")
    if key in _GLIDES:
        first, second = _GLIDES[key]
        return _lookup(first), _lookup(second)
    target = _lookup(symbol)
    return target, target


def _next_vowel(phonemes: list[Phoneme], i: int) -> tuple[float, float]:
    for p in phonemes[i + 1 : i + 3]:
        if is_silence(p.symbol):
            break
        target = _segments(p.symbol)[0]
        if target[0] >= 0.25:
            return target
    return NEUTRAL


def _piecewise(phonemes: list[Phoneme], n: int, t0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held targets (open, width) and a bilabial-closure indicator on the ``_RES`` grid from ``t0``."""
    open_, width = np.zeros(n, np.float32), np.full(n, CLOSED[1], np.float32)
    closure = np.zeros(n, bool)
    for i, p in enumerate(phonemes):
        a = int(round((p.start - LEAD_S - t0) * _RES))
        b = int(round((p.end - LEAD_S - t0) * _RES))
        if b <= 0 or a >= n or b <= a:
            continue
        if is_silence(p.symbol):
            continue  # already closed
        if p.symbol.strip("',;%=") == "h":
            vowel = _next_vowel(phonemes, i)  # /h/ is shaped by the vowel it precedes
            first = second = (0.6 * vowel[0] + 0.4 * _H_OPEN, vowel[1])
        else:
            first, second = _segments(p.symbol)
        mid = (a + b) // 2
        for (lo, hi), (o, w) in (((a, mid), first), ((mid, b), second)):
            open_[max(lo, 0) : max(hi, 0)] = o
            width[max(lo, 0) : max(hi, 0)] = w
        if is_bilabial(p.symbol):
            pad = max(0, int(MIN_CLOSURE_S * _RES) - (b - a)) // 2
            closure[max(a - pad, 0) : max(b + pad, 0)] = True
    return open_, width, closure


def _gaussian(x: np.ndarray, sigma_samples: float) -> np.ndarray:
    radius = int(3 * sigma_samples)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_samples) ** 2)
    k /= k.sum()
    padded = np.pad(x, radius, mode="edge")
    return np.convolve(padded, k, mode="valid").astype(np.float32)


def mouth_track(
    phonemes: list[Phoneme], num_frames: int, fps: int = 25, offset_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(mouth_open, mouth_width), float32 ``(num_frames,)`` each; frame f is at ``offset_s + (f+0.5)/fps``."""
    t0 = offset_s - 0.2  # margin so smoothing sees context before the first frame
    n = int(np.ceil((num_frames / fps + 0.4) * _RES)) + 1
    open_, width, closure = _piecewise(phonemes, n, t0)
    sigma = SIGMA_S * _RES
    open_s, width_s = _gaussian(open_, sigma), _gaussian(width, sigma)
    # Closed where the narrowly smoothed closure indicator is over half: the span itself, soft edges.
    shut = _gaussian(closure.astype(np.float32), sigma / 3)
    open_s = np.minimum(open_s, np.clip(1.0 - 2.0 * shut, 0.0, 1.0))
    times = offset_s + (np.arange(num_frames) + 0.5) / fps
    idx = np.clip(np.round((times - t0) * _RES).astype(int), 0, n - 1)
    return np.clip(open_s[idx], 0, 1).astype(np.float32), np.clip(width_s[idx], 0, 1).astype(np.float32)
