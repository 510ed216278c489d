"""Pure-PyTorch finite scalar quantization (FSQ): the ground truth for the FSQ kernels.

Conventions of vector-quantize-pytorch's FSQ (the paper's Appendix A.1), for levels L_j:
  half_l = (L - 1)(1 + 1e-3) / 2, offset = 0.5 for even L else 0, shift = atanh(offset / half_l)
  bounded = tanh(z + shift) * half_l - offset, r = round(bounded) (half to even), code = r / (L // 2)
  index = sum_j (r_j + L_j // 2) * prod_{i<j} L_i   (the first dimension is the least significant digit)
The gradient of code with respect to z goes straight through the rounding (not through the tanh).
Levels of 2 are allowed (codes {-1, 0}); r is clamped to the L levels (only matters for L > 1000).
A NaN component gives a NaN code and the index -1 for its vector.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _constants(levels: Sequence[int], dtype, device):
    lv = torch.tensor(list(levels), dtype=dtype, device=device)
    half_l = (lv - 1) * torch.tensor(1.001, dtype=dtype) / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0).to(dtype)
    shift = torch.atanh(offset / half_l)
    half_width = torch.tensor([int(v) // 2 for v in levels], dtype=dtype, device=device)
    return lv, half_l, offset, shift, half_width


def _basis(levels: Sequence[int], device) -> torch.Tensor:
    basis = [1]
    for v in levels[:-1]:
        basis.append(basis[-1] * int(v))
    return torch.tensor(basis, dtype=torch.int64, device=device)


def fsq_quantize(z: torch.Tensor, levels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """z: (..., len(levels)) float -> (codes (...,len(levels)) in z's dtype, indices (...) int64).

    Computes in float32 (float64 for float64 z), as vector-quantize-pytorch does; differentiable
    (straight-through rounding).
    """
    compute = torch.float64 if z.dtype == torch.float64 else torch.float32
    zc = z.to(compute)
    lv, half_l, offset, shift, half_width = _constants(levels, compute, z.device)
    bounded = torch.tanh(zc + shift) * half_l - offset
    r = bounded.round().clamp(-half_width, lv - 1 - half_width)
    r = bounded + (r - bounded).detach()
    codes = r / half_width
    digits = (r.detach() + half_width).nan_to_num(0).to(torch.int64)
    indices = (digits * _basis(levels, z.device)).sum(-1)
    indices = torch.where(zc.isnan().any(-1), -1, indices)
    return codes.to(z.dtype), indices


def fsq_decode(indices: torch.Tensor, levels: Sequence[int], dtype=torch.float32) -> torch.Tensor:
    """indices: (...) int in [0, prod(levels)) -> codes (..., len(levels))."""
    size = 1
    for v in levels:
        size *= int(v)
    wide = indices.to(torch.int64)  # an int32 compared with a codebook size past 2^31 would wrap
    if indices.numel() and (bool((wide < 0).any()) or bool((wide >= size).any())):
        raise IndexError(f"fsq_decode: indices must lie in [0, prod(levels) = {size})")
    lv = torch.tensor(list(levels), dtype=torch.int64, device=indices.device)
    digits = (indices.to(torch.int64).unsqueeze(-1) // _basis(levels, indices.device)) % lv
    half_width = lv // 2
    return ((digits - half_width).to(torch.float64) / half_width).to(dtype)
