"""CausalVAE mechanisms on the tiny preset at 32x32 (4x4 latents reach every level): shapes,
streaming equals whole, causality both ways, no state on the module, and the Wan size building
on the meta device."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.config import VAEConfig, get_preset
from engine.models.vae import CausalConv3d, CausalVAE

SIZE = 32
LATENT = SIZE // 8


@pytest.fixture(scope="module")
def vae() -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(get_preset("tiny").vae, get_preset("tiny").audio.dim).eval()


def _latents(vae: CausalVAE, T: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vae.cfg.latent_channels, T, LATENT, LATENT, generator=gen)


def _frames(T: int, batch: int = 1, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 1 + 4 * (T - 1), SIZE, SIZE, generator=gen) * 2 - 1


def _stream(vae: CausalVAE, latents: torch.Tensor) -> torch.Tensor:
    """decode_step over every latent from the zero cache, dropping latent 0's 3 lead-in frames."""
    B, _, T, h, w = latents.shape
    cache = vae.decoder_cache(B, h, w)
    groups = []
    for t in range(T):
        frames, cache = vae.decode_step(latents[:, :, t : t + 1], cache)
        groups.append(frames)
    return torch.cat(groups, dim=2)[:, :, 3:]


@pytest.mark.parametrize("T", [1, 3])
@torch.no_grad()
def test_shapes(vae: CausalVAE, T: int) -> None:
    frames = _frames(T, batch=2)
    mean, logvar = vae.encode(frames)
    assert mean.shape == logvar.shape == (2, 8, T, LATENT, LATENT)
    decoded = vae.decode(mean)
    assert decoded.shape == frames.shape
    assert torch.isfinite(decoded).all()  # unbounded: colour shortcut + detail; consumers clamp
    step, _ = vae.decode_step(mean[:, :, :1], vae.decoder_cache(2, LATENT, LATENT))
    assert step.shape == (2, 3, 4, SIZE, SIZE)


@torch.no_grad()
def test_streaming_equals_whole(vae: CausalVAE) -> None:
    latents = _latents(vae, T=4, batch=2)
    start = vae.decoder_cache(2, LATENT, LATENT)
    _, after = vae.decode_step(latents[:, :, :1], start)
    # Fixed shapes are what lets the cache be graph inputs and outputs.
    assert [c.shape for c in after] == [c.shape for c in start]
    torch.testing.assert_close(_stream(vae, latents), vae.decode(latents), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [1, 2])
@torch.no_grad()
def test_decode_is_causal(vae: CausalVAE, t: int) -> None:
    latents = _latents(vae, T=4)
    bumped = latents.clone()
    bumped[:, :, t] += 1.0
    before, after = vae.decode(latents), vae.decode(bumped)
    first = 1 + 4 * (t - 1)  # latent t's group is frames [first, first + 4)
    torch.testing.assert_close(after[:, :, :first], before[:, :, :first], atol=0, rtol=0)
    assert not torch.allclose(after[:, :, first : first + 4], before[:, :, first : first + 4])


@pytest.mark.parametrize("f", [0, 1, 5])
@torch.no_grad()
def test_encode_is_causal(vae: CausalVAE, f: int) -> None:
    frames = _frames(T=3)
    bumped = frames.clone()
    bumped[:, :, f] = -bumped[:, :, f]
    before, _ = vae.encode(frames)
    after, _ = vae.encode(bumped)
    first = 0 if f == 0 else (f - 1) // 4 + 1  # the first latent whose frames [0, 1 + 4t) include f
    torch.testing.assert_close(after[:, :, :first], before[:, :, :first], atol=0, rtol=0)
    assert not torch.allclose(after[:, :, first], before[:, :, first])


