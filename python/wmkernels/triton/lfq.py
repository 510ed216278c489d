"""Triton kernels for lookup-free quantization (GPU path; runs on CPU under TRITON_INTERPRET=1).

The entropy loss streams the samples through the (2^hi x 2^lo) probability table, tile by tile: each
program owns one table tile and builds the two half-tables of a block of samples on the fly (a product of
sigmoids per entry), so neither the N x 2^bits tensor nor the N x 2^(bits/2) half-tables ever exist.
The O(2^bits) reductions around it (the codebook entropy, -log of the table) are torch ops.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 256
_BLOCK_N = 16  # samples per step (tl.dot needs at least 16)
_TILE = 32  # table tile edge


@triton.jit
def _encode_kernel(x, out, n, BITS: tl.constexpr, MSB: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n
    index = tl.zeros([BLOCK], dtype=tl.int64)
    for j in tl.static_range(BITS):
        v = tl.load(x + rows * BITS + j, mask=live, other=0).to(tl.float32)
        pos: tl.constexpr = BITS - 1 - j if MSB else j
        index = index | tl.where(v > 0, 1 << pos, 0).to(tl.int64)
    tl.store(out + rows, index, mask=live)


@triton.jit
def _decode_kernel(indices, out, bad, n, BITS: tl.constexpr, MSB: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n
    index = tl.load(indices + rows, mask=live, other=0).to(tl.int64)
    invalid = live & ((index < 0) | (index >= (1 << BITS)))
    tl.atomic_min(bad, tl.min(tl.where(invalid, rows, n), axis=0))
    for j in tl.static_range(BITS):
        pos: tl.constexpr = BITS - 1 - j if MSB else j
        code = tl.where(((index >> pos) & 1) == 1, 1.0, -1.0)
        tl.store(out + rows * BITS + j, code.to(out.dtype.element_ty), mask=live & ~invalid)


@triton.jit
def _bit_probs(x, rows, live, j, BITS: tl.constexpr, scale):
    """sigmoid(-z) and sigmoid(z) of channel j for a block of rows, z = scale * x (stable, no 1 - q)."""
    z = scale * tl.load(x + rows * BITS + j, mask=live, other=0).to(tl.float32)
    e = tl.exp(-tl.abs(z))
    big = 1.0 / (1.0 + e)
    small = e * big
    return tl.where(z >= 0, small, big), tl.where(z >= 0, big, small), z


@triton.jit
def _half_table(x, rows, live, cols, first: tl.constexpr, NB: tl.constexpr, BITS: tl.constexpr, scale,
                SKIP: tl.constexpr):
    """(rows, cols) entries of the probability table of channels first..first+NB-1, bit k of a column
    index selecting channel first+k; channel first+SKIP is left out (SKIP = -1 keeps all)."""
    table = tl.where(live[:, None], 1.0, 0.0) + tl.zeros([rows.shape[0], cols.shape[0]], dtype=tl.float32)
    for k in tl.static_range(NB):
        if k != SKIP:
            q0, q1, _ = _bit_probs(x, rows, live, first + k, BITS, scale)
            bit = ((cols >> k) & 1) == 1
            table = table * tl.where(bit[None, :], q1[:, None], q0[:, None])
    return table


@triton.jit
def _table_kernel(x, table, n, scale, BITS: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr,
                  BLOCK_N: tl.constexpr, TILE: tl.constexpr):
    hi_cols = tl.program_id(0) * TILE + tl.arange(0, TILE)
    lo_cols = tl.program_id(1) * TILE + tl.arange(0, TILE)
    acc = tl.zeros([TILE, TILE], dtype=tl.float32)
    for start in range(0, n, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N).to(tl.int64)
        live = rows < n
        hi_t = _half_table(x, rows, live, hi_cols, LO, HI, BITS, scale, -1)
        lo_t = _half_table(x, rows, live, lo_cols, 0, LO, BITS, scale, -1)
        acc += tl.dot(tl.trans(hi_t), lo_t, input_precision="ieee")
    mask = (hi_cols < (1 << HI))[:, None] & (lo_cols < (1 << LO))[None, :]
    tl.store(table + hi_cols[:, None] * (1 << LO) + lo_cols[None, :], acc, mask=mask)


@triton.jit
def _row_entropy_kernel(x, out, n, scale, BITS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n
    h = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(BITS):
        q0, q1, z = _bit_probs(x, rows, live, j, BITS, scale)
        a = tl.abs(z)
        e = tl.exp(-a)
        h += tl.log(1.0 + e) + a * e / (1.0 + e)
    tl.store(out + rows, h, mask=live)


@triton.jit
def _half_grad(x, weight, dsum, rows, live, scale, first: tl.constexpr, NB: tl.constexpr, OTHER_FIRST: tl.constexpr,
               OTHER_NB: tl.constexpr, W_ROW_STRIDE: tl.constexpr, W_COL_STRIDE: tl.constexpr, BITS: tl.constexpr,
               TILE: tl.constexpr):
    """d/dq1 of sum_codes weight * table for the NB channels from `first`, accumulated into dsum[rows, :].

    The weight of an entry of this half is the other half-table contracted with -log(avg_prob)."""
    for c0 in range(0, 1 << NB, TILE):
        cols = c0 + tl.arange(0, TILE)
        w = tl.zeros([rows.shape[0], TILE], dtype=tl.float32)
        for o0 in range(0, 1 << OTHER_NB, TILE):
            ocols = o0 + tl.arange(0, TILE)
            other = _half_table(x, rows, live, ocols, OTHER_FIRST, OTHER_NB, BITS, scale, -1)
            gmask = (ocols < (1 << OTHER_NB))[:, None] & (cols < (1 << NB))[None, :]
            g = tl.load(weight + ocols[:, None] * W_ROW_STRIDE + cols[None, :] * W_COL_STRIDE, mask=gmask, other=0.0)
            w += tl.dot(other, g, input_precision="ieee")
        w = tl.where((cols < (1 << NB))[None, :], w, 0.0)
        for k in tl.static_range(NB):
            others = _half_table(x, rows, live, cols, first, NB, BITS, scale, k)
            sign = tl.where(((cols >> k) & 1) == 1, 1.0, -1.0)
            part = tl.sum(w * others * sign[None, :], axis=1)
            prev = tl.load(dsum + rows * BITS + first + k, mask=live, other=0.0)
            tl.store(dsum + rows * BITS + first + k, prev + part, mask=live)


@triton.jit
def _grad_kernel(x, weight, dsum, grad, n, scale, gamma, outer, BITS: tl.constexpr, LO: tl.constexpr,
                 HI: tl.constexpr, BLOCK_N: tl.constexpr, TILE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = rows < n
    # weight is (2^HI, 2^LO): the low half contracts rows of it, the high half its columns.
    _half_grad(x, weight, dsum, rows, live, scale, 0, LO, LO, HI, 1 << LO, 1, BITS, TILE)
    _half_grad(x, weight, dsum, rows, live, scale, LO, HI, 0, LO, 1, 1 << LO, BITS, TILE)
    for j in tl.static_range(BITS):
        q0, q1, z = _bit_probs(x, rows, live, j, BITS, scale)
        d = tl.load(dsum + rows * BITS + j, mask=live, other=0.0)
        tl.store(grad + rows * BITS + j, outer * (-z * q0 * q1 - gamma * d * q0 * q1), mask=live)


def lfq_encode(x: torch.Tensor, bit_order: str) -> torch.Tensor:
    bits = x.shape[-1]
    src = x.contiguous()
    out = torch.empty(x.shape[:-1], dtype=torch.int64, device=x.device)
    n = out.numel()
    if n:
        _encode_kernel[(triton.cdiv(n, _BLOCK),)](src, out, n, BITS=bits, MSB=bit_order == "msb", BLOCK=_BLOCK)
    return out


def lfq_decode(indices: torch.Tensor, bits: int, bit_order: str, dtype: torch.dtype) -> torch.Tensor:
    src = indices.contiguous()
    out = torch.empty((*indices.shape, bits), dtype=dtype, device=indices.device)
    n = src.numel()
    if n == 0:
        return out
    bad = torch.full((1,), n, dtype=torch.int64, device=indices.device)
    _decode_kernel[(triton.cdiv(n, _BLOCK),)](src, out, bad, n, BITS=bits, MSB=bit_order == "msb", BLOCK=_BLOCK)
    first = int(bad.item())
    if first != n:
        raise IndexError(f"lfq_decode: indices must lie in [0, 2^{bits} = {2**bits}), found "
                         f"{src.reshape(-1)[first].item()} at flat index {first}")
    return out


def _split(bits: int) -> tuple[int, int]:
    lo = bits // 2
    return lo, bits - lo


def lfq_entropy_loss(x: torch.Tensor, inv_temperature: float, diversity_gamma: float):
    """x: (..., bits) -> (loss 0-d in x's dtype, avg_prob (2^bits,) float32), as torch.ops.wmk.lfq_entropy_loss."""
    bits = x.shape[-1]
    lo, hi = _split(bits)
    src = x.reshape(-1, bits).contiguous()
    n = src.shape[0]
    scale = 4.0 * inv_temperature
    table = torch.empty((1 << hi, 1 << lo), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(1 << hi, _TILE), triton.cdiv(1 << lo, _TILE))
    _table_kernel[grid](src, table, n, scale, BITS=bits, LO=lo, HI=hi, BLOCK_N=_BLOCK_N, TILE=_TILE)
    entropy = torch.empty((n,), dtype=torch.float32, device=x.device)
    if n:
        _row_entropy_kernel[(triton.cdiv(n, _BLOCK),)](src, entropy, n, scale, BITS=bits, BLOCK=_BLOCK)
    denom = max(n, 1)
    table /= denom
    codebook = -torch.special.xlogy(table, table).sum(dtype=torch.float64)
    loss = entropy.sum(dtype=torch.float64) / denom - diversity_gamma * codebook
    return loss.to(x.dtype), table.reshape(-1)


def lfq_entropy_loss_backward(grad: torch.Tensor, x: torch.Tensor, avg_prob: torch.Tensor, inv_temperature: float,
                              diversity_gamma: float) -> torch.Tensor:
    bits = x.shape[-1]
    lo, hi = _split(bits)
    src = x.reshape(-1, bits).contiguous()
    n = src.shape[0]
    out = torch.empty(src.shape, dtype=torch.float32, device=x.device)
    if n:
        # -(log a + 1): the +1 sums to zero against a probability table; the clamp keeps underflowed codes finite.
        weight = avg_prob.float().clamp_min(torch.finfo(torch.float32).tiny).log().neg().reshape(1 << hi, 1 << lo)
        dsum = torch.zeros(src.shape, dtype=torch.float32, device=x.device)
        _grad_kernel[(triton.cdiv(n, _BLOCK_N),)](src, weight.contiguous(), dsum, out, n, 4.0 * inv_temperature,
                                                  float(diversity_gamma), 4.0 * inv_temperature / n, BITS=bits, LO=lo,
                                                  HI=hi, BLOCK_N=_BLOCK_N, TILE=_TILE)
    return (out.reshape(x.shape) * grad.float()).to(x.dtype)
