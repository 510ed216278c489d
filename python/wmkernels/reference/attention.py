"""Pure-PyTorch factorized spatiotemporal attention on the video layout (B, T, S, H, D).

Spatial attention attends over the S tokens of each frame (each b, t, h); temporal attention over the
T frames at each spatial position (each b, s, h), causally by default. Everything is computed in the
inputs' dtype, by explicit matmul + softmax, so that the reference in dtype X is the yardstick the
numerics rules of DESIGN.md compare kernels in dtype X against.
"""
from __future__ import annotations

import torch


def _attend(q, k, v, scale, causal):
    # q: (..., Lq, D), k/v: (..., Lk, D). A causal mask is aligned to the end: query i of Lq sees keys
    # j <= i + (Lk - Lq), so a single query frame attends to every cached frame and itself.
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """q, k, v: (B, T, S, H, D) -> (B, T, S, H, D); bidirectional attention over S within each frame."""
    out = _attend(q.permute(0, 1, 3, 2, 4), k.permute(0, 1, 3, 2, 4), v.permute(0, 1, 3, 2, 4), scale, False)
    return out.permute(0, 1, 3, 2, 4)


def temporal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None
) -> torch.Tensor:
    """q: (B, Tq, S, H, D), k, v: (B, Tk, S, H, D) -> (B, Tq, S, H, D); attention over frames per position.

    With `causal`, query frame i sees key frames j <= i + (Tk - Tq) (aligned to the last frame).
    """
    out = _attend(q.permute(0, 2, 3, 1, 4), k.permute(0, 2, 3, 1, 4), v.permute(0, 2, 3, 1, 4), scale, causal)
    return out.permute(0, 3, 1, 2, 4)


def frame_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, num_frames: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Temporal attention of one frame's queries against a frame KV cache.

    q: (B, S, H, D), the current frame's queries. k_cache, v_cache: (B, T_max, S, H, D), holding valid frames at
    0 .. num_frames - 1 (the current frame's own K/V already written at num_frames - 1).
    num_frames: integer tensor, () or (B,), in [1, T_max] (values outside are clamped to it).
    Each query (b, s, h) attends over k_cache[b, :n_b, s, h].
    Returns (B, S, H, D). The mask is built from the tensor, so the call needs no host synchronisation.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t_max = k_cache.shape[1]
    scores = torch.einsum("bshd,btshd->bsht", q, k_cache) * scale
    # Counts outside [1, T_max] are clamped, as the GPU kernels do (they cannot raise without a host sync; the
    # wrapper raises for CPU tensors): no count gives an all-masked row (NaN) or reads past the cache.
    frames = num_frames.reshape(-1, 1).to(q.device).clamp(1, t_max)
    valid = torch.arange(t_max, device=q.device) < frames  # (B or 1, T_max)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    # Slots past the count may hold anything (an uninitialized cache, NaN included): zero their values, since
    # 0 * NaN would still poison the weighted sum.
    values = torch.where(valid[:, :, None, None, None], v_cache, torch.zeros((), dtype=v_cache.dtype,
                                                                              device=v_cache.device))
    return torch.einsum("bsht,btshd->bshd", torch.softmax(scores, dim=-1), values)
