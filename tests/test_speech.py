"""Synthetic speech for lip-sync training: espeak timings, visemes, augmentation, utterances."""

import numpy as np
import pytest

from engine.training import espeak, speech, visemes

pytest.importorskip("ctypes")
try:
    _HELLO = espeak.synthesize("hello world", "en")
except RuntimeError as exc:  # libespeak-ng missing
    pytest.skip(f"espeak-ng unavailable: {exc}", allow_module_level=True)

SR = 16000


def _span_rms(samples: np.ndarray, p: espeak.Phoneme) -> float:
    seg = samples[int(p.start * SR) : int(p.end * SR)]
    return float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if seg.size else 0.0


def test_synthesize_hello_world_timings_follow_audio():
    s = _HELLO
    assert s.sample_rate == SR and s.samples.dtype == np.float32
    assert 0.5 < s.duration() < 2.0 and np.max(np.abs(s.samples)) <= 1.0
    starts = [p.start for p in s.phonemes]
    assert starts == sorted(starts) and starts[0] < 0.05
    assert all(a.end == pytest.approx(b.start) for a, b in zip(s.phonemes, s.phonemes[1:], strict=False))
    assert s.phonemes[-1].end == pytest.approx(s.duration(), abs=1e-3)
    vowels = [p for p in s.phonemes if p.symbol in ("@", "oU", "3:")]
    assert len(vowels) == 3
    vowel_rms = np.mean([_span_rms(s.samples, p) for p in vowels])
    n0 = int(0.01 * SR)  # espeak's leading silence plus the "_:" pause spans
    silent = [s.samples[:n0]] + [
        s.samples[int(p.start * SR) : int(p.end * SR)] for p in s.phonemes if visemes.is_silence(p.symbol)
    ]
    silence_rms = np.sqrt(np.mean(np.concatenate(silent).astype(np.float64) ** 2))
    assert vowel_rms > 3 * silence_rms


def test_synthesis_is_deterministic():
    a, b = espeak.synthesize("the fish is fresh", "en+f3"), espeak.synthesize("the fish is fresh", "en+f3")
    assert np.array_equal(a.samples, b.samples) and a.phonemes == b.phonemes


def test_voices():
    voices = espeak.english_voices()
    assert len(voices) >= 20
    assert not set(speech.TRAIN_VOICES) & set(speech.HELDOUT_VOICES)
    assert len(speech.HELDOUT_VOICES) >= 4
    assert any("+m" in v for v in speech.HELDOUT_VOICES) and any("+f" in v for v in speech.HELDOUT_VOICES)
    for v in (speech.TRAIN_VOICES[-1], speech.HELDOUT_VOICES[-1]):
        assert espeak.synthesize("yes", v).duration() > 0.1


def test_mouth_track_closes_on_m_and_opens_on_a():
    s = espeak.synthesize("mama", "en", rate=120)
    frames = int(np.ceil(s.duration() * 100))
    open_, width = visemes.mouth_track(s.phonemes, frames, fps=100)
    assert open_.dtype == np.float32 and open_.shape == width.shape == (frames,)
    assert open_.min() >= 0 and open_.max() <= 1 and width.min() >= 0 and width.max() <= 1
    t = (np.arange(frames) + 0.5) / 100
    for p in s.phonemes:
        span = (t >= p.start - visemes.LEAD_S) & (t < p.end - visemes.LEAD_S)
        if p.symbol == "m":
            assert open_[span].min() < 0.05
        elif p.symbol in ("a", "A:", "a#"):
            assert open_[span].max() > 0.4
    assert open_[-1] < 0.05  # trailing silence closed
    open25, _ = visemes.mouth_track(s.phonemes, int(s.duration() * 25) + 10)
    assert open25[-5:].max() == 0.0  # past the audio: silence


