"""Audio front-end: 16 kHz samples -> one feature per video frame -> per-latent audio tokens.

The scheduler computes features over a fixed global span per window, so a feature must depend
only on the samples of that span: there is no normalisation over time, no state, and every layer
is a finite convolution. A frame's feature therefore sees only audio within ``receptive_frames``
video frames of its own, and frames that far from both edges of a span agree whatever the span.

The log-mel front-end is a plain Conv1d with fixed DFT kernels rather than ``torch.stft``:
complex tensors and STFT do not export to ONNX or TensorRT, a convolution does.

Shapes: B batch, N samples, M mel bins, S mel frames (4 per video frame), F video frames,
D feature dim, T latent frames, K tokens per latent.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.config import FPS, FRAMES_PER_LATENT, SAMPLES_PER_FRAME, AudioConfig, ModelConfig

# Keeps log(0) finite for digital silence; ~-11.5, well below any recorded noise floor.
_LOG_EPS = 1e-5
# Fixed affine that maps log-mel of silence (-11.5) to about -1.3 and loud speech (~+3) to
# about +1.6. Fixed rather than a per-span statistic, because a statistic would make one frame's
# feature depend on the whole span (and loudness is exactly what the mouth should follow).
_LOG_MEL_SHIFT = 5.0
_LOG_MEL_SCALE = 5.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, log above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_step = math.log(6.4) / 27.0
    above = hz >= 1000.0
    mel[above] = 15.0 + np.log(hz[above] / 1000.0) / log_step
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * (200.0 / 3)
    log_step = math.log(6.4) / 27.0
    above = mel >= 15.0
    hz[above] = 1000.0 * np.exp(log_step * (mel[above] - 15.0))
    return hz


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) Slaney-scale, Slaney-normalised triangles from 0 Hz to Nyquist.

    Matches ``librosa.filters.mel(htk=False, norm="slaney")``: each triangle has unit area, so a
    band's value is a mean power density and does not grow with the band's width.
    """
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.array([sample_rate / 2]))[0], n_mels + 2))
    widths = np.diff(edges_hz)  # (n_mels + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freq)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, n_freq)
    return weights * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]


