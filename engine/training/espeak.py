"""Speech synthesis with exact phoneme timings, through libespeak-ng via ctypes.

The lip-sync model is trained on synthetic speech because only a synthesiser tells us *exactly* when
each phoneme is spoken: espeak-ng reports a phoneme event carrying the sample index at which the
phoneme starts, so the ground-truth mouth track can be derived from the phonemes instead of from
loudness. No Python binding is needed (or installed): the C API is small and stable, so a ctypes
binding keeps the dependency list unchanged.

espeak-ng keeps all its state in globals, so every call goes through one module lock. That state also
carries over between utterances (the pitch-flutter phase, the noise generator), so the same text
synthesised twice differs by a few samples. Training data must be reproducible from a seed, so each
call loads the library afresh, initialises it (about 5 ms), synthesises, and unloads it with
``dlclose``, and seeds libc's ``rand`` (espeak's noise source) first: every utterance then starts
from the same state and the output is bit-exact.

Audio comes back at espeak's own rate (22050 Hz) and is resampled to
16 kHz with the project's zero-phase polyphase resampler, which has no group delay, so phoneme times
stay exact.
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import functools
import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from engine.resample import StreamResampler

log = logging.getLogger(__name__)

OUTPUT_RATE = 16000

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_EE_OK = 0

# Accents espeak-ng ships for English, and its voice variants ("+m3", "+f2", ...). Each accent
# combined with each variant is a distinct voice (different formants, pitch and breathiness).
ENGLISH_ACCENTS: tuple[str, ...] = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
MALE_VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS: tuple[str, ...] = ("f1", "f2", "f3", "f4", "f5")


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` from speak_lib.h (x86-64: 40 bytes, ``id`` at offset 32)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # sample index at espeak's rate: finer than audio_position
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Phoneme:
    """One phoneme (espeak-ng mnemonic, e.g. ``"aI"`` or ``"_:"``) and its span in seconds."""

    symbol: str
    start: float
    end: float


@dataclass
class Synthesis:
    """Mono float32 audio in [-1, 1] and the phonemes spoken in it, times from the audio's start."""

    samples: np.ndarray
    phonemes: list[Phoneme] = field(default_factory=list)
    sample_rate: int = OUTPUT_RATE

    def duration(self) -> float:
        return self.samples.size / self.sample_rate


class _Engine:
    """A freshly loaded, initialised library plus the buffers its synth callback fills."""

    def __init__(self) -> None:
        self.lib = _load_library()
        self._declare(self.lib)
        options = _INITIALIZE_PHONEME_EVENTS
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, None, options)
        if self.rate <= 0:
            self.close()
            raise RuntimeError(f"espeak_Initialize failed ({self.rate}); is espeak-ng-data installed?")
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[str, int]] = []  # (mnemonic, start sample at self.rate)
        self._callback = _SynthCallback(self._on_synth)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def close(self) -> None:
        """Terminate and unload, so the next load starts from the library's initial static state."""
        self.lib.espeak_Terminate()
        _dlclose(self.lib._handle)

    @staticmethod
    def _declare(lib: ctypes.CDLL) -> None:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Terminate.argtypes = []
        lib.espeak_Terminate.restype = ctypes.c_int

    def _on_synth(self, wav: ctypes.POINTER(ctypes.c_short), num_samples: int, events) -> int:
        if wav and num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                self.events.append((ev.id.string.decode("ascii", "replace"), ev.sample))
            i += 1
        return 0  # continue synthesis

    def synth(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int
    ) -> tuple[np.ndarray, list[tuple[str, int]]]:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self.chunks, self.events = [], []
        _libc().srand(_NOISE_SEED)  # breathy variants (f2, f3, ...) draw their aspiration noise from rand()
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data, len(data))
        err = self.lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with error {err}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return audio, self.events


def _load_library() -> ctypes.CDLL:
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError as exc:
        raise RuntimeError(
            "libespeak-ng is not available; install the Debian packages espeak-ng and libespeak-ng1"
        ) from exc


_NOISE_SEED = 12345


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.srand.argtypes = [ctypes.c_uint]
    libc.srand.restype = None
    return libc


def _dlclose(handle: int) -> None:
    _ctypes.dlclose(handle)  # CPython's private module is the only one exposing dlclose


_lock = threading.Lock()


def _to_phonemes(events: list[tuple[str, int]], rate: int, num_samples: int) -> list[Phoneme]:
    """Phoneme spans: each ends where the next starts; the last ends with the audio."""
    total = num_samples / rate
    starts = [min(max(s, 0) / rate, total) for _, s in events]
    phonemes = []
    for i, (symbol, _) in enumerate(events):
        end = starts[i + 1] if i + 1 < len(events) else total
        if not symbol:
            continue
        phonemes.append(Phoneme(symbol, starts[i], max(end, starts[i])))
    return phonemes


def synthesize(
    text: str, voice: str = "en", rate: int = 160, pitch: int = 50, pitch_range: int = 50
) -> Synthesis:
    """Speak ``text`` and return 16 kHz float32 audio with phoneme spans in seconds.

    ``rate`` is in words per minute (80..450); ``pitch`` and ``pitch_range`` are 0..100.
    """
    with _lock:
        engine = _Engine()
        try:
            raw, events = engine.synth(text, voice, rate, pitch, pitch_range)
        finally:
            engine.close()
        in_rate = engine.rate
    phonemes = _to_phonemes(events, in_rate, raw.size)
    resampler = StreamResampler(in_rate, OUTPUT_RATE)
    audio = raw.astype(np.float32) / 32768.0
    out = np.concatenate([resampler.process(audio), resampler.flush()])
    return Synthesis(np.clip(out, -1.0, 1.0).astype(np.float32), phonemes, OUTPUT_RATE)


def english_voices() -> list[str]:
    """English voice names espeak-ng accepts: every accent bare and with every male/female variant."""
    variants = MALE_VARIANTS + FEMALE_VARIANTS
    return list(ENGLISH_ACCENTS) + [f"{a}+{v}" for a in ENGLISH_ACCENTS for v in variants]