@torch.no_grad()
def test_interleaved_streams_match_alone(vae: CausalVAE) -> None:
    a, b = _latents(vae, T=3, seed=3), _latents(vae, T=3, seed=4)
    alone_a, alone_b = _stream(vae, a), _stream(vae, b)
    cache_a = cache_b = vae.decoder_cache(1, LATENT, LATENT)
    out_a, out_b = [], []
    for t in range(3):
        frames, cache_a = vae.decode_step(a[:, :, t : t + 1], cache_a)
        out_a.append(frames)
        frames, cache_b = vae.decode_step(b[:, :, t : t + 1], cache_b)
        out_b.append(frames)
    assert not torch.allclose(alone_a, alone_b)
    torch.testing.assert_close(torch.cat(out_a, dim=2)[:, :, 3:], alone_a, atol=0, rtol=0)
    torch.testing.assert_close(torch.cat(out_b, dim=2)[:, :, 3:], alone_b, atol=0, rtol=0)


def test_causal_conv_is_a_padded_conv3d() -> None:
    torch.manual_seed(0)
    conv = CausalConv3d(4, 5, temporal_kernel=3)
    weight3d = torch.randn(5, 4, 3, 3, 3)
    with torch.no_grad():
        conv.conv.weight.copy_(weight3d.permute(0, 2, 1, 3, 4).flatten(1, 2))
    x = torch.randn(2, 4, 6, 8, 8)  # (B, C, T, H, W)
    expected = F.conv3d(F.pad(x, (1, 1, 1, 1, 2, 0)), weight3d, conv.conv.bias)
    got = conv(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rejects_bad_inputs(vae: CausalVAE) -> None:
    with pytest.raises(ValueError, match="frames"):
        vae.encode(torch.zeros(1, 3, 4, SIZE, SIZE))
    with pytest.raises(ValueError, match="cache"):
        vae.decode_step(_latents(vae, T=1), vae.decoder_cache(1, LATENT, LATENT)[1:])


def test_wan_size_builds_on_meta() -> None:
    cfg = VAEConfig(latent_channels=16, base_channels=96, channel_mults=(1, 2, 4, 4), num_res_blocks=2)
    with torch.device("meta"):
        vae = CausalVAE(cfg, audio_dim=1024)
        latent = torch.empty(1, 16, 1, 60, 104)
    assert all(p.is_meta for p in vae.parameters())
    frames, cache = vae.decode_step(latent, vae.decoder_cache(1, 60, 104))
    assert frames.shape == (1, 3, 4, 480, 832)
    assert all(c.is_meta for c in cache)


@torch.no_grad()
def test_each_frame_hears_its_own_audio_and_silence_is_a_fresh_decoder(vae: CausalVAE) -> None:
    latents, D = _latents(vae, T=3), vae.audio_dim
    audio = torch.randn(1, 12, D, generator=torch.Generator().manual_seed(4))
    # Fresh adapters are the identity: any audio decodes as silence does.
    silent, _ = vae.decode_step(latents, _zero_cache(vae))
    assert torch.equal(vae.decode_step(latents, _zero_cache(vae), audio)[0], silent)
    hearing, gen = copy.deepcopy(vae), torch.Generator().manual_seed(5)
    for p in hearing.decoder.audio_adapters.parameters():
        p.normal_(0.0, 0.05, generator=gen)
    whole, _ = hearing.decode_step(latents, _zero_cache(vae), audio)
    cache, chunks = _zero_cache(vae), []
    for t in range(3):
        chunk, cache = hearing.decode_step(latents[:, :, t : t + 1], cache, audio[:, 4 * t : 4 * t + 4])
        chunks.append(chunk)
    torch.testing.assert_close(torch.cat(chunks, dim=2), whole, atol=1e-5, rtol=1e-5)
    bumped = audio.clone()
    bumped[:, 6] += 1.0
    changed = (hearing.decode_step(latents, _zero_cache(vae), bumped)[0] - whole).abs().amax(dim=(0, 1, 3, 4))
    assert changed[6] > 1e-3 and torch.all(torch.cat([changed[:6], changed[7:]]) == 0)
    with pytest.raises(ValueError, match="one audio feature per frame"):
        hearing.decode_step(latents, _zero_cache(vae), audio[:, :8])


def _zero_cache(vae: CausalVAE) -> tuple[torch.Tensor, ...]:
    return vae.decoder_cache(1, LATENT, LATENT)
