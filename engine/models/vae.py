"""Causal 3D VAE (4x temporal, 8x spatial) whose decoder streams one latent at a time.

Layout. Videos cross the public API as (B, C, T, H, W). Inside, both halves work frames-major,
(B, T, C, H, W), with channels-last memory: a per-frame 2D conv then folds T into the batch with a
free view, and the per-position norm reduces over a contiguous axis. A causal "3D" conv stacks
its k input frames on channels and runs as one 2D conv: the arithmetic of a Conv3d with kernel
(k, 3, 3) and k-1 zero frames in front, without Conv3d, which is ~10x slower than Conv2d on CPU.

Speed. Causal 3D convs run only at the lowest ``cfg.temporal_levels`` resolutions, where time is
also upsampled; higher resolutions are per-frame 2D. The decoder runs at half the encoder's width,
and its full-resolution level is only a sub-pixel head (a conv at half resolution making 2x2
pixels each), so the tiny preset decodes a latent in about 1 GMAC: ~30 ms on two CPU cores.

Streaming. The decoder is a pure function of (latents, cache). Each causal conv reads the last
k-1 frames of its input from the cache and hands back its own last k-1 frames, in call order, so
the cache is a flat tuple of fixed shapes and nothing lives on the module: one model serves many
streams, and the cache becomes graph inputs and outputs on export. An all-zero cache is exactly
the zero padding of a whole-sequence decode, so ``decode`` is the same code run over all latents.
Every latent decodes to 4 frames; the encoder saw frame 0 repeated in front of the video, so only
the last frame of latent 0's group is real and ``decode`` drops the first 3.

Hearing. A latent holds four frames, and 8 channels at 1/8 resolution cannot say where the
mouth is in each of them: on held-out clips the round trip kept 0.83 of the mouth's correlation
with the truth over all frames but 0.63 on speech frames, where the mouth moves inside a latent.
So once time is at full rate, the decoder also reads each frame's audio feature (the audio
encoder's, the same the DiT hears) through two zero-initialised adapters: a decoder without them
trained is the plain VAE, and the latent space, so the DiT, is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import VAEConfig


def _per_frame(fn: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any) -> torch.Tensor:
    """Apply a 4D op to every frame of x (B, T, C, H, W); 4D keeps torch's channels-last kernels."""
    return fn(x.flatten(0, 1), *args).unflatten(0, x.shape[:2])


class _CacheCursor:
    """Reads a flat decoder cache in call order and collects its replacement.

    Blocks take the cursor rather than indices, so adding a block cannot misnumber the tuple.
    """

    def __init__(self, past: Sequence[torch.Tensor]) -> None:
        self._past = iter(past)
        self.new: list[torch.Tensor] = []

    def extend(self, x: torch.Tensor, keep: int) -> torch.Tensor:
        """Prepend the cached ``keep`` frames to x (B, T, H, W, C); cache the result's last ``keep``."""
        x = torch.cat([next(self._past), x], dim=1)  # (B, keep + T, H, W, C)
        self.new.append(x[:, -keep:])
        return x


