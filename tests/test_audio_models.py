"""Audio front-end, per-latent token gathering and the byte text encoder, on tiny seeded models."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch

from engine.config import SAMPLES_PER_FRAME, AudioConfig, TextConfig
from engine.models.audio import AudioEncoder, LogMel, latent_audio_tokens
from engine.models.text import ByteTextEncoder, TextEncoder

SR = 16_000
CFG = AudioConfig(dim=128, num_layers=2)  # the tiny preset's audio encoder


@pytest.fixture(scope="module")
def encoder() -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(CFG).eval()


def _slaney_band_centres_hz(n_mels: int, sample_rate: int) -> np.ndarray:
    """Band centres from the published Slaney scale, written independently of the module."""

    def to_mel(hz: float) -> float:
        return hz / (200 / 3) if hz < 1000 else 15 + math.log(hz / 1000) * 27 / math.log(6.4)

    def to_hz(mel: float) -> float:
        return mel * 200 / 3 if mel < 15 else 1000 * math.exp((mel - 15) * math.log(6.4) / 27)

    points = np.linspace(0, to_mel(sample_rate / 2), n_mels + 2)[1:-1]
    return np.array([to_hz(m) for m in points])


def _speechlike(n: int, seed: int) -> torch.Tensor:
    """Noise with a syllable-rate envelope: loud and quiet stretches like speech."""
    g = torch.Generator().manual_seed(seed)
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 4.0 * torch.arange(n) / SR)
    return 0.2 * envelope * torch.randn(n, generator=g)


# --- LogMel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("band", [3, 13, 25, 36])
def test_logmel_sine_peaks_in_its_band(band: int) -> None:
    freq = _slaney_band_centres_hz(CFG.n_mels, SR)[band]
    t = torch.arange(SR // 2) / SR
    mel = LogMel(CFG)(0.5 * torch.sin(2 * math.pi * freq * t)[None])  # (1, M, S)
    assert int(mel.mean(dim=-1)[0].argmax()) == band


def test_logmel_matches_an_stft_reference() -> None:
    lm = LogMel(CFG)
    x = _speechlike(8000, seed=1)[None]
    window = torch.hann_window(CFG.n_fft, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        x.double(), CFG.n_fft, CFG.hop_length, window=window, center=False, return_complex=True
    )  # (1, n_freq, S)
    reference = torch.log(lm.filterbank.double() @ spec.abs() ** 2 + 1e-5)
    torch.testing.assert_close(lm(x).double(), reference, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("n", [400, 401, 559, 560, 9000, 16240])
def test_logmel_frame_count(n: int) -> None:
    assert LogMel(CFG)(torch.zeros(2, n)).shape == (2, CFG.n_mels, (n - 400) // 160 + 1)


def test_logmel_rejects_short_input() -> None:
    with pytest.raises(ValueError):
        LogMel(CFG)(torch.zeros(1, 399))


def test_logmel_is_fixed_buffers_only() -> None:
    lm = LogMel(CFG)
    assert list(lm.parameters()) == []
    assert {name for name, _ in lm.named_buffers()} == {"kernels", "filterbank"}
    # Derived from the config, so checkpoints do not carry them.
    assert lm.state_dict() == {}
    assert (lm.filterbank > 0).any(dim=1).all(), "every mel band must cover at least one bin"


# --- AudioEncoder ---------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 7, 25])
def test_encoder_shape(encoder: AudioEncoder, frames: int) -> None:
    n = encoder.num_samples(frames)
    assert n == frames * SAMPLES_PER_FRAME + CFG.n_fft - CFG.hop_length
    with torch.no_grad():
        assert encoder(torch.zeros(2, n)).shape == (2, frames, CFG.dim)


@pytest.mark.parametrize("n", [0, 240, 880 + 1, 2 * 640])
def test_encoder_rejects_spans_that_are_not_whole_frames(encoder: AudioEncoder, n: int) -> None:
    with pytest.raises(ValueError):
        encoder(torch.zeros(1, n))


def test_encoder_tells_silence_from_speech(encoder: AudioEncoder) -> None:
    n = encoder.num_samples(10)
    with torch.no_grad():
        silence = encoder(torch.zeros(1, n))
        speech = encoder(_speechlike(n, seed=2)[None])
    assert (silence - speech).abs().mean() > 0.1


def test_encoder_is_deterministic(encoder: AudioEncoder) -> None:
    x = _speechlike(encoder.num_samples(8), seed=3)[None]
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), encoder(x), rtol=0, atol=0)


def test_receptive_field_is_exactly_as_documented(encoder: AudioEncoder) -> None:
    """Changing the samples of frames < 20 changes frames up to 19 + R and none after; changing
    frames >= 20 changes frames from 20 - R on and none before."""
    frames, cut, R = 40, 20, encoder.receptive_frames
    x = _speechlike(encoder.num_samples(frames), seed=4)[None]
    past, future = x.clone(), x.clone()
    past[:, : cut * SAMPLES_PER_FRAME] = _speechlike(cut * SAMPLES_PER_FRAME, seed=5)
    future[:, cut * SAMPLES_PER_FRAME :] = 0.0
    with torch.no_grad():
        base, f_past, f_future = encoder(x)[0], encoder(past)[0], encoder(future)[0]
    changed_past = (f_past - base).abs().amax(dim=-1) > 1e-5  # (F,)
    changed_future = (f_future - base).abs().amax(dim=-1) > 1e-5
    assert changed_past.tolist() == [f < cut + R for f in range(frames)]
    assert changed_future.tolist() == [f >= cut - R for f in range(frames)]


def test_features_do_not_depend_on_where_the_span_was_cut(encoder: AudioEncoder) -> None:
    """Two spans of the same global audio agree on shared frames at least R from both edges."""
    R = encoder.receptive_frames
    audio = _speechlike(encoder.num_samples(40), seed=6)[None]
    span = encoder.num_samples(30)
    offset = 10  # span B starts 10 frames after span A
    with torch.no_grad():
        a = encoder(audio[:, :span])[0]  # frames [0, 30)
        b = encoder(audio[:, offset * SAMPLES_PER_FRAME : offset * SAMPLES_PER_FRAME + span])[0]  # [10, 40)
    lo, hi = offset + R, 30 - R  # global frames far enough from both spans' edges
    torch.testing.assert_close(a[lo:hi], b[lo - offset : hi - offset], atol=1e-5, rtol=1e-5)
    # One frame closer to either edge sees a span's zero padding: the bound is tight, and the
    # agreement above is not vacuous.
    assert (a[lo - 1] - b[lo - 1 - offset]).abs().max() > 1e-3
    assert (a[hi] - b[hi - offset]).abs().max() > 1e-3


def test_encoder_exports_to_onnx_with_dynamic_length(encoder: AudioEncoder) -> None:
    ort = pytest.importorskip("onnxruntime")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer warns about the span-length check, which is a constant in the graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            (torch.zeros(1, encoder.num_samples(4)),),
            buf,
            input_names=["samples"],
            output_names=["features"],
            dynamic_axes={"samples": {0: "batch", 1: "samples"}},
            dynamo=False,
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.stack([_speechlike(encoder.num_samples(13), seed=s) for s in (7, 8)])
    (got,) = session.run(None, {"samples": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, encoder(x).numpy(), atol=1e-4)


# --- latent_audio_tokens --------------------------------------------------------------------


def _frame_index_features(first_frame: int, frames: int, batch: int = 2, dim: int = 3) -> torch.Tensor:
    """features[b, i, :] = 1000*b + (first_frame + i): every value names its frame."""
    idx = torch.arange(first_frame, first_frame + frames, dtype=torch.float32)
    return (idx[None, :, None] + 1000 * torch.arange(batch)[:, None, None]).expand(batch, frames, dim)


def test_latent_tokens_gather_the_right_frames() -> None:
    first_frame, before, after = 5, 2, 3
    feats = _frame_index_features(first_frame, 30)  # frames [5, 35)
    tokens = latent_audio_tokens(feats, first_frame, 2, 4, before, after)
    assert tokens.shape == (2, 4, before + 4 + after, 3)
    for b in range(2):
        for i, n in enumerate(range(2, 6)):
            expected = [1000 * b + f for f in range(4 * n - before, 4 * n + 4 + after)]
            assert tokens[b, i, :, 0].tolist() == expected
            assert tokens[b, i, :, 2].tolist() == expected


def test_latent_tokens_exact_fit_and_out_of_range() -> None:
    feats = _frame_index_features(6, 12)  # frames [6, 18): latents 2..3 with before=2, after=2 fit exactly
    assert latent_audio_tokens(feats, 6, 2, 2, 2, 2).shape == (2, 2, 8, 3)
    with pytest.raises(ValueError):
        latent_audio_tokens(feats, 6, 2, 2, 3, 2)  # needs frame 5
    with pytest.raises(ValueError):
        latent_audio_tokens(feats, 6, 2, 2, 2, 3)  # needs frame 18
    with pytest.raises(ValueError):
        latent_audio_tokens(feats, 6, 2, 3, 2, 2)  # latent 4 runs past the end
    with pytest.raises(ValueError):
        latent_audio_tokens(feats, 6, 2, -1, 2, 2)
    assert latent_audio_tokens(feats, 6, 50, 0, 2, 2).shape == (2, 0, 8, 3)


# --- text -----------------------------------------------------------------------------------

TEXT_CFG = TextConfig(dim=64, num_layers=1, num_heads=2, max_tokens=32)


@pytest.fixture(scope="module")
def text_encoder() -> ByteTextEncoder:
    torch.manual_seed(0)
    return ByteTextEncoder(TEXT_CFG).eval()


def test_text_shape_and_interface(text_encoder: ByteTextEncoder) -> None:
    assert isinstance(text_encoder, TextEncoder)
    assert (text_encoder.dim, text_encoder.max_tokens) == (64, 32)
    with torch.no_grad():
        out = text_encoder.encode(["a person talking", "héllo wörld ✓"])
    assert out.shape == (2, 32, 64)
    assert out.dtype == torch.float32


def test_text_different_prompts_differ(text_encoder: ByteTextEncoder) -> None:
    with torch.no_grad():
        a, b = text_encoder.encode(["smiling", "frowning"])
    assert (a - b).abs().max() > 1e-2


def test_text_is_deterministic(text_encoder: ByteTextEncoder) -> None:
    torch.manual_seed(0)
    twin = ByteTextEncoder(TEXT_CFG).eval()
    with torch.no_grad():
        first = text_encoder.encode(["same prompt"])
        torch.testing.assert_close(text_encoder.encode(["same prompt"]), first, rtol=0, atol=0)
        torch.testing.assert_close(twin.encode(["same prompt"]), first, rtol=0, atol=0)


def test_text_empty_prompt_and_padding(text_encoder: ByteTextEncoder) -> None:
    with torch.no_grad():
        empty, nul, short = text_encoder.encode(["", "\x00", "abc"])
    assert torch.isfinite(empty).all()
    assert empty[0].abs().sum() > 0
    assert (empty[1:] == 0).all()
    # Byte 0 is a real token, not padding.
    assert (nul[0] - empty[0]).abs().max() > 1e-3
    assert (short[3:] == 0).all() and (short[:3].abs().sum(dim=-1) > 0).all()


def test_text_truncates_to_max_tokens(text_encoder: ByteTextEncoder) -> None:
    long = "x" * 10 + "y" * 100
    with torch.no_grad():
        torch.testing.assert_close(text_encoder.encode([long]), text_encoder.encode([long[:32]]))


def test_text_rejects_a_vocab_without_every_byte() -> None:
    with pytest.raises(ValueError):
        ByteTextEncoder(TextConfig(vocab_size=128))
