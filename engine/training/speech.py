"""Synthetic training speech: random sentences, voice splits, augmentation, and whole utterances.

Each utterance is espeak-ng speech with exact phoneme times, joined with silences so the model also
learns to idle with the mouth closed, then degraded (EQ, formant warp, noise, reverb, level) so it
cannot rely on the synthesiser's clean spectrum. Augmentations only filter or add to the signal and
never delay it: every phoneme time stays exact. The held-out split differs in speakers (voices no
training clip uses), and in reverb-IR family, EQ shapes and noise kinds, so evaluating on it measures
generalisation rather than memorisation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from engine.training.espeak import FEMALE_VARIANTS, MALE_VARIANTS, Phoneme, english_voices, synthesize
from engine.training.visemes import is_silence

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

# ---------------------------------------------------------------------------------------------------------
# Sentences

_NOUNS = (
    "price",
    "dress",
    "phone",
    "jacket",
    "camera",
    "lamp",
    "bottle",
    "shoe",
    "watch",
    "bag",
    "cream",
    "kettle",
    "blender",
    "tablet",
    "sofa",
    "pillow",
    "umbrella",
    "mirror",
    "brush",
    "necklace",
    "coffee",
    "garden",
    "window",
    "teacher",
    "friend",
    "market",
    "morning",
    "city",
    "river",
    "package",
    "order",
    "discount",
    "coupon",
    "colour",
    "size",
    "battery",
    "screen",
    "speaker",
    "charger",
    "blanket",
    "mug",
)
_ADJECTIVES = (
    "new",
    "cheap",
    "bright",
    "soft",
    "heavy",
    "little",
    "shiny",
    "waterproof",
    "amazing",
    "quiet",
    "warm",
    "smooth",
    "purple",
    "golden",
    "wooden",
    "fresh",
    "popular",
    "limited",
    "beautiful",
    "simple",
    "strong",
)
_VERBS = (
    "buy",
    "love",
    "check",
    "try",
    "pick",
    "grab",
    "order",
    "share",
    "open",
    "hold",
    "compare",
    "need",
    "choose",
    "bring",
    "test",
    "wear",
    "keep",
    "find",
    "watch",
    "see",
)
_VERBS_3 = ("looks", "feels", "works", "comes", "ships", "arrives", "fits", "sells", "lasts", "charges")
_ADVERBS = ("really", "very", "quite", "super", "so", "truly", "incredibly")
_NUMBERS = (
    "one",
    "two",
    "three",
    "five",
    "seven",
    "ten",
    "twelve",
    "twenty",
    "fifty",
    "ninety nine",
    "a hundred",
)
_PLACES = ("today", "tonight", "right now", "this week", "in the box", "at home", "for free", "in stock")
_SUBJECTS = ("I", "you", "we", "they", "everyone", "my sister", "our team", "the customers")
_OPENERS = ("okay", "so", "look", "well", "hey everyone", "alright", "wow", "guys", "honestly", "now")
_QUESTION_WORDS = ("what", "where", "how", "why", "when", "which")


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator) -> str:
    det = _pick(rng, ("the", "this", "that", "my", "your", "our", "a"))
    adj = f"{_pick(rng, _ADJECTIVES)} " if rng.random() < 0.6 else ""
    noun = _pick(rng, _NOUNS)
    if det == "a" and adj[:1] in "aeiou" and adj or det == "a" and not adj and noun[0] in "aeiou":
        det = "an"
    return f"{det} {adj}{noun}"


_TEMPLATES = (
    lambda r: f"{_pick(r, _SUBJECTS)} {_pick(r, _VERBS)} {_noun_phrase(r)} {_pick(r, _PLACES)}",
    lambda r: f"{_noun_phrase(r)} {_pick(r, _VERBS_3)} {_pick(r, _ADVERBS)} well",
    lambda r: f"only {_pick(r, _NUMBERS)} dollars for {_noun_phrase(r)}",
    lambda r: f"{_pick(r, _QUESTION_WORDS)} do you {_pick(r, _VERBS)} {_noun_phrase(r)}?",
    lambda r: f"we have {_pick(r, _NUMBERS)} {_pick(r, _ADJECTIVES)} {_pick(r, _NOUNS)}s {_pick(r, _PLACES)}",
    lambda r: f"is {_noun_phrase(r)} {_pick(r, _ADVERBS)} {_pick(r, _ADJECTIVES)}?",
    lambda r: f"{_pick(r, _SUBJECTS)} can {_pick(r, _VERBS)} it, and {_noun_phrase(r)} {_pick(r, _VERBS_3)}",
)


def random_sentence(rng: np.random.Generator, min_words: int = 4, max_words: int = 14) -> str:
    """A grammatical-ish English sentence of ``min_words..max_words`` words, with punctuation.

    Held-out text is simply more random sentences drawn from a different seed.
    """
    for _ in range(50):
        parts = [_TEMPLATES[int(rng.integers(len(_TEMPLATES)))](rng)]
        if rng.random() < 0.3:
            parts.insert(0, _pick(rng, _OPENERS) + ",")
        while rng.random() < 0.35:
            parts.append(", " + _TEMPLATES[int(rng.integers(len(_TEMPLATES)))](rng).rstrip("?"))
        text = " ".join(parts).replace(" ,", ",")
        words = text.split()
        if min_words <= len(words) <= max_words:
            break
    words = text.split()[:max_words]
    while len(words) < min_words:
        words += _noun_phrase(rng).split()
    text = " ".join(words[:max_words]).rstrip(",")
    end = "" if text.endswith("?") else _pick(rng, (".", ".", ".", "!", "?"))
    return text[0].upper() + text[1:] + end


# ---------------------------------------------------------------------------------------------------------
# Voices: held-out speakers are a whole accent plus two variants no training voice uses.

_HELDOUT_ACCENT = "en-029"
_HELDOUT_VARIANTS = (MALE_VARIANTS[-1], FEMALE_VARIANTS[-1])  # m7, f5
HELDOUT_VOICES: tuple[str, ...] = tuple(
    v for v in english_voices() if v.split("+")[0] == _HELDOUT_ACCENT
) + tuple(f"{a}+{v}" for a in ("en", "en-us", "en-gb-x-rp") for v in _HELDOUT_VARIANTS)
TRAIN_VOICES: tuple[str, ...] = tuple(
    v
    for v in english_voices()
    if v.split("+")[0] != _HELDOUT_ACCENT and (v.split("+") + [""])[1] not in _HELDOUT_VARIANTS
)

# ---------------------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations a split uses, with their probabilities and ranges."""

    p_eq: float = 0.6
    eq_bands: int = 6
    eq_db: float = 6.0
    p_formant: float = 0.5
    formant_range: tuple[float, float] = (0.9, 1.12)
    p_noise: float = 0.6
    noise_kinds: tuple[str, ...] = ("white", "pink")
    snr_db: tuple[float, float] = (15.0, 40.0)
    p_reverb: float = 0.5
    reverb_family: str = "gaussian"  # "gaussian" decaying noise, or "sparse" velvet noise + early echoes
    rt60_s: tuple[float, float] = (0.1, 0.5)
    wet: tuple[float, float] = (0.2, 0.6)
    level_dbfs: tuple[float, float] = (-20.0, 0.0)


