"""Attention and 3D RoPE, chosen in one place so every model exports the same way.

Fused SDPA is the default because it is the fastest path on every device we run. ONNX and
TensorRT exporters trace it into an opaque or version-dependent op, so export switches to the
"math" path: plain matmul/softmax/matmul that every runtime understands.

RoPE follows Wan2.1 (interleaved channel pairs, head_dim split into time/height/width parts) so
real checkpoints see the rotations they were trained with, but it is written with real cos/sin
only: complex tensors do not export.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

AttentionBackend = Literal["sdpa", "math"]

# A ContextVar rather than a module global: an export running in one thread or task must not
# switch the backend under a live session running in another.
_BACKEND: contextvars.ContextVar[AttentionBackend] = contextvars.ContextVar(
    "attention_backend", default="sdpa"
)


def get_attention_backend() -> AttentionBackend:
    """The backend ``attention`` uses in the current context."""
    return _BACKEND.get()


@contextlib.contextmanager
def attention_backend(name: AttentionBackend) -> Iterator[None]:
    """Use ``name`` for every ``attention`` call inside the block, e.g. ``"math"`` while exporting."""
    if name not in ("sdpa", "math"):
        raise ValueError(f"unknown attention backend {name!r}; choose 'sdpa' or 'math'")
    token = _BACKEND.set(name)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v on (B, heads, L, d) tensors.

    ``mask`` follows SDPA: boolean (True = may attend) or additive float, broadcastable to
    (B, heads, Lq, Lk).
    """
    if _BACKEND.get() == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # Scale q before the matmul rather than the scores after it, so fp16 engines do not
    # overflow on long sequences.
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, heads, Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(dim=-1) @ v  # (B, heads, Lq, d)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of head_dim into (time, height, width) channels; height and width get equal shares."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    d_hw = 2 * (head_dim // 6)
    return head_dim - 2 * d_hw, d_hw, d_hw


def _rope_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """(len(positions), dim/2) angles, one frequency per channel pair as in Wan's ``rope_params``."""
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(positions.to(torch.float64), freqs)


def rope_3d(
    T: int, H: int, W: int, head_dim: int, theta: float = 10_000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (T*H*W, head_dim/2), for tokens laid out (t, h, w) on a T x H x W grid.

    Positions start at 0 for the given grid, so callers get window-relative positions. Angles are
    computed in float64 (as Wan does) and only the cos/sin are rounded to float32.
    """
    d_t, d_h, d_w = rope_split(head_dim)
    a_t = _rope_angles(torch.arange(T), d_t, theta)  # (T, d_t/2)
    a_h = _rope_angles(torch.arange(H), d_h, theta)  # (H, d_h/2)
    a_w = _rope_angles(torch.arange(W), d_w, theta)  # (W, d_w/2)
    angles = torch.cat(
        [
            a_t[:, None, None, :].expand(T, H, W, -1),
            a_h[None, :, None, :].expand(T, H, W, -1),
            a_w[None, None, :, :].expand(T, H, W, -1),
        ],
        dim=-1,
    ).reshape(T * H * W, head_dim // 2)  # (T*H*W, head_dim/2)
    return angles.cos().to(device=device, dtype=torch.float32), angles.sin().to(
        device=device, dtype=torch.float32
    )


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent channel pair (2i, 2i+1) of x (B, heads, L, d) by the angle whose cos/sin
    (L, d/2) are given; the same pairing as Wan's complex view, written with real ops."""
    pairs = x.unflatten(-1, (-1, 2))  # (B, heads, L, d/2, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]  # (B, heads, L, d/2)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, heads, L, d/2, 2)
    return rotated.flatten(-2)  # (B, heads, L, d)
