"""One window of generation: sampling with tail conditioning, the overlap blend, causal decode.

This is the compute half of the chunked scheduler, with no notion of time. A window starting at
stream latent ``start`` covers latents ``[start, start+W)``: the first ``O`` overlap the previous
window's held-back tail, ``[start, start+S)`` become final and are decoded, and
``[start+S, start+W)`` are held back as the next tail. Stream latent ``n`` decodes to video
frames ``[4n, 4n+4)``; negative latents are the reference tail of the first window and are never
emitted. Everything a window needs to resume from a latent boundary is a ``GeneratorState``, so
rolling back (interrupt, speech after idle) is restoring one.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.blend import blend_overlap, blend_weights, color_match, lab_stats
from engine.config import FRAMES_PER_LATENT, SAMPLES_PER_FRAME, SAMPLES_PER_LATENT, ModelConfig
from engine.models.audio import latent_audio_tokens, window_audio_span
from engine.models.camera import IDENTITY, CameraPath, camera_latents, warp_frames
from engine.prompt import PromptPath
from engine.redub import SourceVideo
from engine.runtime.base import Backend, DecoderCache
from engine.sampler import FlowSampler


@dataclass(frozen=True)
class Conditioning:
    """What a session is: who (reference latent), what they are told (text), attributes. The camera
    and the prompt change during a session, so their paths live on the generator
    (``WindowGenerator.camera`` and ``.prompt``); ``text`` is the prompt the session began with."""

    reference: torch.Tensor  # (1, C, 1, h, w)
    text: torch.Tensor  # (1, L, Dt)
    attributes: torch.Tensor  # (1, A)
    # Lab mean/std of the portrait, for colour matching.
    reference_lab: tuple[torch.Tensor, torch.Tensor] | None = None
    source: SourceVideo | None = None  # a video being re-dubbed, in place of a still portrait

    @classmethod
    def from_portrait(cls, backend: Backend, portrait: np.ndarray, prompt: str = "") -> Conditioning:
        """Encode a session's portrait (uint8 (H, W, 3) at the model's size) and prompt once."""
        rgb = torch.tensor(portrait, dtype=torch.float32) / 255.0  # (H, W, 3)
        frames = (rgb * 2.0 - 1.0).permute(2, 0, 1)[None, :, None]  # (1, 3, 1, H, W)
        reference = backend.vae_encoder(frames)
        return cls(
            reference=reference,
            text=backend.encode_text(prompt),
            attributes=torch.zeros(1, backend.config.dit.num_attributes),
            reference_lab=lab_stats(rgb),
        )

    @classmethod
    def from_video(cls, backend: Backend, video: np.ndarray | SourceVideo, prompt: str = "") -> Conditioning:
        """Encode a session's source video (uint8 (F, H, W, 3) at the model's size, 25 fps, or one
        already prepared) and prompt once; its first frame is the reference, as a portrait's is."""
        source = video if isinstance(video, SourceVideo) else SourceVideo.prepare(backend, video)
        return cls(
            reference=source.reference,
            text=backend.encode_text(prompt),
            attributes=torch.zeros(1, backend.config.dit.num_attributes),
            reference_lab=lab_stats(torch.from_numpy(source.frames[0]).float() / 255.0),
            source=source,
        )


@dataclass(frozen=True)
class GeneratorState:
    """Everything needed to generate from a latent boundary on: a snapshot."""

    start: int  # stream latent index of the next window's first (overlap) latent
    tail: torch.Tensor  # (1, C, O, h, w) latents [start, start+O), predicted but not final
    vae_cache: DecoderCache  # decoder state after decoding latent start-1
    previous: torch.Tensor  # (1, C, 1, h, w) the final latent start-1: what the viewer saw last
    tail_audio: torch.Tensor  # (1, 4*O, Da) what the tail's frames hear when decoded
    last_frame: torch.Tensor | None = None  # (H, W, 3) in [-1, 1]: the last frame decoded, eased

    def resumed(self) -> GeneratorState:
        """The state to resume from after a rollback. The held-back tail was predicted from
        audio that is now dropped, a state the viewer never watched, so the last latent they
        did see stands in for it, hearing silence."""
        tail = self.previous.expand(-1, -1, self.tail.shape[2], -1, -1).clone()
        silence = torch.zeros_like(self.tail_audio)
        return GeneratorState(self.start, tail, self.vae_cache, self.previous, silence, self.last_frame)


