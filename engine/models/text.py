"""Text encoders: prompts -> (B, L, D) embeddings for the DiT's text cross-attention.

``TextEncoder`` is the whole contract, so a real encoder (umT5 through transformers, loaded from
local weights) can replace the built-in one without touching the DiT or the scheduler. The
built-in ``ByteTextEncoder`` needs no tokenizer files or downloads: it reads UTF-8 bytes, which is
enough for tiny models and tests.

Like Wan's umT5 context, the output is padded to ``max_tokens`` with zeros at padding positions,
so the DiT can attend to the whole sequence without a mask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from engine.config import TextConfig
from engine.models.attention import attention

PAD_ID = 0
# Byte b is token b + 1, so a 0x00 byte in a prompt is never mistaken for padding.
_BYTE_OFFSET = 1


class TextEncoder(ABC):
    """Prompts in, (B, max_tokens, dim) embeddings out; ``dim`` must match the DiT's text_dim."""

    dim: int
    max_tokens: int

    @abstractmethod
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), max_tokens, dim) float32, zero at padding positions."""


class TextBlock(nn.Module):
    """Pre-norm transformer encoder layer (batch first).

    Attention goes through ``engine.models.attention`` so an export switches this layer to the
    math path along with every other model.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim)
        )

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), keep (B, 1, 1, L) True where a key may be attended -> (B, L, D)."""
        B, L, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, L, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, heads, L, d)
        h = attention(q, k, v, keep).transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        x = x + self.proj(h)
        return x + self.ffn(self.norm2(x))


class ByteTextEncoder(nn.Module, TextEncoder):
    """UTF-8 bytes -> token + learned position embeddings -> ``num_layers`` TextBlocks.

    Vocabulary: ``vocab_size`` byte values plus the pad id 0, so the table has vocab_size + 1 rows
    and vocab_size must cover all 256 byte values. Prompts longer than ``max_tokens`` bytes are
    truncated (possibly mid-character: the model sees bytes, not characters).
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 256:
            raise ValueError(f"ByteTextEncoder needs vocab_size >= 256 (one per byte), got {cfg.vocab_size}")
        if cfg.dim % cfg.num_heads:
            raise ValueError(f"text dim {cfg.dim} must divide by num_heads {cfg.num_heads}")
        self.dim = cfg.dim
        self.max_tokens = cfg.max_tokens
        self.token_embedding = nn.Embedding(cfg.vocab_size + _BYTE_OFFSET, cfg.dim, padding_idx=PAD_ID)
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.max_tokens, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(TextBlock(cfg.dim, cfg.num_heads) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(cfg.dim)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(B, max_tokens) int64 ids: bytes + 1, truncated, padded with PAD_ID."""
        ids = torch.full((len(prompts), self.max_tokens), PAD_ID, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            data = prompt.encode("utf-8")[: self.max_tokens]
            if data:
                ids[i, : len(data)] = torch.tensor(list(data), dtype=torch.long) + _BYTE_OFFSET
        return ids.to(self.pos_embedding.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, max_tokens) -> embeddings (B, max_tokens, dim), zero at padding positions."""
        pad = ids == PAD_ID  # (B, L)
        # Position 0 always stays attendable: an empty prompt would otherwise mask every key, and
        # softmax over no keys is NaN. Its output is then a fixed "no prompt" embedding.
        pad[:, 0] = False
        keep = ~pad[:, None, None, :]  # (B, 1, 1, L)
        x = self.token_embedding(ids) + self.pos_embedding  # (B, L, D)
        for block in self.blocks:
            x = block(x, keep)
        return self.norm_out(x).masked_fill(pad[..., None], 0.0)  # (B, L, D)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.tokenize(prompts))