def test_viseme_targets():
    assert visemes.viseme_target("p") == (0.0, 0.5)
    assert visemes.viseme_target("A:")[0] > 0.8
    assert visemes.viseme_target("i:")[1] > 0.8 and visemes.viseme_target("u:")[1] < 0.2
    assert visemes.viseme_target("_:") == visemes.CLOSED
    assert visemes.viseme_target("'b") == (0.0, 0.5)
    assert visemes.viseme_target("%%zz9") == visemes.viseme_target("z")
    assert visemes.viseme_target("$") == visemes.NEUTRAL


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_augment_keeps_length_and_phoneme_energy(split):
    s = espeak.synthesize("we have five new coupons in stock, grab them now", "en-us")
    rng = np.random.default_rng(3)
    speech_phonemes = [p for p in s.phonemes if p.end - p.start > 0.02]
    clean = np.array([_span_rms(s.samples, p) for p in speech_phonemes])
    for _ in range(4):
        out = speech.augment(s.samples, rng, split)
        assert out.shape == s.samples.shape and out.dtype == np.float32
        assert np.max(np.abs(out)) < 1.0
        assert not np.allclose(out, s.samples)
        aug = np.array([_span_rms(out, p) for p in speech_phonemes])
        assert np.corrcoef(clean, aug)[0, 1] > 0.7


def test_augment_each_effect_preserves_timing():
    # A click must stay where it was: no augmentation may delay the signal.
    x = np.zeros(SR, np.float32)
    x[8000] = 0.5
    cfg = speech.TRAIN_AUGMENT
    rng = np.random.default_rng(0)
    for fn in (speech._eq, speech._formant_warp, speech._reverb):
        y = fn(x.astype(np.float64), rng, cfg)
        assert y.size == x.size and abs(int(np.argmax(np.abs(y))) - 8000) <= 2


def test_random_sentence():
    rng = np.random.default_rng(0)
    for _ in range(50):
        text = speech.random_sentence(rng)
        assert 4 <= len(text.split()) <= 14 and text[-1] in ".!?"


def test_make_utterance_deterministic_with_closed_silences():
    a = speech.make_utterance(np.random.default_rng(7), "train")
    b = speech.make_utterance(np.random.default_rng(7), "train")
    assert a.text == b.text and a.voice == b.voice and np.array_equal(a.samples, b.samples)
    assert a.voice in speech.TRAIN_VOICES and 2.0 <= a.duration() <= 8.0 + 2 * 1.5 + 5 * 2.0
    frames = int(a.duration() * 25)
    mask = a.speech_mask(frames)
    open_, _ = visemes.mouth_track(a.phonemes, frames)
    assert mask.any() and (~mask[:5]).all() and (~mask[-5:]).all()
    assert open_[mask].mean() > 0.2
    # Frames well inside silences (not next to speech) are closed.
    far = ~np.convolve(mask, np.ones(7), mode="same").astype(bool)
    assert far.sum() >= 5 and open_[far].max() < 0.02


def _baseline(n: int = 10) -> tuple[float, float]:
    """corr(loudness, mouth_open) pooled over held-out utterances, overall and on speech frames."""
    rng = np.random.default_rng(2024)
    loud, mouth, masks = [], [], []
    for _ in range(n):
        u = speech.make_utterance(rng, "heldout")
        frames = int(u.duration() * 25)
        loud.append(speech.loudness_track(u.samples, frames))
        mouth.append(visemes.mouth_track(u.phonemes, frames)[0])
        masks.append(u.speech_mask(frames))
    loud_all, mouth_all, mask = map(np.concatenate, (loud, mouth, masks))
    return np.corrcoef(loud_all, mouth_all)[0, 1], np.corrcoef(loud_all[mask], mouth_all[mask])[0, 1]


def test_loudness_baseline_is_only_partly_correlated():
    overall, on_speech = _baseline()
    # Loudness explains some of the mouth, far from all of it: phonetic content must be learned.
    assert 0.4 < overall < 0.95
    assert on_speech < overall