def dft_kernels(n_fft: int) -> np.ndarray:
    """(2 * (n_fft//2 + 1), 1, n_fft) periodic-Hann-windowed cos then sin bases, as conv weights."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)
    # Reduce k*n modulo n_fft before scaling so every angle is in [0, 2*pi): exact periodicity.
    angle = 2 * np.pi * ((k[:, None] * n[None, :]) % n_fft) / n_fft  # (n_freq, n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    bases = np.concatenate([np.cos(angle), -np.sin(angle)]) * window  # (2*n_freq, n_fft)
    return bases[:, None, :]


class LogMel(nn.Module):
    """Samples (B, N) -> log-mel (B, n_mels, S) with "valid" framing: S = (N - n_fft)//hop + 1.

    No centre padding: mel frame ``i`` covers samples [i*hop, i*hop + n_fft) and nothing else,
    which is what lets a caller reason about exactly which audio a frame saw.
    """

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.n_fft = cfg.n_fft
        self.hop_length = cfg.hop_length
        self.n_freq = cfg.n_fft // 2 + 1
        fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
        # Not persistent: both follow from the config, so checkpoints stay free of them and an
        # old checkpoint can never override a corrected design.
        kernels = torch.from_numpy(dft_kernels(cfg.n_fft)).float()
        self.register_buffer("kernels", kernels, persistent=False)  # (2*n_freq, 1, n_fft)
        self.register_buffer("filterbank", torch.from_numpy(fb).float(), persistent=False)  # (M, n_freq)

    def num_frames(self, num_samples: int) -> int:
        return (num_samples - self.n_fft) // self.hop_length + 1

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        if samples.shape[-1] < self.n_fft:
            raise ValueError(f"need at least n_fft={self.n_fft} samples, got {samples.shape[-1]}")
        spec = F.conv1d(samples.unsqueeze(1), self.kernels, stride=self.hop_length)  # (B, 2*n_freq, S)
        re, im = spec[:, : self.n_freq], spec[:, self.n_freq :]  # (B, n_freq, S) each
        power = re * re + im * im
        mel = torch.matmul(self.filterbank, power)  # (B, M, S)
        return torch.log(mel + _LOG_EPS)


class AudioResBlock(nn.Module):
    """Pre-norm residual block at the video frame rate.

    A depthwise k=3 convolution mixes each frame with its neighbours (non-causal: mouth shapes
    anticipate sounds), then an MLP mixes channels. Each block widens the receptive field by one
    frame on each side and nothing more.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.time_mix = nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, F, D) -> (B, F, D)."""
        h = self.time_mix(self.norm(x).transpose(1, 2))  # (B, D, F)
        return x + self.mlp(h.transpose(1, 2))  # (B, F, D)


class AudioEncoder(nn.Module):
    """Samples (B, F*640 + n_fft - hop) -> features (B, F, dim), one per video frame.

    The extra ``n_fft - hop`` samples are what "valid" framing needs to give exactly 4 mel
    frames per video frame. Mel frames 4f..4f+3 of the span make frame f, so their centres sit
    ``(n_fft - hop)/2`` samples after frame f's own 640; a caller that wants them centred on the
    frame starts the span that many samples early.
    """

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel_per_frame = SAMPLES_PER_FRAME // cfg.hop_length
        if self.mel_per_frame * cfg.hop_length != SAMPLES_PER_FRAME:
            raise ValueError(f"hop_length {cfg.hop_length} must divide {SAMPLES_PER_FRAME}")
        dim = cfg.dim
        self.mel = LogMel(cfg)
        self.mel_conv1 = nn.Conv1d(cfg.n_mels, dim, kernel_size=3, padding=1)
        self.mel_conv2 = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.reduce = nn.Conv1d(dim, dim, kernel_size=self.mel_per_frame, stride=self.mel_per_frame)
        self.blocks = nn.ModuleList(AudioResBlock(dim) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(dim)

    def num_samples(self, frames: int) -> int:
        """Span length the encoder needs for ``frames`` video frames of features."""
        return frames * SAMPLES_PER_FRAME + self.cfg.n_fft - self.cfg.hop_length

    @property
    def receptive_frames(self) -> int:
        """R such that frame f's feature depends only on span samples s with s // 640 in [f-R, f+R].

        Frame f reads mel frames 4f-2 .. 4f+5 through the two k=3 mel convs, i.e. samples from
        320 before its own 640 to 560 after them, and each block adds one frame on each side:
        R = num_layers + 1. Frames at least R from both span edges never see the convs' zero
        padding, so they agree between any two spans that contain them.
        """
        return self.cfg.num_layers + 1

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        """samples (B, F*640 + n_fft - hop) float32 at 16 kHz -> features (B, F, dim)."""
        n_samples = samples.shape[1]
        extra = self.cfg.n_fft - self.cfg.hop_length
        if n_samples < self.num_samples(1) or (n_samples - extra) % SAMPLES_PER_FRAME:
            raise ValueError(f"expected F*{SAMPLES_PER_FRAME} + {extra} samples with F >= 1, got {n_samples}")
        # 1. log-mel, scaled to about unit range
        x = (self.mel(samples) + _LOG_MEL_SHIFT) / _LOG_MEL_SCALE  # (B, M, 4F)
        # 2. two convs at the mel frame rate
        x = F.gelu(self.mel_conv1(x), approximate="tanh")  # (B, D, 4F)
        x = F.gelu(self.mel_conv2(x), approximate="tanh")  # (B, D, 4F)
        # 3. each video frame's 4 mel frames -> one vector
        x = self.reduce(x).transpose(1, 2)  # (B, F, D)
        # 4. non-causal residual blocks over the span
        for block in self.blocks:
            x = block(x)
        return self.norm_out(x)  # (B, F, D)


def latent_audio_tokens(
    features: torch.Tensor,
    first_frame: int,
    first_latent: int,
    num_latents: int,
    before: int,
    after: int,
) -> torch.Tensor:
    """Gather each latent's audio tokens: (B, F, D) -> (B, num_latents, before + 4 + after, D).

    ``features`` holds video frames [first_frame, first_frame + F). Latent n covers frames
    [4n, 4n + 4); its tokens are the features of frames [4n - before, 4n + 4 + after), so the
    DiT sees a little audio either side of the frames it is generating.
    """
    B, F_, D = features.shape
    if num_latents < 0 or before < 0 or after < 0:
        raise ValueError(f"num_latents, before, after must be >= 0, got {num_latents}, {before}, {after}")
    tokens = before + FRAMES_PER_LATENT + after
    lo = FRAMES_PER_LATENT * first_latent - before
    hi = FRAMES_PER_LATENT * (first_latent + num_latents) + after  # exclusive
    if num_latents and (lo < first_frame or hi > first_frame + F_):
        raise ValueError(
            f"latents [{first_latent}, {first_latent + num_latents}) need frames [{lo}, {hi}), "
            f"features hold [{first_frame}, {first_frame + F_})"
        )
    starts = FRAMES_PER_LATENT * torch.arange(num_latents, device=features.device) + (lo - first_frame)
    index = starts[:, None] + torch.arange(tokens, device=features.device)[None, :]  # (T, K)
    return features[:, index]  # (B, T, K, D)


def window_audio_span(config: ModelConfig, start: int) -> tuple[int, int]:
    """(first video frame, number of frames) of the audio features a window at latent ``start``
    computes: history, the context before, its own frames, the context after. A function of the
    config alone, because training must cut exactly the spans that inference will."""
    a = config.audio
    first = FRAMES_PER_LATENT * start - a.context_before_frames - a.history_ms * FPS // 1000
    last = FRAMES_PER_LATENT * (start + config.scheduler.window) + a.context_after_frames
    return first, last - first
