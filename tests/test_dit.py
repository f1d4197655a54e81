"""WanDiT and its attention/RoPE leaves: shapes, Wan parity, and the mechanisms the engine relies on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.config import get_preset
from engine.models.attention import apply_rope, attention, attention_backend, get_attention_backend, rope_3d
from engine.models.dit import WAN_ADDED_PREFIXES, WanAudioAttention, WanDiT, count_parameters, unpatchify

T, H, W, N_AUDIO, L_TEXT = 2, 16, 16, 8, 32


def _tiny_model() -> WanDiT:
    """Tiny DiT with a non-zero head: Wan's zero head would make every output comparison vacuous."""
    torch.manual_seed(0)
    model = WanDiT(get_preset("tiny").dit).eval()
    nn.init.normal_(model.head.head.weight, std=0.02)
    return model


def _inputs(model: WanDiT, batch: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    C = cfg.latent_channels
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, C, T, H, W, generator=g),
        "timestep": torch.rand(batch, generator=g) * 1000,
        "cond": torch.randn(batch, 2 * C + 1, T, H, W, generator=g),
        "audio": torch.randn(batch, T, N_AUDIO, cfg.audio_dim, generator=g),
        "text": torch.randn(batch, L_TEXT, cfg.text_dim, generator=g),
        "camera": torch.zeros(batch, C, T, H, W),
        "attributes": torch.zeros(batch, cfg.num_attributes),
    }


def test_tiny_forward_shape_and_batch_independence() -> None:
    model = _tiny_model()
    inputs = _inputs(model, batch=2)
    with torch.inference_mode():
        out = model(**inputs)
        # Each sample alone must give its batched result: catches reshapes that mix the batch.
        alone = model(**{k: v[1:] for k, v in inputs.items()})
    assert out.shape == (2, 8, T, H, W)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.abs().mean() > 0
    torch.testing.assert_close(out[1:], alone, atol=1e-5, rtol=1e-4)


def test_unpatchify_matches_wan_layout() -> None:
    grid, patch, C = (2, 3, 4), (1, 2, 2), 5
    x = torch.randn(2, 2 * 3 * 4, 1 * 2 * 2 * C)
    # Wan2.1's unpatchify, per sample.
    expected = torch.stack(
        [torch.einsum("fhwpqrc->cfphqwr", u.view(*grid, *patch, C)).reshape(C, 2, 6, 8) for u in x]
    )
    assert torch.equal(unpatchify(x, grid, patch), expected)


@pytest.mark.parametrize(("preset", "official"), [("wan-1.3b", 1_418_996_800), ("wan-14b", 14_288_491_584)])
def test_wan_trunk_matches_official_parameter_count(preset: str, official: int) -> None:
    cfg = get_preset(preset).dit
    with torch.device("meta"):
        model = WanDiT(cfg)
    trunk = count_parameters(model, exclude=WAN_ADDED_PREFIXES)
    assert abs(trunk - official) / official < 0.01
    # Exact once the patch embedding is given Wan T2V's 16 input channels instead of our 3C+1.
    extra_patch_inputs = (cfg.in_channels - 16) * cfg.dim * 4
    assert trunk - extra_patch_inputs == official
    # The added paths exist and are what the exclusion removed.
    assert count_parameters(model) > trunk


def test_reserved_camera_and_attribute_inputs_are_noops_at_init() -> None:
    model = _tiny_model()
    zeros = _inputs(model)
    g = torch.Generator().manual_seed(5)
    rand = dict(zeros, camera=torch.randn(zeros["camera"].shape, generator=g))
    rand["attributes"] = torch.randn(zeros["attributes"].shape, generator=g)
    with torch.inference_mode():
        assert torch.equal(model(**zeros), model(**rand))
        # Control: once the camera path has weights, the same comparison does see it...
        for projection in model.camera_projections:
            nn.init.normal_(projection.weight, std=0.02)
        assert not torch.allclose(model(**zeros), model(**rand))
        # ...while a zero camera input still adds exactly nothing: static stays the base model.
        with_branch = model(**zeros)
        for projection in model.camera_projections:
            nn.init.zeros_(projection.weight)
        assert torch.equal(with_branch, model(**zeros))


