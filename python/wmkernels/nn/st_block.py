"""GENIE's spatiotemporal block and the stack of them, on the (B, T, S, C) layout.

Block order (as in 1X GENIE): x += spatial_attn(norm1(x)); x += temporal_attn(x) (no pre-norm);
x += mlp(norm2(x)). With `qk_norm` the pre-norms norm1 and norm2 are Identity (the attention normalises q and k
instead); without it they are LayerNorm(d_model, eps=1e-5). The MLP is fc1 -> exact GELU -> fc2.

Besides the plain forward, each block has the two cached paths of the frame sampler: `forward_prefill` (frames
0 .. T0-1, storing every layer's temporal K/V) and `forward_decode` (one or a few frames against those K/V). With
`kv_only=True` they stop once the temporal K/V are stored: the last layer of a prefill or of a frame's commit needs
nothing more.
"""
from __future__ import annotations

import torch
from torch import nn

from wmkernels.nn._layout import store_linear_weights_column_major
from wmkernels.nn.attention import SelfAttention


class Mlp(nn.Module):
    """fc1 (d_model -> int(d_model * mlp_ratio)) -> GELU (erf) -> fc2. x: (..., C) -> (..., C)."""

    def __init__(self, d_model: int, mlp_ratio: float = 4.0, mlp_bias: bool = True) -> None:
        super().__init__()
        hidden = int(d_model * mlp_ratio)
        self.fc1 = nn.Linear(d_model, hidden, bias=mlp_bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d_model, bias=mlp_bias)
        store_linear_weights_column_major(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if torch.is_grad_enabled() and h.requires_grad:
            h = self.act(h)
        else:
            # Without autograd, GELU overwrites fc1's fresh output: no second hidden-sized buffer. That buffer cost
            # more than its pass: with it, glibc returned and re-mapped memory at every layer (a GENIE-35M decode
            # step took ~15,000 minor page faults, without it ~130; measured 15% faster per one-frame step and 6%
            # per 16-frame forward on one thread).
            h = torch.ops.aten.gelu_(h, approximate=self.act.approximate)
        return self.fc2(h)


class STBlock(nn.Module):
    """One GENIE ST block; parameter names norm1, spatial_attn, temporal_attn, norm2, mlp.{fc1,fc2}.

    x: (B, T, S, C) -> (B, T, S, C). See the module docstring for the order of operations.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        qk_norm: bool = True,
        use_mup: bool = False,
        mlp_ratio: float = 4.0,
        mlp_bias: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        attn = dict(d_model=d_model, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm,
                    use_mup=use_mup, backend=backend)
        self.norm1 = nn.Identity() if qk_norm else nn.LayerNorm(d_model, eps=1e-5)
        self.spatial_attn = SelfAttention(axis="space", **attn)
        self.temporal_attn = SelfAttention(axis="time", causal=True, **attn)
        self.norm2 = nn.Identity() if qk_norm else nn.LayerNorm(d_model, eps=1e-5)
        self.mlp = Mlp(d_model, mlp_ratio, mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.spatial_attn(self.norm1(x))
        x = x + self.temporal_attn(x)
        return x + self.mlp(self.norm2(x))

    def forward_prefill(self, x, k_cache, v_cache, kv_only: bool = False, last_only: bool = False):
        """x: (B, T0, S, C), frames 0 .. T0-1; stores their temporal K/V in k_cache, v_cache (B, T_max, S, H, D).

        Returns (B, T0, S, C), or with `last_only` the last frame's rows (B, 1, S, C) only (the other frames' output
        projections and MLP are skipped: nothing reads them after the last layer)."""
        x = x + self.spatial_attn(self.norm1(x))
        if kv_only:
            self.temporal_attn.write_kv(x, k_cache, v_cache)
            return None
        t = self.temporal_attn.forward_prefill(x, k_cache, v_cache, last_only=last_only)
        x = (x[:, -1:] if last_only else x) + t
        return x + self.mlp(self.norm2(x))

    def forward_decode(self, x, k_cache, v_cache, position: torch.Tensor, kv_only: bool = False,
                       last_only: bool = False):
        """x: (B, n, S, C), the frames at `position` (int64 tensor (1,)) .. position + n - 1; frame i attends to
        cached frames 0 .. position + i, its own K/V written at slot position + i. `last_only` as in
        forward_prefill."""
        x = x + self.spatial_attn(self.norm1(x))
        if kv_only:
            self.temporal_attn.write_kv(x, k_cache, v_cache, position)
            return None
        t = self.temporal_attn.forward_decode(x, k_cache, v_cache, position, last_only=last_only)
        x = (x[:, -1:] if last_only else x) + t
        return x + self.mlp(self.norm2(x))


class STTransformer(nn.Module):
    """A stack of `num_layers` STBlocks named `layers.{i}` (GENIE's `STTransformerDecoder`).

    x: (B, T, S, C) -> (B, T, S, C). The cached paths take a `FrameKVCache` (see wmkernels.nn.kv_cache).
    """

    def __init__(self, num_layers: int, d_model: int, num_heads: int, **block_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(STBlock(d_model, num_heads, **block_kwargs) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_prefill(self, x: torch.Tensor, cache, need_output: bool = True, last_only: bool = False):
        """Frames 0 .. T0-1 of x (B, T0, S, C): fill the cache's K/V; return the output (B, T0, S, C) only if
        `need_output`, and with `last_only` only the last frame's (B, 1, S, C)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer.forward_prefill(x, cache.k[i], cache.v[i], kv_only=(i == last and not need_output),
                                      last_only=(i == last and last_only))
        return x

    def forward_decode(self, x: torch.Tensor, cache, position: torch.Tensor, need_output: bool = True,
                       last_only: bool = False):
        """Frames x (B, n, S, C) at `position` .. position + n - 1 against the cache, their K/V written there.

        n = 1 is a MaskGIT step; n = 2 is the sampler's commit of a finished frame together with the next frame's
        first step (one pass with twice the rows instead of two passes). Output as in forward_prefill.
        """
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer.forward_decode(x, cache.k[i], cache.v[i], position, kv_only=(i == last and not need_output),
                                     last_only=(i == last and last_only))
        return x
