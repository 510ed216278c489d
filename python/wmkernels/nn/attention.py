"""GENIE-compatible self-attention on the video layout (B, T, S, C).

One `SelfAttention` serves both axes of a factorized spatiotemporal block: `axis="space"` attends over the S tokens
of each frame, `axis="time"` over the T frames at each spatial position. The parameters and their layout are those of
the 1X GENIE `SelfAttention` (`qkv`, `proj`, and with `qk_norm` one `norm = LayerNorm(head_dim)` applied to both q
and k), so a GENIE checkpoint loads unchanged. The fused projection is viewed as (B, T, S, 3, H, D) and handed to the
attention ops as strided views: no permute, no copy.

Temporal attention also has the two cached paths the frame sampler uses: `forward_prefill` (a run of frames starting
at frame 0, writing their K/V into a cache) and `forward_decode` (one frame attending to the cache).
"""
from __future__ import annotations

import torch
from torch import nn

from wmkernels.nn._layout import store_linear_weights_column_major
from wmkernels.nn.packed_linear import inference_linear
from wmkernels.ops.attention import frame_decode_step, spatial_attention_qkv, temporal_attention, temporal_attention_qkv

_AXES = ("space", "time")


class SelfAttention(nn.Module):
    """Multi-head self-attention over one axis of a (B, T, S, C) video tensor.

    Args:
        d_model: channels C; must be divisible by `num_heads`.
        num_heads: heads H; head_dim D = d_model // num_heads.
        qkv_bias, proj_bias: biases of the fused q/k/v projection and of the output projection.
        qk_norm: normalise q and k with one shared LayerNorm(head_dim) (GENIE's `norm`), eps 1e-5.
        use_mup: muP attention scale 8 / head_dim (equal to 1/sqrt(D) at D = 64) instead of head_dim ** -0.5.
        axis: "space" (bidirectional over S within each frame) or "time" (over T at each spatial position).
        causal: mask future frames; defaults to True for "time". Spatial attention is never causal.
        backend: kernel path for the attention ops (None: the process default, see `wmkernels.BACKENDS`).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        qk_norm: bool = True,
        use_mup: bool = False,
        axis: str = "space",
        causal: bool | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if axis not in _AXES:
            raise ValueError(f"axis must be one of {_AXES}, got {axis!r}")
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if causal is None:
            causal = axis == "time"
        if causal and axis == "space":
            raise ValueError("causal=True needs axis='time': spatial attention is bidirectional within a frame")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.axis, self.causal, self.backend = axis, causal, backend
        self.scale = 8 / self.head_dim if use_mup else self.head_dim**-0.5
        # Output rows of qkv are laid out (3, H, D), as in GENIE.
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=qkv_bias)
        self.proj = nn.Linear(d_model, d_model, bias=proj_bias)
        self.norm = nn.LayerNorm(self.head_dim, eps=1e-5) if qk_norm else None
        store_linear_weights_column_major(self)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, causal={self.causal}, heads={self.num_heads}, head_dim={self.head_dim}"

    def _qkv(self, x: torch.Tensor):
        b, t, s, _ = x.shape
        qkv = inference_linear(self.qkv, x).view(b, t, s, 3, self.num_heads, self.head_dim)
        return qkv.unbind(3)  # three strided views (B, T, S, H, D)

    def _norm_kwargs(self) -> dict:
        if self.norm is None:
            return {}
        return {"qk_norm_weight": self.norm.weight, "qk_norm_bias": self.norm.bias, "qk_norm_eps": self.norm.eps}

    def _apply_qk_norm(self, q: torch.Tensor, k: torch.Tensor):
        # The cached paths store normalised keys, so they normalise outside the attention op.
        if self.norm is None:
            return q, k
        return self.norm(q), self.norm(k)

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        b, t, s = o.shape[:3]
        return inference_linear(self.proj, o.reshape(b, t, s, self.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, S, C) -> (B, T, S, C)."""
        b, t, s, _ = x.shape
        # The fused (B, T, S, 3, H, D) projection goes to the op whole: its backward writes one gradient.
        qkv = inference_linear(self.qkv, x).view(b, t, s, 3, self.num_heads, self.head_dim)
        if self.axis == "space":
            o = spatial_attention_qkv(qkv, self.scale, backend=self.backend, **self._norm_kwargs())
        else:
            o = temporal_attention_qkv(qkv, self.causal, self.scale, backend=self.backend, **self._norm_kwargs())
        return self._out(o)

    def forward_prefill(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        last_only: bool = False) -> torch.Tensor:
        """Temporal attention over frames 0 .. T0-1 that also stores their K/V.

        x: (B, T0, S, C); k_cache, v_cache: (B, T_max, S, H, D), written in place at frames 0 .. T0-1.
        Returns (B, T0, S, C), equal to `forward(x)`; with `last_only` the last frame's (B, 1, S, C) only.
        """
        self._check_time("forward_prefill")
        q, k, v = self._qkv(x)
        if last_only:  # the causal mask is aligned to the end: the last query frame sees every key frame
            q = q[:, -1:]
        q, k = self._apply_qk_norm(q, k)
        t0 = x.shape[1]
        k_cache[:, :t0].copy_(k)
        v_cache[:, :t0].copy_(v)
        return self._out(temporal_attention(q, k, v, self.causal, self.scale, backend=self.backend))

    def forward_decode(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Temporal attention of n consecutive frames against the frames cached before them.

        x: (B, n, S, C), the frames at indices position .. position + n - 1; position: int64 tensor of shape (1,)
        (a tensor, so that no host synchronisation is needed). Frame i's K/V are written into slot position + i
        of k_cache, v_cache (B, T_max, S, H, D), and it attends to slots 0 .. position + i: one frame decode per
        frame, in order, so each sees the ones before it. Returns (B, n, S, C), equal to the causal forward's;
        with `last_only` the last frame's (B, 1, S, C) only (every frame's K/V is still written).
        """
        self._check_time("forward_decode")
        q, k, v = self._qkv(x)
        # One op writes the frames' normalized keys and their values into their slots and attends (the CPU kernel
        # reads the cache once for all n frames).
        num_frames = (position + 1).reshape(())  # the op takes a () or (B,) count
        o = frame_decode_step(q, k, v, k_cache, v_cache, num_frames, self.scale, backend=self.backend,
                              **self._norm_kwargs())
        # The last frame's rows made contiguous: on a strided input aten::matmul takes bmm or mm depending on whether
        # the weights require grad, and the two round differently (wmk::st_transformer_decode does the same).
        return self._out(o[:, -1:].contiguous() if last_only else o)

    def _check_time(self, name: str) -> None:
        if self.axis != "time" or not self.causal:
            raise RuntimeError(f"{name} needs causal temporal attention (axis='time', causal=True)")

    def write_kv(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position=None) -> None:
        """Only store the K/V of `x` (the last layer of a prefill or commit needs nothing else).

        x: (B, T0, S, C) written at frames 0 .. T0-1 when `position` is None, else (B, n, S, C) at slots
        position .. position + n - 1.
        """
        self._check_time("write_kv")
        _, k, v = self._qkv(x)
        if self.norm is not None:
            k = self.norm(k)
        if position is None:
            k_cache[:, : x.shape[1]].copy_(k)
            v_cache[:, : x.shape[1]].copy_(v)
        else:
            if x.shape[1] > 1:
                position = position + torch.arange(x.shape[1], device=position.device)
            k_cache.index_copy_(1, position, k)
            v_cache.index_copy_(1, position, v)