class VAERMSNorm(nn.Module):
    """RMS norm over channels at each frame and pixel, as Wan does.

    No statistic spans frames, so a frame never depends on later frames or on how a stream is
    chunked; GroupNorm over time would break both.
    """

    def __init__(self, channels: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Wan's F.normalize(x) * sqrt(C) * weight, written as one contiguous reduction over the
        # channels-last activations: F.rms_norm on CPU runs several strided passes, ~3x slower.
        x = x.movedim(-3, -1)  # (..., H, W, C)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(self.eps)  # (..., H, W, 1)
        x = (x * (self.weight * x.shape[-1] ** 0.5)).div_(norm)  # (..., H, W, C)
        return x.movedim(-1, -3)  # (..., C, H, W)


class CausalConv3d(nn.Module):
    """Conv with kernel (k, s, s) whose output frame t sees input frames t-k+1 .. t only.

    Runs as one 2D conv over the k frames stacked on channels, oldest first: a Conv3d weight
    (out, in, k, s, s) maps to ours by ``permute(0, 2, 1, 3, 4).flatten(1, 2)``. With k = 1 it is a
    plain per-frame 2D conv and owns no cache.
    """

    def __init__(
        self, in_channels: int, out_channels: int, temporal_kernel: int = 3, spatial_kernel: int = 3
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.temporal_kernel = temporal_kernel
        # Channels-last weights make every conv output channels-last, which keeps the RMS norm's
        # reduction over channels contiguous (about 3x faster on CPU than reducing a strided axis).
        self.conv = nn.Conv2d(
            temporal_kernel * in_channels, out_channels, spatial_kernel, padding=spatial_kernel // 2
        ).to(memory_format=torch.channels_last)

    def cached_inputs(self) -> list[tuple[int, int]]:
        """(frames kept, channels) for each cache entry this conv reads, in call order."""
        return [(self.temporal_kernel - 1, self.in_channels)] if self.temporal_kernel > 1 else []

    def forward(self, x: torch.Tensor, cache: _CacheCursor | None = None) -> torch.Tensor:
        B, T = x.shape[:2]
        k = self.temporal_kernel
        if k > 1:
            # 1. Go channels-last, the activations' memory order, so the cats below copy no layout.
            x = x.movedim(2, -1)  # (B, T, H, W, C)
            # 2. The past: cached frames when decoding, zeros when encoding a whole video.
            pad = (0, 0, 0, 0, 0, 0, k - 1, 0)
            x = cache.extend(x, k - 1) if cache is not None else F.pad(x, pad)  # (B, k-1+T, H, W, C)
            # 3. Each output frame's k input frames side by side on channels.
            x = torch.cat([x[:, i : i + T] for i in range(k)], dim=-1).movedim(-1, 2)  # (B, T, k*C, H, W)
        # 4. One 2D conv over all frames.
        return self.conv(x.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, C_out, H, W)


class VAEResBlock(nn.Module):
    """Pre-norm residual block (norm, SiLU, conv, twice); temporal_kernel 1 makes it per-frame."""

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int) -> None:
        super().__init__()
        self.norm1 = VAERMSNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, temporal_kernel)
        self.norm2 = VAERMSNorm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, temporal_kernel)
        self.shortcut = (
            CausalConv3d(in_channels, out_channels, 1, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cache: _CacheCursor | None = None) -> torch.Tensor:
        # 1. Two pre-norm convs, each reading its own cache entry (conv1's, then conv2's).
        h = self.conv1(F.silu(self.norm1(x)), cache)  # (B, T, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)), cache)  # (B, T, C_out, H, W)
        # 2. Residual, projected when the width changes.
        return self.shortcut(x) + h


class VAETemporalUpsample(nn.Module):
    """x2 frames: a causal (3, 1, 1) conv makes 2C channels, split into frames 2t and 2t+1.

    Runs at low resolution, where the extra frames are cheap.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, 2 * channels, temporal_kernel=3, spatial_kernel=1)

    def forward(self, x: torch.Tensor, cache: _CacheCursor | None = None) -> torch.Tensor:
        C = x.shape[2]
        # Interleave channels-last, so the one copy this takes lands in the layout the convs want.
        x = self.conv(x, cache).movedim(2, -1)  # (B, T, H, W, 2*C)
        x = x.unflatten(-1, (2, C)).movedim(-2, 2).flatten(1, 2)  # (B, 2T, H, W, C): frames 2t, 2t+1
        return x.movedim(-1, 2)  # (B, 2T, C, H, W)


class VAESpatialUpsample(nn.Module):
    """x2 height and width: a 1x1 conv to 4x channels, then pixel shuffle.

    The same as a stride-2 2x2 transposed conv, but 9x cheaper than nearest-upsample-then-3x3,
    and the res blocks after it do the spatial mixing.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(in_channels, 4 * out_channels, temporal_kernel=1, spatial_kernel=1)

    def forward(self, x: torch.Tensor, cache: _CacheCursor | None = None) -> torch.Tensor:
        return _per_frame(F.pixel_shuffle, self.conv(x, cache), 2)  # (B, T, C_out, 2H, 2W)


class VAEDownsample(nn.Module):
    """/2 height and width (and frames, if temporal): pixel unshuffle, then a 1x1 conv.

    Frame pairs (2t, 2t+1) fold onto channels, so output t sees nothing after frame 2t+1: causal.
    """

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        folded = 4 * channels * (2 if temporal else 1)
        self.conv = CausalConv3d(folded, channels, temporal_kernel=1, spatial_kernel=1)

    def forward(self, x: torch.Tensor, cache: _CacheCursor | None = None) -> torch.Tensor:
        T = x.shape[1]
        if self.temporal:
            x = x.unflatten(1, (T // 2, 2)).flatten(2, 3)  # (B, T/2, 2*C, H, W)
        x = _per_frame(F.pixel_unshuffle, x, 2)  # (B, T', 4*C', H/2, W/2)
        return self.conv(x, cache)  # (B, T', C, H/2, W/2)


def _levels(cfg: VAEConfig) -> tuple[int, int]:
    """(resolution levels, temporal x2 steps), rejecting geometry the VAE cannot build."""
    levels = len(cfg.channel_mults)
    steps = round(math.log2(cfg.temporal_factor))
    if 2 ** (levels - 1) != cfg.spatial_factor:
        raise ValueError(f"vae: {levels} channel_mults give {2 ** (levels - 1)}x, not spatial_factor")
    if 2**steps != cfg.temporal_factor or steps > levels - 1:
        raise ValueError("vae: temporal_factor must be a power of 2 and at most spatial_factor")
    if not 0 <= cfg.temporal_levels <= levels:
        raise ValueError("vae: temporal_levels must be between 0 and len(channel_mults)")
    return levels, steps


def colour_to_latent(frames: torch.Tensor, cfg: VAEConfig) -> torch.Tensor:
    """Frames (B, 4T, 3, H, W) -> each latent's mean colour, (B, T, C_lat, h, w), channels tiled.

    The residual shortcut of DC-AE (Chen et al. 2024), reduced to colour: the latent starts out
    as the block-mean colour of its frames and the convs learn only what differs. Without it a
    small VAE spends thousands of steps learning to carry flat colour through its bottleneck,
    which is most of what an identity is; with it colours are right from the first step.
    """
    B, F_, _, H, W = frames.shape
    tf, C = cfg.temporal_factor, cfg.latent_channels
    pooled = _per_frame(F.avg_pool2d, frames, cfg.spatial_factor)  # (B, 4T, 3, h, w)
    pooled = pooled.unflatten(1, (F_ // tf, tf)).mean(dim=2)  # (B, T, 3, h, w)
    return pooled.repeat(1, 1, -(-C // 3), 1, 1)[:, :, :C]


def latent_to_colour(latents: torch.Tensor, cfg: VAEConfig) -> torch.Tensor:
    """Latents (B, T, C_lat, h, w) -> the colour they carry, (B, 4T, 3, H, W): the mean of each
    colour's tiled channels, upsampled bilinearly and held over the latent's frames."""
    colour = torch.stack([latents[:, :, c::3].mean(dim=2) for c in range(3)], dim=2)[:, :, :, None]
    colour = colour.expand(-1, -1, -1, cfg.temporal_factor, -1, -1)  # (B, T, 3, 4, h, w)
    colour = colour.permute(0, 1, 3, 2, 4, 5).flatten(1, 2)  # (B, 4T, 3, h, w)
    return _per_frame(F.interpolate, colour, None, cfg.spatial_factor, "bilinear")


class VAEEncoder(nn.Module):
    """Frames (B, 4T, 3, H, W) -> moments (B, T, 2*C_lat, H/8, W/8), frames-major.

    Levels run from full resolution down; the last ``temporal_levels`` are causal 3D and the last
    log2(temporal_factor) downsamples also halve time.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        levels, steps = _levels(cfg)
        widths = [(cfg.encoder_channels or cfg.base_channels) * m for m in cfg.channel_mults]
        kernels = [3 if i >= levels - cfg.temporal_levels else 1 for i in range(levels)]
        self.conv_in = CausalConv3d(cfg.in_channels, widths[0], kernels[0])
        blocks: list[nn.Module] = []
        ch = widths[0]
        for i, (width, k) in enumerate(zip(widths, kernels, strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(VAEResBlock(ch, width, k))
                ch = width
            if i < levels - 1:
                blocks.append(VAEDownsample(ch, temporal=i >= levels - 1 - steps))
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = VAERMSNorm(ch)
        self.conv_out = CausalConv3d(ch, 2 * cfg.latent_channels, kernels[-1])
        self.cfg = cfg

    def cache_shapes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(frames, H, W, C) of every cache entry, in the order forward() reads them."""
        shapes = []
        for block in [self.conv_in, *self.blocks, self.conv_out]:
            convs = [m for m in block.modules() if isinstance(m, CausalConv3d)]  # registration = call order
            if isinstance(block, VAEDownsample):
                height, width = height // 2, width // 2
            shapes += [(k, height, width, c) for conv in convs for k, c in conv.cached_inputs()]
        return shapes

    def forward(self, x: torch.Tensor, cache: _CacheCursor | None = None) -> torch.Tensor:
        shortcut = colour_to_latent(x, self.cfg)  # (B, T, C_lat, h, w)
        # 1. Pixels to features.
        x = self.conv_in(x, cache)  # (B, 4T, C0, H, W)
        # 2. Res blocks per level; space halves at each level change, time at the lowest ones.
        for block in self.blocks:
            x = block(x, cache)  # (B, T', C, H', W')
        # 3. Mean and log-variance, stacked on channels; the mean rides on the colour shortcut.
        moments = self.conv_out(F.silu(self.norm_out(x)), cache)  # (B, T, 2*C_lat, h, w)
        C = self.cfg.latent_channels
        return torch.cat([moments[:, :, :C] + shortcut, moments[:, :, C:]], dim=2)


class DecoderAudioAdapter(nn.Module):
    """x + out(SiLU(conv(x) + proj(audio))): each pixel mixes what it shows with its frame's sound.

    Content and sound meet per pixel, so the adapter can act where the picture is a mouth and
    nowhere else; ``out`` starts at zero, so a fresh adapter is the identity.
    """

    def __init__(self, channels: int, audio_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.content = CausalConv3d(channels, hidden, temporal_kernel=1)
        self.sound = nn.Linear(audio_dim, hidden)
        self.out = CausalConv3d(hidden, channels, temporal_kernel=1, spatial_kernel=1)
        nn.init.zeros_(self.out.conv.weight)
        nn.init.zeros_(self.out.conv.bias)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """x (B, F, C, H, W), audio (B, F, Da) one feature per frame -> (B, F, C, H, W)."""
        h = self.content(x) + self.sound(audio)[..., None, None]  # (B, F, hidden, H, W)
        return x + self.out(F.silu(h))


class VAEDecoder(nn.Module):
    """Latents (B, T, C_lat, h, w) + cache -> frames (B, 4T, 3, 8h, 8w), frames-major.

    Frames are about [-1, 1] but unclamped: the colour shortcut is added after the last conv.

    Mirrors the encoder at half its width: levels run from the latent resolution up, the first
    ``temporal_levels`` are causal 3D, and the first log2(temporal_factor) levels double time.
    The full-resolution level is only the sub-pixel head, which keeps real time on a CPU.
    """

    def __init__(self, cfg: VAEConfig, audio_dim: int) -> None:
        super().__init__()
        levels, steps = _levels(cfg)
        # The full-resolution level is only the sub-pixel head, so the loop runs over the others.
        widths = [cfg.base_channels * m // 2 for m in reversed(cfg.channel_mults[1:])]
        kernels = [3 if j < cfg.temporal_levels else 1 for j in range(levels - 1)]
        self.conv_in = CausalConv3d(cfg.latent_channels, widths[0], kernels[0])
        blocks: list[nn.Module] = []
        ch = widths[0]
        channels_after: list[int] = []  # each block's output width
        for j, (width, k) in enumerate(zip(widths, kernels, strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(VAEResBlock(ch, width, k))
                ch = width
                channels_after.append(ch)
            if j < steps:
                blocks.append(VAETemporalUpsample(ch))
                channels_after.append(ch)
            if j < levels - 2:
                blocks.append(VAESpatialUpsample(ch, widths[j + 1]))
                ch = widths[j + 1]
                channels_after.append(ch)
        self.blocks = nn.ModuleList(blocks)
        # The audio adapters read the output of the block where time reaches full rate (the last
        # temporal upsample) and of the one after it.
        full_rate = max((i for i, b in enumerate(blocks) if isinstance(b, VAETemporalUpsample)), default=0)
        hearing = [i for i in (full_rate, full_rate + 1) if i < len(blocks)]
        self.hearing = {i: n for n, i in enumerate(hearing)}
        self.audio_adapters = nn.ModuleList(
            DecoderAudioAdapter(channels_after[i], audio_dim) for i in hearing
        )
        self.norm_out = VAERMSNorm(ch)
        self.conv_out = CausalConv3d(ch, 4 * cfg.in_channels, kernels[-1])
        self.cfg = cfg

    def cache_shapes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(frames, H, W, C) of every cache entry, in the order forward() reads them."""
        shapes = []
        for block in [self.conv_in, *self.blocks, self.conv_out]:
            convs = [m for m in block.modules() if isinstance(m, CausalConv3d)]  # registration = call order
            shapes += [(k, height, width, c) for conv in convs for k, c in conv.cached_inputs()]
            if isinstance(block, VAESpatialUpsample):
                height, width = 2 * height, 2 * width
        return shapes

    def forward(self, x: torch.Tensor, cache: _CacheCursor, audio: torch.Tensor) -> torch.Tensor:
        """x (B, T, C_lat, h, w), audio (B, 4T, Da) one feature per output frame."""
        shortcut = latent_to_colour(x, self.cfg)  # (B, 4T, 3, H, W)
        # 1. Latents to features.
        x = self.conv_in(x, cache)  # (B, T, C0, h, w)
        # 2. Res blocks per level; time doubles at the lowest levels, space at each level change;
        #    once time is at full rate each frame also hears its audio.
        for i, block in enumerate(self.blocks):
            x = block(x, cache)  # (B, T', C, H', W')
            if i in self.hearing:
                x = self.audio_adapters[self.hearing[i]](x, audio)
        # 3. Sub-pixel head: each pixel of the 2x2 block gets its own kernel, so no checkerboard.
        x = self.conv_out(F.silu(self.norm_out(x)), cache)  # (B, 4T, 4*3, H/2, W/2)
        # 4. Detail on top of the latent's own colour (consumers clamp to [-1, 1]).
        return _per_frame(F.pixel_shuffle, x, 2) + shortcut  # (B, 4T, 3, H, W)


class CausalVAE(nn.Module):
    """Causal video VAE: ``encode`` for whole clips, ``decode_step`` for live streams.

    Latent t depends on frames [0, 1 + 4t) only, and the frames of latent t's group depend on
    latents [0, t] only, so a stream can be decoded as its latents arrive.
    """

    def __init__(self, cfg: VAEConfig, audio_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_dim = audio_dim
        self.encoder = VAEEncoder(cfg)
        self.decoder = VAEDecoder(cfg, audio_dim)

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (B, 3, 1 + 4(T-1), H, W) in [-1, 1] -> (mean, logvar), each (B, C, T, H/8, W/8)."""
        tf = self.cfg.temporal_factor
        if (frames.shape[2] - 1) % tf:
            raise ValueError(f"vae.encode: need 1 + {tf}k frames, got {frames.shape[2]}")
        # 1. Repeat frame 0 in front so every latent covers tf frames; latent 0 sees a still of frame 0.
        x = torch.cat([frames[:, :, :1].expand(-1, -1, tf - 1, -1, -1), frames], dim=2)  # (B, 3, 4T, H, W)
        # 2. Encode frames-major.
        moments = self.encoder(x.transpose(1, 2)).transpose(1, 2)  # (B, 2*C, T, h, w)
        mean, logvar = moments.chunk(2, dim=1)  # (B, C, T, h, w) each
        return mean, logvar

    def encode_step(
        self, frames: torch.Tensor, cache: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Frames (B, 3, 4, H, W) + cache -> (mean (B, C, 1, h, w), next cache): a stream encoded a
        latent at a time, as ``decode_step`` decodes one. The first group of a stream is frame 0
        repeated 4 times (what ``encode`` prepends), so stepping through a clip from the zero cache
        gives ``encode``'s latents, and a stream can start anywhere, e.g. inside a looped video."""
        expected = len(self.encoder.cache_shapes(1, 1))
        if len(cache) != expected:
            raise ValueError(f"vae.encode_step: cache has {len(cache)} tensors, expected {expected}")
        cursor = _CacheCursor(cache)
        moments = self.encoder(frames.transpose(1, 2), cursor).transpose(1, 2)  # (B, 2*C, T, h, w)
        return moments.chunk(2, dim=1)[0], tuple(cursor.new)

    def encoder_cache(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The all-zero cache an encoded stream starts from (entries as in ``decoder_cache``)."""
        return self._zeros(self.encoder.cache_shapes(height, width), batch, device, dtype)

    def decoder_cache(
        self,
        batch: int,
        latent_height: int,
        latent_width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The all-zero cache a stream starts from: the zero padding a whole decode sees.

        Entry i is (B, k-1, H, W, C): the last k-1 input frames of the i-th causal conv in call
        order, channels-last like the activations.
        """
        return self._zeros(self.decoder.cache_shapes(latent_height, latent_width), batch, device, dtype)

    def _zeros(
        self,
        shapes: list[tuple[int, int, int, int]],
        batch: int,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> tuple[torch.Tensor, ...]:
        param = next(self.parameters())
        device = param.device if device is None else device
        dtype = param.dtype if dtype is None else dtype
        return tuple(torch.zeros(batch, *shape, device=device, dtype=dtype) for shape in shapes)

    def silence(self, latent: torch.Tensor) -> torch.Tensor:
        """The audio input of frames with no sound to hear (zeros), for ``latent`` (B, C, T, h, w)."""
        B, _, T = latent.shape[:3]
        return latent.new_zeros(B, self.cfg.temporal_factor * T, self.audio_dim)

    def decode_step(
        self, latent: torch.Tensor, cache: tuple[torch.Tensor, ...], audio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Latent (B, C, 1, h, w) + cache + audio (B, 4, Da) -> (frames (B, 3, 4, H, W), next cache).

        A pure function: the caller owns the cache. T > 1 latents at once also work and give 4T
        frames, which is how ``decode`` runs. No audio is silence (zeros).
        """
        expected = len(self.decoder.cache_shapes(1, 1))
        if len(cache) != expected:
            raise ValueError(f"vae.decode_step: cache has {len(cache)} tensors, expected {expected}")
        audio = self.silence(latent) if audio is None else audio
        if audio.shape[1] != self.cfg.temporal_factor * latent.shape[2]:
            raise ValueError(f"vae.decode_step: need one audio feature per frame, got {audio.shape[1]}")
        cursor = _CacheCursor(cache)
        frames = self.decoder(latent.transpose(1, 2), cursor, audio)  # (B, 4T, 3, H, W)
        return frames.transpose(1, 2), tuple(cursor.new)  # (B, 3, 4T, H, W)

    def decode(self, latents: torch.Tensor, audio: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, C, T, h, w) (+ audio (B, 4T, Da)) -> frames (B, 3, 1 + 4(T-1), H, W)."""
        B, _, _, h, w = latents.shape
        cache = self.decoder_cache(B, h, w, latents.device, latents.dtype)
        frames, _ = self.decode_step(latents, cache, audio)
        # Latent 0's group is frame 0 preceded by the encoder's 3 repeats of it.
        return frames[:, :, self.cfg.temporal_factor - 1 :]
