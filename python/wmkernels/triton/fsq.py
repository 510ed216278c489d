"""Triton kernels for finite scalar quantization (GPU path; runs on CPU under TRITON_INTERPRET=1).

The per-level constants (half_l, offset, shift, L // 2) are computed once on the host in float32, exactly
as the reference does, and loaded by the kernels. tanh is exp-based here (Triton has no portable tanh), so
a code can differ from the C++ kernel only for inputs within ~1e-7 of a rounding boundary.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

_BLOCK = 256


@triton.jit
def _tanh(a):
    e = tl.exp(-2.0 * tl.abs(a))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(a < 0, -t, t)


@triton.jit
def _round_half_even(v):
    r = tl.floor(v)
    diff = v - r
    up = (diff > 0.5) | ((diff == 0.5) & (tl.floor(r * 0.5) != r * 0.5))
    return tl.where(up, r + 1.0, r)


@triton.jit
def _quantize_kernel(z, codes, indices, consts, basis, n, DIMS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n
    index = tl.zeros([BLOCK], dtype=tl.int64)
    nan = tl.zeros([BLOCK], dtype=tl.int1)
    for j in tl.static_range(DIMS):
        levels = tl.load(consts + 5 * j)
        half_l = tl.load(consts + 5 * j + 1)
        offset = tl.load(consts + 5 * j + 2)
        shift = tl.load(consts + 5 * j + 3)
        half_width = tl.load(consts + 5 * j + 4)
        v = tl.load(z + rows * DIMS + j, mask=live, other=0).to(tl.float32)
        r = _round_half_even(_tanh(v + shift) * half_l - offset)
        is_nan = r != r
        r = tl.minimum(tl.maximum(r, -half_width), levels - 1.0 - half_width)
        code = tl.where(is_nan, r * float("nan"), r / half_width)
        nan = nan | is_nan
        tl.store(codes + rows * DIMS + j, code.to(codes.dtype.element_ty), mask=live)
        index += tl.where(is_nan, 0, (r + half_width).to(tl.int64)) * tl.load(basis + j)
    tl.store(indices + rows, tl.where(nan, -1, index), mask=live)


@triton.jit
def _quantize_backward_kernel(grad, z, out, consts, numel, DIMS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    j = offs % DIMS
    half_l = tl.load(consts + 5 * j + 1, mask=live, other=1.0)
    shift = tl.load(consts + 5 * j + 3, mask=live, other=0.0)
    half_width = tl.load(consts + 5 * j + 4, mask=live, other=1.0)
    v = tl.load(z + offs, mask=live, other=0).to(tl.float32)
    g = tl.load(grad + offs, mask=live, other=0).to(tl.float32)
    t = _tanh(v + shift)
    tl.store(out + offs, (g * half_l * (1.0 - t * t) / half_width).to(out.dtype.element_ty), mask=live)


@triton.jit
def _decode_kernel(indices, out, levels_ptr, basis, bad, n, size, DIMS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n
    index = tl.load(indices + rows, mask=live, other=0).to(tl.int64)
    invalid = live & ((index < 0) | (index >= size))
    tl.atomic_min(bad, tl.min(tl.where(invalid, rows, n), axis=0))
    for j in tl.static_range(DIMS):
        levels = tl.load(levels_ptr + j)
        half_width = levels // 2
        digit = (index // tl.load(basis + j)) % levels
        code = (digit - half_width).to(tl.float64) / half_width.to(tl.float64)
        tl.store(out + rows * DIMS + j, code.to(out.dtype.element_ty), mask=live & ~invalid)


def _tables(levels: Sequence[int], device):
    lv = torch.tensor(list(levels), dtype=torch.float32)
    half_l = (lv - 1) * torch.tensor(1.001, dtype=torch.float32) / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0).to(torch.float32)
    shift = torch.atanh(offset / half_l)
    half_width = torch.tensor([int(v) // 2 for v in levels], dtype=torch.float32)
    consts = torch.stack([lv, half_l, offset, shift, half_width], dim=1).reshape(-1).to(device)
    basis = [1]
    for v in levels[:-1]:
        basis.append(basis[-1] * int(v))
    return consts, torch.tensor(basis, dtype=torch.int64, device=device)


def fsq_quantize(z: torch.Tensor, levels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    consts, basis = _tables(levels, z.device)
    src = z.contiguous()
    codes = torch.empty_like(src)
    indices = torch.empty(z.shape[:-1], dtype=torch.int64, device=z.device)
    n = indices.numel()
    if n:
        _quantize_kernel[(triton.cdiv(n, _BLOCK),)](src, codes, indices, consts, basis, n, DIMS=len(levels),
                                                    BLOCK=_BLOCK)
    return codes, indices


def fsq_quantize_backward(grad: torch.Tensor, z: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    consts, _ = _tables(levels, z.device)
    src = z.contiguous()
    g = grad.to(z.dtype).contiguous()
    out = torch.empty_like(src)
    numel = src.numel()
    if numel:
        _quantize_backward_kernel[(triton.cdiv(numel, _BLOCK),)](g, src, out, consts, numel, DIMS=len(levels),
                                                                 BLOCK=_BLOCK)
    return out


def fsq_decode(indices: torch.Tensor, levels: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    _, basis = _tables(levels, indices.device)
    lv = torch.tensor(list(levels), dtype=torch.int64, device=indices.device)
    size = 1
    for v in levels:
        size *= int(v)
    src = indices.contiguous()
    out = torch.empty((*indices.shape, len(levels)), dtype=dtype, device=indices.device)
    n = src.numel()
    if n == 0:
        return out
    bad = torch.full((1,), n, dtype=torch.int64, device=indices.device)
    _decode_kernel[(triton.cdiv(n, _BLOCK),)](src, out, lv, basis, bad, n, size, DIMS=len(levels), BLOCK=_BLOCK)
    first = int(bad.item())
    if first != n:
        raise IndexError(f"fsq_decode: indices must lie in [0, prod(levels) = {size}), found "
                         f"{src.reshape(-1)[first].item()} at flat index {first}")
    return out
