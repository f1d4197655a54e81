"""Wan2.1-layout diffusion transformer with per-latent-frame audio cross-attention.

Module and parameter names follow the native Wan2.1 ``WanModel`` (``patch_embedding``,
``blocks.N.self_attn.q``, ``head.modulation``...) so public checkpoints key-map onto the trunk.
What Wan does not have is named with a prefix from ``WAN_ADDED_PREFIXES``: the audio path
(``audio_embedding``, ``blocks.N.audio_attn``), the ControlNet-style camera branch
(``camera_embedding`` + one zero-initialised ``camera_projections.N`` into each block) and the
reserved, zero-initialised attribute input: later features fine-tune them instead of retraining.

Shapes: B batch, C latent channels, T latent frames, h/w latent size; after patchifying, the
token grid is T' x h' x w' with L = T'*h'*w' tokens laid out (t, h, w), D = cfg.dim.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.config import DiTConfig
from engine.models.attention import apply_rope, attention, rope_3d

# Name prefixes of parameters a Wan2.1 checkpoint does not have: new on load, excluded from
# trunk counts.
WAN_ADDED_PREFIXES = ("audio_", "camera_", "attribute_")

Rope = tuple[torch.Tensor, torch.Tensor]


def sinusoidal_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) timesteps in [0, 1000] -> (B, dim) as Wan's ``sinusoidal_embedding_1d`` (cos then sin).

    Float32 rather than Wan's float64: TensorRT has no float64, and the difference is below
    what the time MLP can resolve.
    """
    half = dim // 2
    freqs = torch.pow(10_000.0, -torch.arange(half, device=timestep.device, dtype=torch.float32) / half)
    angles = timestep.float()[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=1)  # (B, dim)


def count_parameters(model: nn.Module, exclude: tuple[str, ...] = ()) -> int:
    """Parameters of ``model``, leaving out any whose dotted name has a part starting with a prefix
    in ``exclude``; ``exclude=WAN_ADDED_PREFIXES`` counts the Wan2.1 trunk alone."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not any(part.startswith(prefix) for part in name.split(".") for prefix in exclude)
    )


def unpatchify(x: torch.Tensor, grid: tuple[int, int, int], patch_size: tuple[int, int, int]) -> torch.Tensor:
    """(B, T'*h'*w', pt*ph*pw*C) head output -> (B, C, T'*pt, h'*ph, w'*pw).

    Channels are last within a patch, as Wan's head lays them out; a checkpoint's head only
    means what it was trained to mean with this order.
    """
    (Tp, hp, wp), (pt, ph, pw) = grid, patch_size
    B = x.shape[0]
    x = x.reshape(B, Tp, hp, wp, pt, ph, pw, -1)  # (B, T', h', w', pt, ph, pw, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', pt, h', ph, w', pw)
    return x.reshape(B, -1, Tp * pt, hp * ph, wp * pw)


class WanAttention(nn.Module):
    """Multi-head attention with Wan's qk-norm (RMSNorm over the full dim, before the head split).

    One class serves self-attention (``context`` is ``x``, RoPE given) and cross-attention (text
    or audio context, no RoPE): the parameters are the same and so are Wan's names for them.
    """

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        """x (B, L, D) attends to context (B, S, D) -> (B, L, D)."""
        # 1. project, qk-norm, and split heads
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        v = self.v(context).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        # q (B, heads, L, d); k, v (B, heads, S, d)

        # 2. rotate positions into q and k (self-attention only)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        # 3. attend and merge heads
        out = attention(q, k, v).transpose(1, 2).flatten(2)  # (B, L, D)
        return self.o(out)


class WanAudioAttention(WanAttention):
    """Per-latent-frame audio cross-attention: the tokens of frame t see only frame t's audio.

    Locality comes from folding frames into the batch, (B*T, h'*w') queries against (B*T, N)
    keys, rather than from a (L, T*N) block mask: no mask to build, store or export, and the cost
    is T times smaller. Carries its own pre-norm so the whole audio path is one module.
    """

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__(dim, num_heads, eps)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x (B, T'*h'*w', D) with tokens laid out (t, h, w); audio (B, T', N, D) -> (B, L, D)."""
        B, L, D = x.shape
        T, N = audio.shape[1], audio.shape[2]

        # 1. fold latent frames into the batch
        queries = self.norm(x).reshape(B * T, -1, D)  # (B*T, h'*w', D)
        keys = audio.reshape(B * T, N, D)  # (B*T, N, D)

        # 2. attend within each frame, then unfold
        out = super().forward(queries, keys)  # (B*T, h'*w', D)
        return out.reshape(B, L, D)


class WanAttentionBlock(nn.Module):
    """Wan2.1 block (adaLN self-attn, text cross-attn, adaLN FFN) plus audio cross-attn after text."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        dim, heads, eps = cfg.dim, cfg.num_heads, cfg.eps
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.self_attn = WanAttention(dim, heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = WanAttention(dim, heads, eps)
        self.audio_attn = WanAudioAttention(dim, heads, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim)
        )
        # Learned offsets on the timestep's shift/scale/gate, as Wan: per block, shared by all tokens.
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self, x: torch.Tensor, e: torch.Tensor, text: torch.Tensor, audio: torch.Tensor, rope: Rope
    ) -> torch.Tensor:
        """x (B, L, D), e (B, 6, D) projected timestep, text (B, S, D), audio (B, T', N, D) -> (B, L, D)."""
        # 1. per-block modulation from the timestep
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + e).chunk(6, dim=1)  # (B, 1, D)

        # 2. modulated self-attention over all tokens of the window
        y = self.norm1(x) * (1 + scale1) + shift1  # (B, L, D)
        x = x + self.self_attn(y, y, rope) * gate1

        # 3. text cross-attention, then audio cross-attention within each latent frame
        x = x + self.cross_attn(self.norm3(x), text)
        x = x + self.audio_attn(x, audio)

        # 4. modulated feed-forward
        return x + self.ffn(self.norm2(x) * (1 + scale2) + shift2) * gate2