TRAIN_AUGMENT = AugmentConfig()
HELDOUT_AUGMENT = AugmentConfig(
    eq_bands=10,
    eq_db=5.0,
    formant_range=(0.92, 1.1),
    noise_kinds=("babble", "brown"),
    reverb_family="sparse",
    rt60_s=(0.15, 0.5),
    wet=(0.25, 0.55),
)
_AUGMENT = {"train": TRAIN_AUGMENT, "heldout": HELDOUT_AUGMENT}


def _config(split: str) -> AugmentConfig:
    if split not in _AUGMENT:
        raise ValueError(f"split must be one of {sorted(_AUGMENT)}, got {split!r}")
    return _AUGMENT[split]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _eq(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Smooth random gain curve over log frequency (FFT domain; the curve's response is short)."""
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)
    nodes = np.linspace(np.log(50.0), np.log(SAMPLE_RATE / 2), cfg.eq_bands)
    gains = rng.uniform(-cfg.eq_db, cfg.eq_db, cfg.eq_bands)
    gain_db = np.interp(np.log(np.maximum(freqs, 50.0)), nodes, gains)
    return np.fft.irfft(spec * 10 ** (gain_db / 20), n=x.size)


def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    padded = np.pad(x, (n_fft // 2, n_fft // 2 + hop))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    return np.fft.rfft(frames * np.hanning(n_fft), axis=1)


def _istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    window = np.hanning(n_fft)
    frames = np.fft.irfft(spec, n=n_fft, axis=1) * window
    total = (spec.shape[0] - 1) * hop + n_fft
    out, norm = np.zeros(total), np.zeros(total)
    for i, frame in enumerate(frames):
        out[i * hop : i * hop + n_fft] += frame
        norm[i * hop : i * hop + n_fft] += window**2
    out /= np.maximum(norm, 1e-3)
    return out[n_fft // 2 : n_fft // 2 + length]


def _formant_warp(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Move the spectral envelope (formants) by a factor, keeping harmonics, phase and timing."""
    n_fft, hop, lifter = 512, 128, 30
    spec = _stft(x, n_fft, hop)
    log_mag = np.log(np.abs(spec) + 1e-7)
    cep = np.fft.irfft(log_mag, axis=1)
    cep[:, lifter:-lifter] = 0.0
    envelope = np.fft.rfft(cep, axis=1).real  # smooth log envelope per frame
    factor = rng.uniform(*cfg.formant_range)
    bins = np.arange(envelope.shape[1])
    warped = np.stack([np.interp(bins / factor, bins, row) for row in envelope])
    return _istft(spec * np.exp(warped - envelope), n_fft, hop, x.size)


def _shaped_noise(n: int, rng: np.random.Generator, kind: str, speech: np.ndarray) -> np.ndarray:
    if kind == "babble":  # other "speakers": time-reversed, circularly shifted copies of the clip
        noise = sum(np.roll(speech[::-1], int(rng.integers(n))) for _ in range(4))
        return noise + 1e-3 * rng.standard_normal(n)
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    slope = {"pink": 0.5, "brown": 1.0}[kind]
    return np.fft.irfft(np.fft.rfft(white) / np.maximum(freqs, 20.0) ** slope, n=n)


def _add_noise(x: np.ndarray, rng: np.random.Generator, kind: str, snr_db: float) -> np.ndarray:
    noise = _shaped_noise(x.size, rng, kind, x)
    scale = _rms(x) / max(_rms(noise), 1e-12) * 10 ** (-snr_db / 20)
    return x + scale * noise


def _impulse_response(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Synthetic room IR, direct path at index 0 so the reverb adds no delay."""
    rt60 = rng.uniform(*cfg.rt60_s)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    decay = 10 ** (-3 * t / rt60)  # -60 dB at rt60
    if cfg.reverb_family == "sparse":
        tail = np.zeros(n)
        taps = rng.integers(1, n, size=max(n // 20, 1))
        tail[taps] = rng.choice([-1.0, 1.0], size=taps.size) * 2.5
        for delay in rng.integers(int(0.003 * SAMPLE_RATE), int(0.03 * SAMPLE_RATE), size=3):
            tail[delay] += rng.uniform(0.3, 0.7)
    else:
        tail = rng.standard_normal(n)
        tail[: int(0.002 * SAMPLE_RATE)] = 0.0  # a short gap before the diffuse field
    ir = tail * decay
    ir[0] = 0.0
    return ir / max(np.sqrt(np.sum(ir**2)), 1e-12)


def _reverb(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    ir = _impulse_response(rng, cfg)
    size = 1 << int(np.ceil(np.log2(x.size + ir.size)))
    wet_sig = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: x.size]
    wet = rng.uniform(*cfg.wet)
    return (1 - wet) * x + wet * wet_sig * (_rms(x) / max(_rms(wet_sig), 1e-12))


def _set_level(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 0:
        return x
    target = min(10 ** (rng.uniform(*cfg.level_dbfs) / 20), 0.99)
    return x * (target / peak)


def augment(samples: np.ndarray, rng: np.random.Generator, split: str = "train") -> np.ndarray:
    """A random subset of EQ, formant warp, reverb and noise, then a peak level; same length, no delay."""
    cfg = _config(split)
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return x.astype(np.float32)
    if rng.random() < cfg.p_formant:
        x = _formant_warp(x, rng, cfg)
    if rng.random() < cfg.p_eq:
        x = _eq(x, rng, cfg)
    if rng.random() < cfg.p_reverb:
        x = _reverb(x, rng, cfg)
    if rng.random() < cfg.p_noise:
        x = _add_noise(x, rng, _pick(rng, cfg.noise_kinds), rng.uniform(*cfg.snr_db))
    return _set_level(x, rng, cfg).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Utterances


@dataclass
class Utterance:
    """One clip's speech, its phonemes (times in the clip; inserted silences are ``_`` phonemes)."""

    samples: np.ndarray
    phonemes: list[Phoneme]
    text: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int = 50
    augmented: bool = False
    sample_rate: int = SAMPLE_RATE
    sentences: list[str] = field(default_factory=list)

    def duration(self) -> float:
        return self.samples.size / self.sample_rate

    def speech_mask(self, num_frames: int, fps: int = 25) -> np.ndarray:
        """True for frames whose centre ``(f + 0.5) / fps`` lies in a non-silence phoneme."""
        centres = (np.arange(num_frames) + 0.5) / fps
        mask = np.zeros(num_frames, bool)
        for p in self.phonemes:
            if not is_silence(p.symbol):
                mask |= (centres >= p.start) & (centres < p.end)
        return mask


def loudness_track(
    samples: np.ndarray, num_frames: int, fps: int = 25, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """RMS per frame over ``[f/fps, (f+1)/fps)``: the loudness-only mouth baseline."""
    hop = sample_rate / fps
    out = np.zeros(num_frames, np.float32)
    for f in range(num_frames):
        out[f] = _rms(samples[int(round(f * hop)) : int(round((f + 1) * hop))])
    return out


def _speak(rng: np.random.Generator, voice: str, rate: int, pitch: int, pitch_range: int, max_s: float):
    for _ in range(8):
        text = random_sentence(rng)
        synth = synthesize(text, voice, rate, pitch, pitch_range)
        if synth.duration() <= max_s:
            return text, synth
    return text, synth


def make_utterance(
    rng: np.random.Generator, split: str, min_speech_s: float = 2.0, max_speech_s: float = 8.0
) -> Utterance:
    """1-3 sentences by one random voice of ``split``, separated and framed by silences, augmented."""
    _config(split)  # validates the split
    voice = _pick(rng, TRAIN_VOICES if split == "train" else HELDOUT_VOICES)
    rate, pitch = int(rng.integers(120, 221)), int(rng.integers(20, 81))
    pitch_range = int(rng.integers(20, 91))
    target = int(rng.integers(1, 4))
    pieces: list[np.ndarray] = []
    phonemes: list[Phoneme] = []
    texts: list[str] = []
    t = 0.0

    def gap(seconds: float) -> None:
        nonlocal t
        n = int(round(seconds * SAMPLE_RATE))
        pieces.append(np.zeros(n, np.float32))
        phonemes.append(Phoneme("_", t, t + n / SAMPLE_RATE))
        t += n / SAMPLE_RATE

    gap(rng.uniform(0.2, 1.5))
    speech = 0.0
    while len(texts) < 6 and (speech < min_speech_s or len(texts) < target):
        text, synth = _speak(rng, voice, rate, pitch, pitch_range, max_speech_s - speech)
        if texts and speech + synth.duration() > max_speech_s:
            break
        if texts:
            gap(rng.uniform(0.3, 2.0))
        pieces.append(synth.samples)
        phonemes += [Phoneme(p.symbol, p.start + t, p.end + t) for p in synth.phonemes]
        t += synth.samples.size / SAMPLE_RATE
        speech += synth.duration()
        texts.append(text)
    gap(rng.uniform(0.2, 1.5))
    samples = np.concatenate(pieces)
    samples = _background(samples, rng) if rng.random() < 0.3 else samples
    augmented = bool(rng.random() < 0.8)
    if augmented:
        samples = augment(samples, rng, split)
    return Utterance(
        samples.astype(np.float32),
        phonemes,
        " ".join(texts),
        voice,
        rate,
        pitch,
        pitch_range,
        augmented,
        SAMPLE_RATE,
        texts,
    )


def _background(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A low noise floor, 20-35 dB below the speech, that fills the silences too."""
    speech_rms = _rms(x[np.abs(x) > 1e-4]) if np.any(np.abs(x) > 1e-4) else 0.0
    noise = _shaped_noise(x.size, rng, _pick(rng, ("white", "pink", "brown")), x)
    scale = speech_rms / max(_rms(noise), 1e-12) * 10 ** (-rng.uniform(20, 35) / 20)
    out = x + scale * noise
    return out * min(1.0, 0.99 / max(float(np.max(np.abs(out))), 1e-12))
