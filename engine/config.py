"""Frozen configs and named presets.

Configs are data: they round-trip through ``config.json`` beside the weights, unknown keys are an
error (a typo must never silently fall back to a default), and key names are permanent once
shipped. Everything that changes a tensor shape or a number a user sees lives here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FPS = 25
MODEL_SAMPLE_RATE = 16_000
OUTPUT_SAMPLE_RATE = 48_000
SAMPLES_PER_FRAME = MODEL_SAMPLE_RATE // FPS  # 640
FRAMES_PER_LATENT = 4  # the VAE's temporal compression
SAMPLES_PER_LATENT = SAMPLES_PER_FRAME * FRAMES_PER_LATENT  # 2560 = 160 ms

BlendMode = Literal["linear", "cosine", "none"]
SamplerMode = Literal["x0", "euler"]
CameraWarp = Literal["latents", "frames"]


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the offending key."""


@dataclass(frozen=True)
class VAEConfig:
    """Causal 3D VAE: 4x temporal, 8x spatial. 3D convs only at the lowest resolutions."""

    in_channels: int = 3
    latent_channels: int = 16
    base_channels: int = 96
    # The encoder's width when it differs from ``base_channels``: it runs once per portrait (or
    # per source-video window), never per output frame, so a preset may make it narrower to cut
    # training cost without touching live latency. 0 means ``base_channels``.
    encoder_channels: int = 0
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # How many of the lowest-resolution levels use causal 3D convs; the rest are per-frame 2D,
    # which is what makes the decoder fast enough for real time on a CPU.
    temporal_levels: int = 2
    spatial_factor: int = 8
    temporal_factor: int = FRAMES_PER_LATENT


@dataclass(frozen=True)
class AudioConfig:
    """Log-mel front-end at 16 kHz and a small encoder giving per-latent-frame audio tokens."""

    sample_rate: int = MODEL_SAMPLE_RATE
    n_fft: int = 400
    hop_length: int = 160  # 10 ms: 4 mel frames per video frame
    n_mels: int = 40
    dim: int = 128
    num_layers: int = 2
    # Tokens per latent frame = video frames of context before + the latent's own 4 + after.
    context_before_frames: int = 2
    context_after_frames: int = 2
    # Audio before the window that the (non-causal) encoder sees; kept in a rolling buffer.
    history_ms: int = 320


@dataclass(frozen=True)
class TextConfig:
    """The built-in byte-level text encoder; a real one plugs in behind the same interface."""

    vocab_size: int = 256
    dim: int = 64
    num_layers: int = 1
    num_heads: int = 2
    max_tokens: int = 32


@dataclass(frozen=True)
class DiTConfig:
    """Wan-layout DiT. ``latent_channels`` must equal the VAE's."""

    latent_channels: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    text_dim: int = 4096
    audio_dim: int = 128
    eps: float = 1e-6
    # Reserved, zero-initialised inputs so later features fine-tune instead of retraining.
    num_attributes: int = 8
    # Audio tokens per latent (the audio config's context before + 4 frames + context after):
    # each slot has a learned position, so the DiT knows which frame a token belongs to.
    audio_tokens: int = 8

    @property
    def in_channels(self) -> int:
        """Noise + mask + motion-prefix latents + reference latents, concatenated on channels."""
        return 3 * self.latent_channels + 1


@dataclass(frozen=True)
class SamplerConfig:
    """Few-step flow matching: shift-warped timesteps, x0 prediction then re-noise."""

    shift: float = 5.0
    timesteps: tuple[int, ...] = (1000, 750, 500, 250)
    mode: SamplerMode = "x0"


@dataclass(frozen=True)
class SchedulerConfig:
    """Window geometry and live timing. See DESIGN.md, "The chunked scheduler"."""

    window: int = 2  # W latents per window
    overlap: int = 1  # O latents shared with the previous window
    lookahead_ms: int = 80
    blend: BlendMode = "linear"
    steps: int = 4
    # Step counts the live path may shed to under load; only counts the model was checked at.
    fallback_steps: tuple[int, ...] = ()
    # Live: audio must arrive this long before a window's first frame is due, or silence is
    # inserted. It is the compute budget of one window.
    compute_budget_ms: int = 150
    # Live: how far behind the arrival of speech its first frame is presented.
    playout_delay_ms: int = 600
    color_match: bool = False
    # Where a camera move is applied (engine.models.camera): "latents" warps the reference latents
    # the DiT's camera branch reads, so the model renders the move (DESIGN); "frames" warps each
    # decoded frame, exact to the sub-pixel, for models whose branch can only move content in whole
    # latent cells (the tiny preset's 16x16 grid: 8-pixel jumps, and a handheld shake lost).
    camera_warp: CameraWarp = "latents"
    # The largest jump (0-255 levels, per pixel) between a latent's first frame and the frame shown
    # before it that is faded out over the latent's frames instead of shown at once; 0 is off.
    # Consecutive latents of a few-step sampler differ a little everywhere (texture, edges), which
    # shows as a tick every 4 frames; a small cap eases that and leaves real motion (a mouth
    # opening moves pixels by far more) where it is.
    boundary_ease: float = 0.0

    @property
    def stride(self) -> int:
        return self.window - self.overlap


