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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import FPS, FRAMES_PER_LATENT, ConfigError, ModelConfig
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
        # Seconds of work on a CPU (about 1.2 s per second of source on two cores): say so first.
        logger.info("video: encoding a %.1f s source once (%d latents of its loop)", len(frames) / FPS, count)
        # 1. Encode the loop causally, its last WARMUP_LATENTS latents' frames in front.
        order = np.arange(-WARMUP_LATENTS * FRAMES_PER_LATENT, len(loop)) % len(loop)
        encoder_cache, decoder_cache = backend.vae_encoder_cache(1), backend.vae_decoder_cache(1)
        latents, decoded = [], []
        for j in range(WARMUP_LATENTS + count):
            group = to_model_input(loop[order[FRAMES_PER_LATENT * j : FRAMES_PER_LATENT * (j + 1)]])
            latent, encoder_cache = backend.vae_encoder_step(group, encoder_cache)
            # 2. Decode them the same way, for the round trip the compositing compares against.
            pixels, decoder_cache = backend.vae_decoder_step(latent, decoder_cache)
            if j >= WARMUP_LATENTS:
                latents.append(latent)
                decoded.append(pixels[0].permute(1, 2, 3, 0))  # (4, H, W, 3)
            if progress is not None:
                progress(j + 1, WARMUP_LATENTS + count)
        round_trip = ((torch.cat(decoded) + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
        reference = backend.vae_encoder(to_model_input(loop[:1]))
        logger.info(
            "video: %d frames looped to %d (%.1f s), %d latents",
            len(frames),
            len(loop),
            len(loop) / FPS,
            count,
        )
        return cls(frames=loop, latents=torch.cat(latents, dim=2), round_trip=round_trip, reference=reference)

    @property
    def num_latents(self) -> int:
        return self.latents.shape[2]

    def window_latents(self, start: int, count: int) -> torch.Tensor:
        """(1, C, count, h, w) source latents of stream latents [start, start + count)."""
        index = torch.arange(start, start + count) % self.num_latents
        return self.latents[:, :, index]

    def composite(self, generated: np.ndarray, first_frame: int) -> np.ndarray:
        """Generated frames (N, H, W, 3) uint8 from stream frame ``first_frame`` on -> the source's
        pixels where the generated frames match the source's round trip, theirs where they differ."""
        index = np.arange(first_frame, first_frame + len(generated)) % len(self.frames)
        gen = torch.from_numpy(generated).float()
        source = torch.from_numpy(self.frames[index]).float()
        round_trip = torch.from_numpy(self.round_trip[index]).float()
        diff = (gen - round_trip).abs().mean(dim=-1)[:, None]  # (N, 1, H, W)
        pad = MASK_BLUR // 2
        diff = F.avg_pool2d(diff, MASK_BLUR, 1, pad, count_include_pad=False)
        alpha = F.avg_pool2d((diff / MASK_LEVELS).clamp(0, 1), MASK_BLUR, 1, pad, count_include_pad=False)
        alpha = alpha[:, 0, :, :, None]  # (N, H, W, 1)
        out = alpha * gen + (1.0 - alpha) * source
        return out.round().clamp(0, 255).to(torch.uint8).numpy()
