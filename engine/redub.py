"""Re-dubbing a video: a source video, looped, replaces the still portrait.

A live-commerce host records a clip once and is re-voiced live for hours, so the source is
looped, and the loop is a mirror (forward, then backward): the frame after the last is the one
before it, so there is no jump at the loop point, which a plain wrap-around of an arbitrary clip
cannot promise.

Conditioning: every latent of every window reads the source at the matching time. The source is
encoded once per session, causally, with the loop's end in front of its start so that latent 0
has the context it has on every later pass: stream latent n reads loop latent n mod (L/4). Those
latents, less the session's reference (the source's first frame as a still, the trunk's identity
anchor, as a portrait is), go into the DiT's ControlNet-style branch: the same input and the same
semantics as a camera move (how the picture at this time differs from the reference), so the
branch that follows a warped portrait learns to follow a video. The trunk is untouched, so a
session without a video is bit-identical to the model without this feature. Dense (every latent)
rather than sparse keyframes, because the head motion, the framing and the blinks must follow the
source, not drift between keyframes; precomputed, it costs nothing per window.

Output: the tiny VAE's round trip alone loses detail (25-28 dB PSNR on ground-truth renders), so
each output frame is composited: the source's own pixels wherever the generated frame matches the
source's VAE round trip, the generated pixels where it departs from it (the mouth), with a soft
mask. Comparing like with like (generated against round trip, both through the same decoder) is
what keeps the mask off the VAE's blur; against the raw source the mask lights up at every edge.

That mask alone also let in the DiT's own departures from the source (eyes, hair and outline a
little off), which on the standard report's clips held 25-54% of the re-dub's squared error. So
the mask is also limited to each source frame's speech region: where the decoder draws speech on
that frame, found once per source by decoding its latents hearing a probe of loud speech (the
shipped ``hello.wav``) against hearing silence, widened by the mouth's reach. The mouth can
only change there, and in a pause of the new speech it still closes, since the region does not
depend on what is heard. A decoder that does not hear audio has no such region, and its mask stays
unlimited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import (
    FPS,
    FRAMES_PER_LATENT,
    MODEL_SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    ConfigError,
    ModelConfig,
)
from engine.media import read_audio
from engine.models.audio import window_audio_span
from engine.resample import StreamResampler
from engine.runtime.base import Backend

logger = logging.getLogger(__name__)

MIN_SECONDS = 1.0
MAX_SECONDS = 30.0  # a loop this long costs ~75 MB per session (frames and their round trip)
# Latents of the loop's end encoded before its start: more than the causal encoder's and
# decoder's temporal reach (a handful of latents), so latent 0 sees what it sees on every pass.
WARMUP_LATENTS = 8
# Compositing mask: mean absolute difference (0-255 levels, box-filtered over 5x5 pixels) at which
# a pixel is all generated. The round trip's own error is a few levels; a mouth change is tens.
MASK_LEVELS = 16.0
MASK_BLUR = 5
# Speech region: the probe's change to a decoded frame (levels, as above) at which a pixel is all
# inside, after a max filter over REGION_REACH pixels (how far lips and jaw travel beyond where the
# probe put them) and the mask's blur. Chosen on the standard report's 4 re-dub clips and the re-dub
# test's 2: PSNR rose by 1.0-2.6 dB with the report's lip-sync unchanged (0.869); a level of 32 or
# a reach of 5 began to cut lip-sync (by up to 0.016 on a clip).
REGION_LEVELS = 16.0
REGION_REACH = 9
PROBE_SPEECH = Path(__file__).parent / "assets" / "hello.wav"


def check_video(config: ModelConfig) -> None:
    """A video on a model that was not trained to follow one is refused, not ignored."""
    if not config.capabilities.video:
        raise ConfigError(
            f"video: model '{config.name}' cannot re-dub a video (capabilities.video is false); "
            "use a model trained for it, such as the default"
        )


def mirror_loop(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) -> the forward-then-backward loop, (L, H, W, 3) with L a multiple of 4 (one
    frame is dropped from an even-length clip: 2F - 2 is a multiple of 4 when F is odd)."""
    if len(frames) % 2 == 0:
        frames = frames[:-1]
    return np.concatenate([frames, frames[-2:0:-1]])


