"""Pure-PyTorch reference of the public 1X GENIE model (STMaskGIT), written to mirror its math.

Same parameter names as the GENIE checkpoints (and `wmkernels.models.STMaskGIT`). It works the way GENIE does:
each block moves the activations to (B*T, S, C) for spatial attention and to (B*S, T, C) for temporal attention,
and attention is `torch.nn.functional.scaled_dot_product_attention` after the shared q/k LayerNorm (the xformers
path of GENIE: normalise, then scale inside the attention). Slow and simple on purpose; imports nothing of ours.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


class GenieSelfAttention(nn.Module):
    def __init__(self, num_heads, d_model, qkv_bias=False, proj_bias=True, qk_norm=True, use_mup=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.scale = 8 / self.head_dim if use_mup else self.head_dim**-0.5
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=qkv_bias)
        self.proj = nn.Linear(d_model, d_model, bias=proj_bias)
        self.norm = nn.LayerNorm(self.head_dim, eps=1e-5) if qk_norm else None

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """x: (N, L, C) sequences -> (N, L, C)."""
        n, length, c = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).unbind(2)
        if self.norm is not None:
            q, k = self.norm(q), self.norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (N, H, L, D)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.scale)
        return self.proj(o.transpose(1, 2).reshape(n, length, c))


class GenieMlp(nn.Module):
    def __init__(self, d_model, mlp_ratio=4.0, mlp_bias=True):
        super().__init__()
        self.fc1 = nn.Linear(d_model, int(d_model * mlp_ratio), bias=mlp_bias)
        self.fc2 = nn.Linear(int(d_model * mlp_ratio), d_model, bias=mlp_bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class GenieSTBlock(nn.Module):
    def __init__(self, num_heads, d_model, qkv_bias=False, proj_bias=True, qk_norm=True, use_mup=False,
                 mlp_ratio=4.0, mlp_bias=True):
        super().__init__()
        attn = (num_heads, d_model, qkv_bias, proj_bias, qk_norm, use_mup)
        self.norm1 = nn.Identity() if qk_norm else nn.LayerNorm(d_model, eps=1e-5)
        self.spatial_attn = GenieSelfAttention(*attn)
        self.temporal_attn = GenieSelfAttention(*attn)
        self.norm2 = nn.Identity() if qk_norm else nn.LayerNorm(d_model, eps=1e-5)
        self.mlp = GenieMlp(d_model, mlp_ratio, mlp_bias)

    def forward(self, x_btsc: torch.Tensor) -> torch.Tensor:
        b, t, s, c = x_btsc.shape
        x = x_btsc.reshape(b * t, s, c)
        x = x + self.spatial_attn(self.norm1(x))
        x = x.reshape(b, t, s, c).permute(0, 2, 1, 3).reshape(b * s, t, c)
        x = x + self.temporal_attn(x, causal=True)
        x = x + self.mlp(self.norm2(x))
        return x.reshape(b, s, t, c).permute(0, 2, 1, 3)


class GenieSTTransformer(nn.Module):
    def __init__(self, num_layers, **block_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(GenieSTBlock(**block_kwargs) for _ in range(num_layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class GenieFactorizedEmbedding(nn.Module):
    def __init__(self, factored_vocab_size, num_factored_vocabs, d_model, mask_token_id):
        super().__init__()
        self.factored_vocab_size, self.num_factored_vocabs = factored_vocab_size, num_factored_vocabs
        self.mask_token_id = mask_token_id
        self.factored_embeds = nn.ModuleList(nn.Embedding(factored_vocab_size, d_model)
                                             for _ in range(num_factored_vocabs))
        self.mask_token_embed = nn.Parameter(torch.zeros(1, d_model))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.mask_token_embed.repeat(*ids.shape, 1)
        keep = ids != self.mask_token_id
        powers = self.factored_vocab_size ** torch.arange(self.num_factored_vocabs, device=ids.device)
        digits = (ids[keep].unsqueeze(-1) // powers) % self.factored_vocab_size
        out[keep] = torch.stack([emb(d) for emb, d in zip(self.factored_embeds, digits.unbind(-1))]).sum(0)
        return out


class GenieSTMaskGIT(nn.Module):
    """Reference GENIE STMaskGIT. config: a mapping (or object) with GENIE's config fields.

    `compute_logits(tokens (B, T', H, W))` -> (B, F*V, T', H, W) for T' <= T frames (GENIE itself needs T' = T;
    taking the first T' positions is the same computation, since later frames cannot influence earlier ones).
    """

    def __init__(self, config):
        super().__init__()
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        fields = ("num_layers", "num_heads", "d_model", "T", "S", "image_vocab_size", "num_factored_vocabs",
                  "factored_vocab_size", "qkv_bias", "proj_bias", "qk_norm", "use_mup", "mlp_ratio", "mlp_bias")
        self.config = SimpleNamespace(**{k: get(k) for k in fields})
        self.T, self.S, d = get("T", 16), get("S", 256), get("d_model")
        self.h = self.w = math.isqrt(self.S)
        vocab, nf = get("image_vocab_size", 262144), get("num_factored_vocabs", 1)
        self.factored_vocab_size = get("factored_vocab_size") or round(vocab ** (1 / nf))
        self.config.factored_vocab_size = self.factored_vocab_size
        self.config.num_factored_vocabs, self.config.T, self.config.S = nf, self.T, self.S
        self.num_factored_vocabs = nf
        self.mask_token_id = vocab
        self.decoder = GenieSTTransformer(
            get("num_layers"), num_heads=get("num_heads"), d_model=d, qkv_bias=get("qkv_bias", False),
            proj_bias=get("proj_bias", True), qk_norm=get("qk_norm", True), use_mup=get("use_mup", False),
            mlp_ratio=get("mlp_ratio", 4.0), mlp_bias=get("mlp_bias", True),
        )
        self.pos_embed_TSC = nn.Parameter(torch.zeros(1, self.T, self.S, d))
        self.token_embed = GenieFactorizedEmbedding(self.factored_vocab_size, nf, d, vocab)
        self.out_x_proj = nn.Linear(d, self.factored_vocab_size * nf)
        self.width_mult = d / 256 if get("use_mup", False) else None

    def compute_logits(self, tokens_bthw: torch.Tensor) -> torch.Tensor:
        b, t = tokens_bthw.shape[:2]
        x = self.token_embed(tokens_bthw.reshape(b, t, self.S))
        x = self.decoder(x + self.pos_embed_TSC[:, :t])
        if self.width_mult is not None:
            x = x / self.width_mult
        logits = self.out_x_proj(x)  # (B, T, S, C)
        return logits.permute(0, 3, 1, 2).reshape(b, -1, t, self.h, self.w)
