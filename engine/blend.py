"""Seam control: the overlap blend between windows and per-window colour matching."""

from __future__ import annotations

import math

import torch

from engine.config import BlendMode


def blend_weights(mode: BlendMode, overlap: int) -> torch.Tensor:
    """Weights ``a_j`` of the new window over the ``overlap`` shared latents, rising in j.

    ``none`` takes the new window outright, which is only there to measure what blending buys.
    """
    j = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
    if mode == "linear":
        return j
    if mode == "cosine":
        return 0.5 * (1.0 - torch.cos(math.pi * j))
    if mode == "none":
        return torch.ones(overlap)
    raise ValueError(f"blend must be linear, cosine or none, got {mode!r}")


def blend_overlap(previous: torch.Tensor, new: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(1 - a_j) * previous + a_j * new`` over latents (B, C, O, h, w): hands over old -> new."""
    a = weights.to(new.dtype).view(1, 1, -1, 1, 1)
    return (1.0 - a) * previous + a * new


# --- colour matching in CIE Lab ------------------------------------------------------------------
_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels last (..., 3) -> CIE Lab (D65)."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    fy = (lab[..., 0] + 16) / 116
    f = torch.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = torch.where(f > 0.206893, f**3, (f - 16 / 116) / 7.787) * _WHITE
    linear = (xyz @ torch.linalg.inv(_RGB_TO_XYZ).T).clamp(0, 1)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055).clamp(0, 1)


def lab_stats(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of an image's Lab values; the reference for colour matching."""
    lab = rgb_to_lab(rgb).reshape(-1, 3)
    return lab.mean(0), lab.std(0).clamp_min(1e-3)


def color_match(frames: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Match a window's Lab mean/std to the reference's, which stops slow colour drift.

    ``frames`` (N, H, W, 3) in [0, 1]; statistics are taken over the whole window so that
    frame-to-frame changes inside it are kept.
    """
    mean, std = lab_stats(frames)
    ref_mean, ref_std = reference
    lab = (rgb_to_lab(frames) - mean) / std * ref_std + ref_mean
    return lab_to_rgb(lab)
