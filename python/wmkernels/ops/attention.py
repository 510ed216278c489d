"""TEMPORARY on the `sampling` branch: reference-only attention ops with the agreed signatures.

The `attention` branch owns the real module (CPU/CUDA/Triton kernels behind these same signatures); at merge its
version replaces this file. Do not add features here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wmkernels.reference import attention as _ref


def _qk_norm(x, weight, bias, eps):
    if weight is None and bias is None:
        return x
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def spatial_attention(q, k, v, scale=None, *, qk_norm_weight=None, qk_norm_bias=None, qk_norm_eps=1e-5, backend=None):
    q, k = (_qk_norm(t, qk_norm_weight, qk_norm_bias, qk_norm_eps) for t in (q, k))
    return _ref.spatial_attention(q, k, v, scale)


def temporal_attention(q, k, v, causal=True, scale=None, *, qk_norm_weight=None, qk_norm_bias=None,
                       qk_norm_eps=1e-5, backend=None):
    q, k = (_qk_norm(t, qk_norm_weight, qk_norm_bias, qk_norm_eps) for t in (q, k))
    return _ref.temporal_attention(q, k, v, causal, scale)


def frame_decode_attention(q, k_cache, v_cache, num_frames: torch.Tensor, scale=None, *, backend=None):
    return _ref.frame_decode_attention(q, k_cache, v_cache, num_frames, scale)
