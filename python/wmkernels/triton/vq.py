"""Triton kernels for nearest-code VQ (GPU path; runs on CPU under TRITON_INTERPRET=1).

vq_encode tiles rows x codes, accumulates the dot products of a tile in fp32 with `tl.dot` over chunks
of D, and folds each tile into a running (best score, index) per row: the N x K matrix is never stored.
Scores, tie-breaking and distances follow wmkernels.reference.vq.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from wmkernels.reference.vq import NORM_EPS


@triton.jit
def _vq_search_kernel(x_ptr, c_ptr, bias_ptr, idx_ptr, n, k, dim,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int64)
    for k0 in range(0, k, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        code_ok = codes < k
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_ok = ds < dim
            xt = tl.load(x_ptr + rows[:, None] * dim + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            ct = tl.load(c_ptr + codes[:, None] * dim + ds[None, :], mask=code_ok[:, None] & d_ok[None, :], other=0.0)
            acc = tl.dot(xt, tl.trans(ct), acc, input_precision="ieee")
        # Padding codes get +inf and NaN scores become +inf: neither ever beats the running best.
        bias = tl.load(bias_ptr + codes, mask=code_ok, other=float("inf"))
        scores = bias[None, :] - 2.0 * acc
        scores = tl.where(scores != scores, float("inf"), scores)
        tile_min = tl.min(scores, axis=1)
        tile_arg = tl.argmin(scores, axis=1).to(tl.int64)  # lowest index among ties
        better = tile_min < best
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_arg + k0, best_idx)
    tl.store(idx_ptr + rows, best_idx, mask=row_ok)


@triton.jit
def _vq_gather_kernel(idx_ptr, c_ptr, out_ptr, bad_ptr, n, k, dim, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    code = tl.load(idx_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    invalid = row_ok & ((code < 0) | (code >= k))
    # The lowest bad row is reported; valid rows carry n, which never wins the minimum.
    tl.atomic_min(bad_ptr, tl.min(tl.where(invalid, rows, n), axis=0))
    ok = row_ok & ~invalid
    for d0 in range(0, dim, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        mask = ok[:, None] & (ds < dim)[None, :]
        vals = tl.load(c_ptr + code[:, None] * dim + ds[None, :], mask=mask, other=0.0)
        tl.store(out_ptr + rows[:, None] * dim + ds[None, :], vals, mask=mask)


def _blocks(device: torch.device) -> tuple[int, int, int]:
    # Small tiles keep the CPU interpreter fast; GPUs want larger ones.
    return (64, 64, 32) if device.type == "cuda" else (16, 16, 16)


def vq_encode(x: torch.Tensor, codebook: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (..., D), codebook: (K, D) -> (indices int64 (...), distances float32 (...))."""
    dim = codebook.shape[1]
    xf = x.reshape(-1, dim).float()
    cf = codebook.float()
    if metric == "cosine":
        xf, cf = F.normalize(xf, dim=-1, eps=NORM_EPS), F.normalize(cf, dim=-1, eps=NORM_EPS)
        bias = torch.zeros(cf.shape[0], dtype=torch.float32, device=cf.device)
    else:
        bias = cf.square().sum(-1)
    xf, cf = xf.contiguous(), cf.contiguous()
    n = xf.shape[0]
    indices = torch.zeros(n, dtype=torch.int64, device=x.device)
    if n:
        bn, bk, bd = _blocks(x.device)
        _vq_search_kernel[(triton.cdiv(n, bn),)](xf, cf, bias, indices, n, cf.shape[0], dim,
                                                  BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd)
    chosen = cf[indices]
    if metric == "cosine":
        distances = 1 - (xf * chosen).sum(-1)
    else:
        distances = (xf - chosen).square().sum(-1)
    shape = x.shape[:-1]
    return indices.reshape(shape), distances.reshape(shape)


def vq_decode(indices: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """indices: (...) in [0, K), codebook: (K, D) -> codes (..., D); IndexError on an index outside."""
    k, dim = codebook.shape
    idx = indices.reshape(-1).contiguous()
    cb = codebook.contiguous()
    n = idx.numel()
    out = torch.empty((n, dim), dtype=codebook.dtype, device=codebook.device)
    if n:
        bad = torch.full((1,), n, dtype=torch.int64, device=codebook.device)
        bn, _, bd = _blocks(codebook.device)
        _vq_gather_kernel[(triton.cdiv(n, bn),)](idx, cb, out, bad, n, k, dim, BLOCK_N=bn, BLOCK_D=bd)
        first = int(bad.item())
        if first != n:
            raise IndexError(f"vq_decode: indices must lie in [0, {k}) (the codebook size), found "
                             f"{idx[first].item()} at flat index {first}")
    return out.reshape(*indices.shape, dim)