def test_audio_attention_is_local_to_its_latent_frame() -> None:
    torch.manual_seed(0)
    frames, hw, n, dim = 3, 4, 5, 32
    module = WanAudioAttention(dim, num_heads=4, eps=1e-6).eval()
    x = torch.randn(1, frames * hw, dim)
    audio = torch.randn(1, frames, n, dim)
    changed = audio.clone()
    changed[:, 1] = torch.randn(n, dim)
    with torch.inference_mode():
        diff = (module(x, audio) - module(x, changed)).abs().amax(dim=-1).reshape(frames, hw)
    assert (diff[1] > 1e-4).all()
    assert torch.equal(diff[0], torch.zeros(hw)) and torch.equal(diff[2], torch.zeros(hw))


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_math_attention_matches_sdpa(mask_kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 24, 16, generator=g) for _ in range(3))
    mask = {
        "none": None,
        "bool": torch.rand(24, 24, generator=g) > 0.3,
        "float": torch.randn(2, 1, 24, 24, generator=g),
    }[mask_kind]
    if mask is not None and mask.dtype == torch.bool:
        mask[:, 0] = True  # every query keeps one key, or both paths return NaN rows
    expected = attention(q, k, v, mask)
    with attention_backend("math"):
        assert get_attention_backend() == "math"
        got = attention(q, k, v, mask)
    assert get_attention_backend() == "sdpa"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_model_math_attention_matches_sdpa() -> None:
    model = _tiny_model()
    inputs = _inputs(model)
    with torch.inference_mode():
        expected = model(**inputs)
        with attention_backend("math"):
            got = model(**inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def _wan_rope_reference(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Wan2.1's complex ``rope_apply`` for one sample, x (L, heads, d); the convention checkpoints expect."""
    f, h, w = grid
    d = x.shape[-1]
    c = d // 2

    def params(n: int, dim: int) -> torch.Tensor:
        angles = torch.outer(torch.arange(n), 1.0 / torch.pow(10000, torch.arange(0, dim, 2).double() / dim))
        return torch.polar(torch.ones_like(angles), angles)

    freqs = torch.cat([params(64, d - 4 * (d // 6)), params(64, 2 * (d // 6)), params(64, 2 * (d // 6))], 1)
    ft, fh, fw = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    grid_freqs = torch.cat(
        [
            ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.double().reshape(f * h * w, x.shape[1], -1, 2))
    return torch.view_as_real(xc * grid_freqs).flatten(2).float()


def test_rope_matches_wan_complex_reference() -> None:
    grid, heads, d = (3, 4, 5), 2, 64
    x = torch.randn(grid[0] * grid[1] * grid[2], heads, d)  # (L, heads, d) as Wan holds it
    cos, sin = rope_3d(*grid, d)
    ours = apply_rope(x.transpose(0, 1)[None], cos, sin)  # (1, heads, L, d)
    assert ours.dtype == torch.float32 and not torch.is_complex(ours)
    torch.testing.assert_close(ours[0].transpose(0, 1), _wan_rope_reference(x, grid), atol=1e-5, rtol=1e-5)


def test_rope_preserves_pair_norms_and_depends_only_on_relative_position() -> None:
    grid, d = (3, 4, 5), 48
    cos, sin = rope_3d(*grid, d)
    L = cos.shape[0]
    g = torch.Generator().manual_seed(0)
    # The same q and k at every position, so any change in q.k comes from RoPE alone.
    q = torch.randn(d, generator=g).expand(1, 1, L, d)
    k = torch.randn(d, generator=g).expand(1, 1, L, d)
    q_rot, k_rot = apply_rope(q, cos, sin)[0, 0], apply_rope(k, cos, sin)[0, 0]  # (L, d)

    def pair_norms(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (-1, 2)).norm(dim=-1)

    torch.testing.assert_close(pair_norms(q_rot), pair_norms(q[0, 0]))

    scores = q_rot @ k_rot.T  # (L, L)
    pos = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1).reshape(L, 3)
    rel = (pos[:, None, :] - pos[None, :, :]).reshape(L * L, 3)
    by_offset: dict[tuple[int, ...], list[float]] = {}
    for offset, score in zip(rel.tolist(), scores.flatten().tolist(), strict=True):
        by_offset.setdefault(tuple(offset), []).append(score)
    spread = max(max(v) - min(v) for v in by_offset.values())
    assert spread < 1e-4
    # Control: different offsets do give different scores, so RoPE is not an identity.
    firsts = torch.tensor([v[0] for v in by_offset.values()])
    assert firsts.std() > 1e-2