@dataclass
class WindowOutput:
    start: int
    steps: int
    first_frame: int  # video frame index of frames[0]
    frames: np.ndarray  # (N, H, W, 3) uint8
    final_latents: torch.Tensor  # (1, C, n, h, w) what went into the decoder, in order
    # State at each emitted latent boundary, in order; the last one starts the next window.
    boundaries: list[GeneratorState] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


def noise_seed(seed: int, latent: int, step: int) -> int:
    """A 63-bit seed from (session seed, global latent index, step): noise never depends on
    how audio was chunked or where a window started."""
    digest = hashlib.blake2b(f"{seed}:{latent}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(N, H, W, 3) in [0, 1] -> uint8."""
    return (frames.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


class WindowGenerator:
    def __init__(self, backend: Backend, conditioning: Conditioning, config: ModelConfig, seed: int = 0):
        self.backend = backend
        self.cond = conditioning
        self.config = config
        self.seed = seed
        self.sampler = FlowSampler(config.sampler)
        s = config.scheduler
        self.window, self.overlap, self.stride = s.window, s.overlap, s.stride
        self.weights = blend_weights(s.blend, s.overlap)
        a = config.audio
        self._lookahead_samples = s.lookahead_ms * SAMPLES_PER_LATENT // 160
        self._mel_extra = a.n_fft - a.hop_length
        self._reference_window = conditioning.reference.expand(-1, -1, self.window, -1, -1)
        self.camera = CameraPath()
        self.prompt = PromptPath(conditioning.text)
        self._no_camera = torch.zeros_like(self._reference_window)
        self._camera_in_frames = config.scheduler.camera_warp == "frames"
        self._ease = s.boundary_ease / 127.5  # levels -> the decoder's [-1, 1]
        self._ease_weights = 1.0 - torch.arange(1, FRAMES_PER_LATENT + 1) / FRAMES_PER_LATENT

    def camera_window(self, start: int) -> torch.Tensor:
        """(1, C, W, h, w) what the camera branch reads for the window at ``start``: the re-dub
        source's latents at the matching time, or the portrait, moved by the camera, less the
        reference; zeros for a still portrait and a static camera (or one applied to frames)."""
        source = self.cond.source
        if source is None and (self.camera.is_static or self._camera_in_frames):
            return self._no_camera
        video = None if source is None else source.window_latents(start, self.window)
        if self._camera_in_frames:
            poses = np.tile(IDENTITY, (self.window, 1))  # the move is applied to the frames instead
        else:
            poses = self.camera.latent_poses(start, self.window)
        return camera_latents(self.cond.reference, poses, video)

    # --- the audio a window needs --------------------------------------------------------------
    def audio_span(self, start: int) -> tuple[int, int]:
        """(first video frame, number of frames) of audio features for the window at ``start``."""
        return window_audio_span(self.config, start)

    def required_audio_end(self, start: int) -> int:
        """Model-audio position (16 kHz) through which the window at ``start`` needs audio."""
        first, count = self.audio_span(start)
        features_end = (first + count) * SAMPLES_PER_FRAME + self._mel_extra
        return max(features_end, (start + self.window) * SAMPLES_PER_LATENT + self._lookahead_samples)

    # --- state -----------------------------------------------------------------------------------
    def initial_state(self) -> GeneratorState:
        """Window 0 starts at latent -O with the reference as its tail; the decoder is primed
        with the reference latent, hearing silence, whose frames are not emitted."""
        cache = self.backend.vae_decoder_cache(1)
        _, cache = self.backend.vae_decoder_step(self.cond.reference, cache, self.backend.silence())
        tail = self.cond.reference.expand(-1, -1, self.overlap, -1, -1).clone()
        silence = self.backend.silence().repeat(1, self.overlap, 1)
        return GeneratorState(-self.overlap, tail, cache, self.cond.reference, silence)

    def _decode(
        self, latent: torch.Tensor, cache: DecoderCache, audio: torch.Tensor, last_frame: torch.Tensor | None
    ) -> tuple[torch.Tensor, DecoderCache]:
        """One final latent -> its 4 frames (4, H, W, 3) in [-1, 1], eased from ``last_frame``.

        The ease: the jump from the frame shown last to this latent's first frame, capped at
        ``boundary_ease`` levels per pixel, is added back and faded out over the four frames
        (3/4, 1/2, 1/4, 0), so a latent-to-latent flicker becomes a glide; anything moving more
        than the cap (a mouth) keeps all but the cap of its step.
        """
        decoded, cache = self.backend.vae_decoder_step(latent, cache, audio)
        frames = decoded[0].permute(1, 2, 3, 0)  # (4, H, W, 3)
        if last_frame is not None and self._ease > 0:
            jump = (last_frame - frames[0]).clamp(-self._ease, self._ease)
            frames = frames + self._ease_weights.view(-1, 1, 1, 1) * jump
        return frames, cache

    def _noise(self, first_latent: int, count: int, step: int) -> torch.Tensor:
        ref = self.cond.reference
        shape = (ref.shape[1], ref.shape[3], ref.shape[4])
        noises = [
            torch.randn(shape, generator=torch.Generator().manual_seed(noise_seed(self.seed, n, step)))
            for n in range(first_latent, first_latent + count)
        ]
        return torch.stack(noises, dim=1).unsqueeze(0)  # (1, C, count, h, w)

    # --- one window ------------------------------------------------------------------------------
    def run(self, state: GeneratorState, audio: np.ndarray, steps: int) -> WindowOutput:
        """Generate the window at ``state.start``; ``audio`` is the model audio of its span."""
        W, O, S, start = self.window, self.overlap, self.stride, state.start
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + (now - clock) * 1000.0
            clock = now

        # 1. Audio tokens from the rolling span (history + window + look-ahead).
        first_frame, _ = self.audio_span(start)
        features = self.backend.audio_encoder(torch.from_numpy(audio).unsqueeze(0))
        a = self.config.audio
        tokens = latent_audio_tokens(
            features, first_frame, start, W, a.context_before_frames, a.context_after_frames
        )
        lap("audio")

        # 2. Conditioning channels: mask and clean tail on the overlap, reference everywhere.
        mask = torch.zeros(1, 1, W, *state.tail.shape[3:])
        mask[:, :, :O] = 1.0
        motion = torch.zeros_like(self._reference_window)
        motion[:, :, :O] = state.tail
        cond = torch.cat([mask, motion, self._reference_window], dim=1)  # (1, 2C+1, W, h, w)
        camera = self.camera_window(start)
        text = self.prompt.at(start + O)

        # 3. Few-step sampling; the overlap is pinned to the re-noised tail at every step but the last.
        sigmas = self.sampler.sigmas(steps)
        x = self._noise(start, W, 0)
        for j, sigma in enumerate(sigmas):
            if j < len(sigmas) - 1:
                x[:, :, :O] = (1.0 - sigma) * state.tail + sigma * self._noise(start, O, j)[:, :, :O]
            velocity = self.backend.dit_step(
                x,
                torch.tensor([sigma * 1000.0]),
                cond,
                tokens,
                text,
                camera,
                self.cond.attributes,
            )
            last = j == len(sigmas) - 1
            sigma_next = 0.0 if last else sigmas[j + 1]
            x = self.sampler.step(
                x, velocity, sigma, sigma_next, None if last else self._noise(start, W, j + 1)
            )
        lap("dit")

        # 4. Blend the overlap: hand over from the previous window to this one.
        latents = x.clone()
        latents[:, :, :O] = blend_overlap(state.tail, x[:, :, :O], self.weights)
        lap("blend")

        # 5. Decode the final latents [start, start+S) (never the reference tail at n < 0); each
        #    frame hears its own audio feature.
        def heard(n: int, count: int = 1) -> torch.Tensor:
            first = FRAMES_PER_LATENT * n - first_frame
            return features[:, first : first + FRAMES_PER_LATENT * count]

        cache, last_frame = state.vae_cache, state.last_frame
        frames, finals, boundaries = [], [], []
        for n in range(start, start + S):
            latent = latents[:, :, n - start : n - start + 1]
            if n >= 0:
                chunk, cache = self._decode(latent, cache, heard(n), last_frame)
                frames.append(chunk)
                finals.append(latent)
                last_frame = chunk[-1]
            tail = latents[:, :, n + 1 - start : n + 1 - start + O].clone()
            boundaries.append(GeneratorState(n + 1, tail, cache, latent, heard(n + 1, O), last_frame))
        lap("decode")

        # 6. Optional colour matching to the reference (against slow drift), re-dub compositing.
        pixels = self._to_pixels(frames, FRAMES_PER_LATENT * max(start, 0))
        lap("color")
        return WindowOutput(
            start=start,
            steps=steps,
            first_frame=FRAMES_PER_LATENT * max(start, 0),
            frames=pixels,
            final_latents=torch.cat(finals, dim=2) if finals else latents[:, :, :0],
            boundaries=boundaries,
            timings_ms=timings,
        )

    def flush(self, state: GeneratorState) -> WindowOutput:
        """End of input: decode the held-back tail as it stands (it has no successor to blend with)."""
        cache, last_frame, frames, finals = state.vae_cache, state.last_frame, [], []
        t0 = time.perf_counter()
        for j in range(self.overlap):
            if state.start + j >= 0:
                latent = state.tail[:, :, j : j + 1]
                audio = state.tail_audio[:, FRAMES_PER_LATENT * j : FRAMES_PER_LATENT * (j + 1)]
                chunk, cache = self._decode(latent, cache, audio, last_frame)
                frames.append(chunk)
                finals.append(latent)
                last_frame = chunk[-1]
        return WindowOutput(
            start=state.start,
            steps=0,
            first_frame=FRAMES_PER_LATENT * max(state.start, 0),
            frames=self._to_pixels(frames, FRAMES_PER_LATENT * max(state.start, 0)),
            final_latents=torch.cat(finals, dim=2) if finals else state.tail[:, :, :0],
            timings_ms={"decode": (time.perf_counter() - t0) * 1000.0},
        )

    def _to_pixels(self, frames: list[torch.Tensor], first_frame: int) -> np.ndarray:
        """Decoder output chunks (4, H, W, 3) in [-1, 1] from stream frame ``first_frame`` on ->
        uint8, colour-matched if configured, composited onto a re-dub source, moved by the camera
        when it applies to frames (after compositing: the camera moves the whole picture)."""
        if not frames:
            return np.zeros((0, self.config.height, self.config.width, 3), np.uint8)
        rgb = ((torch.cat(frames) + 1.0) / 2.0).clamp(0, 1)
        if self.config.scheduler.color_match and self.cond.reference_lab is not None:
            rgb = color_match(rgb, self.cond.reference_lab)
        pixels = to_uint8(rgb)
        if self.cond.source is not None:
            pixels = self.cond.source.composite(pixels, first_frame)
        if self._camera_in_frames and not self.camera.is_static:
            pixels = warp_frames(pixels, self.camera.poses(np.arange(first_frame, first_frame + len(pixels))))
        return pixels
