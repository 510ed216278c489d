"""A token-by-token causal decoder for the same tokens: Llama-style, raster order over each frame's tokens.

The video (B, T, H, W) is read as one sequence of T*H*W tokens (frame by frame, row by row). Blocks are pre-norm
(RMSNorm), causal self-attention with rotary position embeddings, and a SwiGLU MLP. Tokens go in through the
factorized embedding (one table per base-V digit) and come out as factorized logits (F*V per position), as in GENIE.

`forward` is the full causal pass; `prefill` and `decode` run the same math against a static `TokenKVCache`
(preallocated K/V, positions as tensors, no host synchronisation per token).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from wmkernels.models.embedding import FactorizedEmbedding


@dataclasses.dataclass
class CausalDecoderConfig:
    """num_layers, num_heads, d_model; max_frames frames of S tokens; image_vocab_size = V ** F."""

    num_layers: int
    num_heads: int
    d_model: int
    max_frames: int = 16
    S: int = 256
    image_vocab_size: int = 262144
    num_factored_vocabs: int = 2
    mlp_hidden: int | None = None  # SwiGLU width; default 8/3 d_model rounded up to a multiple of 8
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(f"d_model={self.d_model} / num_heads={self.num_heads} must be an even head_dim")
        side = math.isqrt(self.S)
        if side * side != self.S:
            raise ValueError(f"S={self.S} must be a square")
        self.factored_vocab_size = round(self.image_vocab_size ** (1 / self.num_factored_vocabs))
        if self.factored_vocab_size**self.num_factored_vocabs != self.image_vocab_size:
            raise ValueError(f"image_vocab_size={self.image_vocab_size} is not a power {self.num_factored_vocabs}")
        if self.mlp_hidden is None:
            self.mlp_hidden = 8 * math.ceil(8 * self.d_model / 3 / 8)

    @property
    def max_seq_len(self) -> int:
        return self.max_frames * self.S

    @property
    def num_logits(self) -> int:
        return self.num_factored_vocabs * self.factored_vocab_size


class TokenKVCache:
    """K and V of every layer: (num_layers, B, H, max_seq_len, D), written in place at tensor positions."""

    def __init__(self, cfg: CausalDecoderConfig, batch_size: int, dtype=torch.float32, device=None):
        shape = (cfg.num_layers, batch_size, cfg.num_heads, cfg.max_seq_len, cfg.d_model // cfg.num_heads)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, L, D); rotate the (first half, second half) pairs.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _attend(q, k, v, allowed):
    # Explicit softmax attention, the same arithmetic for the full pass and the cached one.
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class CausalBlock(nn.Module):
    def __init__(self, cfg: CausalDecoderConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.d_model // cfg.num_heads
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.w_gate = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.w_down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, allowed, k_cache=None, v_cache=None, positions=None):
        """x: (B, L, C). Without a cache: causal over x. With one: write K/V at `positions` (L,), attend over it."""
        b, length, c = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if k_cache is not None:
            k_cache.index_copy_(2, positions, k)
            v_cache.index_copy_(2, positions, v)
            k, v = k_cache, v_cache
        o = _attend(q, k, v, allowed).transpose(1, 2).reshape(b, length, c)
        x = x + self.out(o)
        h = self.mlp_norm(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))


class CausalTokenDecoder(nn.Module):
    """tokens (B, L) in raster order -> logits (B, L, F*V) for the next token at each position."""

    def __init__(self, config: CausalDecoderConfig):
        super().__init__()
        self.config = config
        self.token_embed = FactorizedEmbedding(config.factored_vocab_size, config.num_factored_vocabs,
                                               config.d_model, config.image_vocab_size)
        self.layers = nn.ModuleList(CausalBlock(config) for _ in range(config.num_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.out_proj = nn.Linear(config.d_model, config.num_logits, bias=False)
        head_dim = config.d_model // config.num_heads
        inv_freq = config.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(config.max_seq_len, dtype=torch.float64)[:, None] * inv_freq[None]
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    def _rope_at(self, positions: torch.Tensor):
        return self.rope_cos.index_select(0, positions), self.rope_sin.index_select(0, positions)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full causal pass. tokens: (B, L) int64, L <= max_seq_len -> logits (B, L, F*V)."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        cos, sin = self._rope_at(positions)
        allowed = positions[None, :] <= positions[:, None]
        x = self.token_embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, allowed)
        return self.out_proj(self.norm(x))

    def new_cache(self, batch_size: int) -> TokenKVCache:
        p = next(self.parameters())
        return TokenKVCache(self.config, batch_size, dtype=p.dtype, device=p.device)

    def forward_cached(self, tokens: torch.Tensor, cache: TokenKVCache, positions: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) at `positions` (L,) int64 tensor, attending to cached positions up to each one's own.

        Used for the prefill (positions 0 .. L0-1) and for each decoded token (L = 1). Returns (B, L, F*V).
        """
        cos, sin = self._rope_at(positions)
        slots = torch.arange(self.config.max_seq_len, device=tokens.device)
        allowed = slots[None, :] <= positions[:, None]  # (L, max_seq_len): no host synchronisation
        x = self.token_embed(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, allowed, cache.k[i], cache.v[i], positions)
        return self.out_proj(self.norm(x))