def check_source_length(num_frames: int) -> None:
    seconds = num_frames / FPS
    if seconds < MIN_SECONDS:
        raise ConfigError(f"video: {seconds:.2f} s is too short to loop; give at least {MIN_SECONDS:g} s")
    if seconds > MAX_SECONDS + 1.0 / FPS:
        raise ConfigError(f"video: {seconds:.1f} s is longer than the {MAX_SECONDS:g} s a session holds")


def probe_features(backend: Backend) -> torch.Tensor:
    """(1, 4, Da) the audio features of the loudest 4 frames in a row of the probe speech: one
    latent's worth of a wide-open mouth, for finding where the decoder draws speech. They are
    computed over a window's audio span, centred on them, since exported encoders take no other."""
    decoded = read_audio(PROBE_SPEECH)
    resampler = StreamResampler(decoded.sample_rate, MODEL_SAMPLE_RATE)
    speech = np.concatenate([resampler.process(decoded.mono()), resampler.flush()]).astype(np.float32)
    frames = len(speech) // SAMPLES_PER_FRAME
    energy = np.square(speech[: frames * SAMPLES_PER_FRAME].reshape(frames, -1)).mean(axis=1)
    loudest = int(np.argmax(np.convolve(energy, np.ones(FRAMES_PER_LATENT), mode="valid")))
    _, span_frames = window_audio_span(backend.config, 0)
    first = loudest - (span_frames - FRAMES_PER_LATENT) // 2
    audio = backend.config.audio
    span = np.zeros(span_frames * SAMPLES_PER_FRAME + audio.n_fft - audio.hop_length, np.float32)
    lo, hi = max(first, 0) * SAMPLES_PER_FRAME, min(first * SAMPLES_PER_FRAME + len(span), len(speech))
    span[lo - first * SAMPLES_PER_FRAME : hi - first * SAMPLES_PER_FRAME] = speech[lo:hi]
    features = backend.audio_encoder(torch.from_numpy(span)[None])  # (1, span_frames, Da)
    return features[:, loudest - first : loudest - first + FRAMES_PER_LATENT]