class WanHead(nn.Module):
    """Final adaLN (shift/scale from the time embedding) and projection to patch pixels."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(dim, cfg.latent_channels * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), e (B, D) time embedding -> (B, L, pt*ph*pw*C)."""
        shift, scale = (self.modulation + e[:, None, :]).chunk(2, dim=1)  # (B, 1, D)
        return self.head(self.norm(x) * (1 + scale) + shift)


class WanDiT(nn.Module):
    """Velocity model for one window: noisy latents + conditioning + audio + text -> velocity.

    RoPE positions are window-relative (0..T'-1), so a window computes the same thing wherever
    it sits in the stream. ``forward`` has no Python branches on tensor values, so it traces for
    ONNX/TensorRT as is (with ``attention_backend("math")``).
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, C, patch = cfg.dim, cfg.latent_channels, cfg.patch_size
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=patch, stride=patch)
        # Camera branch: camera latents -> tokens -> a residual into each block. No biases and
        # GELU(0) = 0, so a zero camera input adds exactly nothing, trained or not; the
        # projections start at zero, so an untrained branch adds nothing whatever its input.
        self.camera_embedding = nn.Conv3d(C, dim, kernel_size=patch, stride=patch, bias=False)
        self.camera_projections = nn.ModuleList(
            nn.Linear(dim, dim, bias=False) for _ in range(cfg.num_layers)
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.audio_embedding = nn.Sequential(
            nn.Linear(cfg.audio_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        # Where each of a latent's audio tokens sits (before, its 4 frames, after): attention over
        # keys is blind to their order, so without it the mouth cannot follow the frames.
        self.audio_position = nn.Parameter(torch.zeros(cfg.audio_tokens, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.attribute_embedding = nn.Linear(cfg.num_attributes, dim)
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan2.1's init for the trunk; the added paths start as exact no-ops.

        Zero camera projections and attribute embedding make those inputs invisible until
        fine-tuned (the camera embedding keeps a random init so the projections get a gradient); a
        zero audio output projection makes the audio path an identity at first, so a pretrained
        Wan trunk keeps its behaviour when audio is bolted on. The head is zero, as in Wan.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for m in (*self.text_embedding, *self.time_embedding, *self.audio_embedding):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.xavier_uniform_(self.camera_embedding.weight.flatten(1))
        for p in (
            *self.camera_projections.parameters(),
            *self.attribute_embedding.parameters(),
            self.audio_position,
            *(p for block in self.blocks for p in block.audio_attn.o.parameters()),
            self.head.head.weight,
        ):
            nn.init.zeros_(p)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        cond: torch.Tensor,
        audio: torch.Tensor,
        text: torch.Tensor,
        camera: torch.Tensor,
        attributes: torch.Tensor,
    ) -> torch.Tensor:
        """The ``dit_step`` of engine/runtime/base.py.

        x (B,C,T,h,w) noisy latents; timestep (B,) in [0, 1000]; cond (B,2C+1,T,h,w) mask, motion
        prefix and reference latents; audio (B,T,N,audio_dim); text (B,S,text_dim); camera
        (B,C,T,h,w), zeros when unused; attributes (B,num_attributes). Returns velocity (B,C,T,h,w).
        """
        pt, ph, pw = self.cfg.patch_size
        T, h, w = x.shape[2:]
        Tp, hp, wp = T // pt, h // ph, w // pw

        # 1. patchify noise + conditioning; the camera latents on the same token grid
        tokens = self.patch_embedding(torch.cat([x, cond], dim=1))
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, T'*h'*w', D)
        camera_tokens = nn.functional.gelu(self.camera_embedding(camera).flatten(2).transpose(1, 2))

        # 2. timestep (+ reserved attributes) -> time embedding and per-block modulation
        e = self.time_embedding(sinusoidal_embedding(timestep, self.cfg.freq_dim).to(x.dtype))
        e = e + self.attribute_embedding(attributes)  # (B, D)
        e_blocks = self.time_projection(e).unflatten(1, (6, self.cfg.dim))  # (B, 6, D)

        # 3. embed the contexts once for all blocks
        text = self.text_embedding(text)  # (B, S, D)
        audio = self.audio_embedding(audio) + self.audio_position  # (B, T', N, D)

        # 4. window-relative 3D RoPE
        rope = rope_3d(Tp, hp, wp, self.cfg.dim // self.cfg.num_heads, device=x.device)

        # 5. transformer blocks
        for block, camera_projection in zip(self.blocks, self.camera_projections, strict=True):
            tokens = block(tokens + camera_projection(camera_tokens), e_blocks, text, audio, rope)

        # 6. project tokens back to latent patches
        out = self.head(tokens, e)  # (B, T'*h'*w', pt*ph*pw*C)
        return unpatchify(out, (Tp, hp, wp), self.cfg.patch_size)  # (B, C, T, h, w)