@dataclass(frozen=True)
class Capabilities:
    """What the loaded model can be asked to do; the server rejects the rest with 422."""

    camera: bool = False
    prompt: bool = False
    video: bool = False


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    height: int = 128
    width: int = 128
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    capabilities: Capabilities = field(default_factory=Capabilities)

    @property
    def latent_height(self) -> int:
        return self.height // self.vae.spatial_factor

    @property
    def latent_width(self) -> int:
        return self.width // self.vae.spatial_factor

    @property
    def audio_wait_ms(self) -> float:
        """How much audio past a window's first frame must be in before the window can run:
        the window itself, then the look-ahead or the audio encoder's right context."""
        a, s = self.audio, self.scheduler
        context_ms = a.context_after_frames * 1000 / FPS + (a.n_fft - a.hop_length) * 1000 / a.sample_rate
        return s.window * FRAMES_PER_LATENT * 1000 / FPS + max(s.lookahead_ms, context_ms)

    def validate(self) -> ModelConfig:
        """Reject geometry the models cannot run; returns self so it chains."""
        s = self.scheduler
        checks = [
            (self.dit.latent_channels == self.vae.latent_channels, "dit.latent_channels must equal vae's"),
            (self.height % (self.vae.spatial_factor * self.dit.patch_size[1]) == 0, "height"),
            (self.width % (self.vae.spatial_factor * self.dit.patch_size[2]) == 0, "width"),
            (s.overlap >= 1 and s.window >= 2 * s.overlap, "scheduler.window must be >= 2*overlap >= 2"),
            (1 <= s.steps <= len(self.sampler.timesteps), "scheduler.steps"),
            (self.dit.dim % self.dit.num_heads == 0, "dit.dim must divide by num_heads"),
            (s.blend in ("linear", "cosine", "none"), "scheduler.blend must be linear|cosine|none"),
            (s.camera_warp in ("latents", "frames"), "scheduler.camera_warp must be latents|frames"),
            (0.0 <= s.boundary_ease <= 255.0, "scheduler.boundary_ease must be between 0 and 255"),
            (self.dit.audio_dim == self.audio.dim, "dit.audio_dim must equal audio.dim"),
            (
                self.dit.audio_tokens
                == self.audio.context_before_frames + FRAMES_PER_LATENT + self.audio.context_after_frames,
                "dit.audio_tokens must equal audio.context_before_frames + 4 + context_after_frames",
            ),
            (self.dit.text_dim == self.text.dim, "dit.text_dim must equal text.dim"),
            (s.lookahead_ms >= self.audio.context_after_frames * 1000 // FPS, "scheduler.lookahead_ms"),
            (
                s.playout_delay_ms >= self.audio_wait_ms + s.compute_budget_ms,
                f"scheduler.playout_delay_ms must cover the audio wait ({self.audio_wait_ms:.0f} ms) "
                "plus compute_budget_ms",
            ),
        ]
        for ok, what in checks:
            if not ok:
                raise ConfigError(f"invalid config {self.name!r}: {what}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "").validate()

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(data)


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Strictly build a (nested) frozen dataclass: unknown keys are an error, lists become tuples."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix or '<root>'!r}: expected an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value, f"{prefix}{key}.")
        elif typing.get_origin(hint) is tuple or (
            isinstance(hint, types.GenericAlias) and hint.__origin__ is tuple
        ):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _tiny() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        height=128,
        width=128,
        vae=VAEConfig(
            latent_channels=8,
            base_channels=32,
            encoder_channels=16,
            channel_mults=(1, 2, 4, 4),
            num_res_blocks=1,
        ),
        dit=DiTConfig(
            latent_channels=8, dim=192, ffn_dim=576, num_heads=3, num_layers=4, text_dim=64, audio_dim=128
        ),
        audio=AudioConfig(dim=128, num_layers=2),
        text=TextConfig(dim=64),
        sampler=SamplerConfig(shift=3.0),
        # boundary_ease 6: on the default model (3 held-out clips, 8 s, 4 steps) it took the seam
        # ratio from 3.3-3.7 to 0.8-1.05 for lip-sync 0.858 / 0.713 -> 0.855 / 0.710.
        scheduler=SchedulerConfig(camera_warp="frames", boundary_ease=6.0),
    )


def _small() -> ModelConfig:
    return ModelConfig(
        name="small",
        height=256,
        width=256,
        vae=VAEConfig(latent_channels=16, base_channels=64, channel_mults=(1, 2, 4, 4), num_res_blocks=1),
        dit=DiTConfig(
            latent_channels=16, dim=512, ffn_dim=1536, num_heads=8, num_layers=8, text_dim=256, audio_dim=256
        ),
        audio=AudioConfig(dim=256, num_layers=4),
        text=TextConfig(dim=256, num_layers=2, num_heads=4, max_tokens=64),
        sampler=SamplerConfig(shift=3.0),
    )


def _wan(name: str, dim: int, ffn_dim: int, heads: int, layers: int) -> ModelConfig:
    """Public Wan2.1 sizes: patch 1x2x2, VAE 4x8x8 with 16 latent channels, umT5 text (4096)."""
    return ModelConfig(
        name=name,
        height=480,
        width=832,
        vae=VAEConfig(latent_channels=16, base_channels=96, channel_mults=(1, 2, 4, 4), num_res_blocks=2),
        dit=DiTConfig(
            latent_channels=16, dim=dim, ffn_dim=ffn_dim, num_heads=heads, num_layers=layers, audio_dim=768
        ),
        audio=AudioConfig(dim=768, num_layers=4),
        text=TextConfig(dim=4096, num_layers=2, num_heads=32, max_tokens=512),
        sampler=SamplerConfig(shift=5.0),
    )


PRESETS: dict[str, typing.Callable[[], ModelConfig]] = {
    "tiny": _tiny,
    "small": _small,
    "wan-1.3b": lambda: _wan("wan-1.3b", 1536, 8960, 12, 30),
    "wan-14b": lambda: _wan("wan-14b", 5120, 13824, 40, 40),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]().validate()