def speech_region(change: torch.Tensor) -> np.ndarray:
    """(L, H, W) probe change in levels -> (L, H, W) uint8 region, 255 inside; all 255 when the
    decoder does not hear audio (nothing changes), which leaves the mask unlimited."""
    if float(change.max()) < REGION_LEVELS:
        logger.info("video: the decoder does not draw speech; the compositing mask is not limited")
        return np.full(change.shape, 255, np.uint8)
    reach = F.max_pool2d(change[:, None], REGION_REACH, 1, REGION_REACH // 2)
    pad = MASK_BLUR // 2
    smooth = F.avg_pool2d(reach, MASK_BLUR, 1, pad, count_include_pad=False)[:, 0]
    return ((smooth / REGION_LEVELS).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def to_model_input(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (1, 3, F, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]


@dataclass(frozen=True)
class SourceVideo:
    """A session's source, ready to condition windows: everything is a function of the stream
    position, so a window regenerated after a rollback reads the same source."""

    frames: np.ndarray  # (L, H, W, 3) uint8: the mirror loop; stream frame i shows frames[i % L]
    latents: torch.Tensor  # (1, C, L/4, h, w): stream latent n reads latents[:, :, n % (L/4)]
    round_trip: np.ndarray  # (L, H, W, 3) uint8: the loop through the VAE, for the compositing mask
    region: np.ndarray  # (L, H, W) uint8: each frame's speech region (255 inside), which bounds the mask
    reference: torch.Tensor  # (1, C, 1, h, w): frame 0 as a still, the session's reference

    @classmethod
    def prepare(
        cls, backend: Backend, frames: np.ndarray, progress: Callable[[int, int], None] | None = None
    ) -> SourceVideo:
        """Encode ``frames`` ((F, H, W, 3) uint8 at the model's size and 25 fps) once; ``progress``
        hears (latents done, latents in all) after each, since it takes seconds per second."""
        config = backend.config
        expected = (config.height, config.width, 3)
        if frames.ndim != 4 or frames.shape[1:] != expected or frames.dtype != np.uint8:
            raise ValueError(f"video frames must be uint8 (F, {expected}), got {frames.dtype} {frames.shape}")
        check_source_length(len(frames))
        loop = mirror_loop(frames)
        count = len(loop) // FRAMES_PER_LATENT
        # Seconds of work on a CPU (about 1 s per second of source on two cores): say so first.
        logger.info("video: encoding a %.1f s source once (%d latents of its loop)", len(frames) / FPS, count)
        # 1. Encode the loop causally, its last WARMUP_LATENTS latents' frames in front.
        order = np.arange(-WARMUP_LATENTS * FRAMES_PER_LATENT, len(loop)) % len(loop)
        encoder_cache, decoder_cache = backend.vae_encoder_cache(1), backend.vae_decoder_cache(1)
        probe, probe_cache = probe_features(backend), backend.vae_decoder_cache(1)
        latents, decoded, changes = [], [], []
        for j in range(WARMUP_LATENTS + count):
            group = to_model_input(loop[order[FRAMES_PER_LATENT * j : FRAMES_PER_LATENT * (j + 1)]])
            latent, encoder_cache = backend.vae_encoder_step(group, encoder_cache)
            # 2. Decode them the same way, for the round trip the compositing compares against, and
            #    hearing the probe, for the speech region.
            pixels, decoder_cache = backend.vae_decoder_step(latent, decoder_cache)
            speaking, probe_cache = backend.vae_decoder_step(latent, probe_cache, probe)
            if j >= WARMUP_LATENTS:
                latents.append(latent)
                decoded.append(pixels[0].permute(1, 2, 3, 0))  # (4, H, W, 3)
                changes.append((speaking - pixels)[0].abs().mean(dim=0) * 127.5)  # (4, H, W) levels
            if progress is not None:
                progress(j + 1, WARMUP_LATENTS + count)
        round_trip = ((torch.cat(decoded) + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
        region = speech_region(torch.cat(changes))
        reference = backend.vae_encoder(to_model_input(loop[:1]))
        logger.info(
            "video: %d frames looped to %d (%.1f s), %d latents",
            len(frames),
            len(loop),
            len(loop) / FPS,
            count,
        )
        return cls(
            frames=loop,
            latents=torch.cat(latents, dim=2),
            round_trip=round_trip,
            region=region,
            reference=reference,
        )

    @property
    def num_latents(self) -> int:
        return self.latents.shape[2]

    def window_latents(self, start: int, count: int) -> torch.Tensor:
        """(1, C, count, h, w) source latents of stream latents [start, start + count)."""
        index = torch.arange(start, start + count) % self.num_latents
        return self.latents[:, :, index]

    def composite(self, generated: np.ndarray, first_frame: int) -> np.ndarray:
        """Generated frames (N, H, W, 3) uint8 from stream frame ``first_frame`` on -> the source's
        pixels where the generated frames match the source's round trip, theirs where they differ
        inside the frame's speech region."""
        index = np.arange(first_frame, first_frame + len(generated)) % len(self.frames)
        gen = torch.from_numpy(generated).float()
        source = torch.from_numpy(self.frames[index]).float()
        round_trip = torch.from_numpy(self.round_trip[index]).float()
        diff = (gen - round_trip).abs().mean(dim=-1)[:, None]  # (N, 1, H, W)
        pad = MASK_BLUR // 2
        diff = F.avg_pool2d(diff, MASK_BLUR, 1, pad, count_include_pad=False)
        alpha = F.avg_pool2d((diff / MASK_LEVELS).clamp(0, 1), MASK_BLUR, 1, pad, count_include_pad=False)
        region = torch.from_numpy(self.region[index]).float().div(255.0)[:, None]  # (N, 1, H, W)
        alpha = (alpha * region)[:, 0, :, :, None]  # (N, H, W, 1)
        out = alpha * gen + (1.0 - alpha) * source
        return out.round().clamp(0, 255).to(torch.uint8).numpy()
