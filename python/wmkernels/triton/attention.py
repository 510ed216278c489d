"""Triton flash attention on the video layout (GPU path; runs on CPU under TRITON_INTERPRET=1).

One kernel family serves spatial, temporal and frame-decode attention: a sequence is addressed through role
strides (batch, other token axis, sequence axis, head, dim), as in the C++ kernels. Each program handles SEQS
whole sequences when they are short (temporal T = 16: four sequences make one 64-row tile) with a block-diagonal
mask, or one block of a long sequence (spatial S = 256). The qk LayerNorm is applied to the q and k tiles in
registers. The backward is FlashAttention-2's split: one kernel for dq (program per query block), one for dk and
dv (program per key block), both recomputing P from the saved log-sum-exp; qk LayerNorm weight/bias gradients
are per-program partial sums added up by torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rows(g0, pos0, BLOCK: tl.constexpr, PER: tl.constexpr):
    # Row r of a tile is position pos0 + r % PER of sequence g0 + r // PER.
    r = tl.arange(0, BLOCK)
    return g0 + r // PER, pos0 + r % PER


@triton.jit
def _group_base(g, heads, other, sb, sx, sh):
    h = g % heads
    x = (g // heads) % other
    b = g // (heads * other)
    return b.to(tl.int64) * sb + x.to(tl.int64) * sx + h.to(tl.int64) * sh, b


@triton.jit
def _load_tile(ptr, base, pos, sl, sd, ok, offs_d, D):
    mask = ok[:, None] & (offs_d[None, :] < D)
    return tl.load(ptr + base[:, None] + pos[:, None].to(tl.int64) * sl + offs_d[None, :] * sd, mask=mask, other=0.0)


@triton.jit
def _layer_norm(x, w, bias, offs_d, D, eps):
    # x: (rows, BLOCK_D) fp32, zero past D. Returns LayerNorm(x) * w + bias, the pre-affine xhat, and rstd.
    dmask = offs_d[None, :] < D
    mean = tl.sum(x, 1) / D
    xc = tl.where(dmask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / D + eps)
    xhat = xc * rstd[:, None]
    return xhat * w[None, :] + bias[None, :], xhat, rstd


@triton.jit
def _layer_norm_backward(dy, xhat, rstd, w, offs_d, D):
    g = dy * w[None, :]
    mean_g = tl.sum(g, 1) / D
    mean_gx = tl.sum(g * xhat, 1) / D
    dx = rstd[:, None] * (g - mean_g[:, None] - xhat * mean_gx[:, None])
    return tl.where(offs_d[None, :] < D, dx, 0.0)


@triton.jit
def _dot(a, b, F32: tl.constexpr):
    # float32 inputs: full-precision products (no TF32), so results meet the float32 error rule; half inputs
    # go to the tensor cores as they are, accumulating in float32.
    if F32:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, NF, W, Bn,
                qsb, qsx, qsl, qsh, qsd, ksb, ksx, ksl, ksh, ksd, vsb, vsx, vsl, vsh, vsd,
                osb, osx, osl, osh, osd, lsb, lsx, lsl, lsh, nf_stride,
                G, other, heads, LQ, LK, D, scale, eps,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PER_Q: tl.constexpr, PER_K: tl.constexpr,
                BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_NORM: tl.constexpr, HAS_NF: tl.constexpr,
                STORE_LSE: tl.constexpr, F32: tl.constexpr):
    SEQS: tl.constexpr = BLOCK_M // PER_Q
    g0 = tl.program_id(0) * SEQS
    g_r, i_r = _rows(g0, tl.program_id(1) * PER_Q, BLOCK_M, PER_Q)
    row_ok = (g_r < G) & (i_r < LQ)
    qbase, b_r = _group_base(g_r, heads, other, qsb, qsx, qsh)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q, qbase, i_r, qsl, qsd, row_ok, offs_d, D).to(tl.float32)
    if HAS_NORM:
        w = tl.load(W + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
        bn = tl.load(Bn + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
        q, _, _ = _layer_norm(q, w, bn, offs_d, D, eps)
    q = (q * scale).to(Q.dtype.element_ty) if not F32 else q * scale
    if HAS_NF:  # frame decode: per-batch key counts read on the device, clamped to [1, LK] (no sync)
        lk_r = tl.load(NF + b_r * nf_stride, mask=g_r < G, other=1).to(tl.int32)
        lk_r = tl.minimum(tl.maximum(lk_r, 1), LK)
    else:
        lk_r = tl.zeros([BLOCK_M], dtype=tl.int32) + LK
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, LK, PER_K):
        g_c, j_c = _rows(g0, start, BLOCK_N, PER_K)
        col_ok = (g_c < G) & (j_c < LK)
        if HAS_NF:  # slots past a batch's count may hold anything (an uninitialized cache): never load them
            _, b_c = _group_base(g_c, heads, other, ksb, ksx, ksh)
            lk_c = tl.load(NF + b_c * nf_stride, mask=g_c < G, other=1).to(tl.int32)
            col_ok = col_ok & (j_c < tl.minimum(tl.maximum(lk_c, 1), LK))
        kbase, _ = _group_base(g_c, heads, other, ksb, ksx, ksh)
        vbase, _ = _group_base(g_c, heads, other, vsb, vsx, vsh)
        k = _load_tile(K, kbase, j_c, ksl, ksd, col_ok, offs_d, D)
        if HAS_NORM:
            k, _, _ = _layer_norm(k.to(tl.float32), w, bn, offs_d, D, eps)
            k = k.to(K.dtype.element_ty) if not F32 else k
        v = _load_tile(V, vbase, j_c, vsl, vsd, col_ok, offs_d, D)
        s = _dot(q, tl.trans(k), F32)
        ok = (g_r[:, None] == g_c[None, :]) & col_ok[None, :] & (j_c[None, :] < lk_r[:, None])
        if CAUSAL:
            ok = ok & (j_c[None, :] <= i_r[:, None] + (lk_r[:, None] - LQ))
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(V.dtype.element_ty) if not F32 else p, v, F32)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    obase, _ = _group_base(g_r, heads, other, osb, osx, osh)
    optr = O + obase[:, None] + i_r[:, None].to(tl.int64) * osl + offs_d[None, :] * osd
    tl.store(optr, (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < D))
    if STORE_LSE:
        lbase, _ = _group_base(g_r, heads, other, lsb, lsx, lsh)
        tl.store(LSE + lbase + i_r.to(tl.int64) * lsl, m_i + tl.log(l_safe), mask=row_ok)


@triton.jit
def _norm_params(W, Bn, offs_d, D, HAS_NORM: tl.constexpr):
    if HAS_NORM:
        w = tl.load(W + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
        bn = tl.load(Bn + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
    else:
        w = tl.zeros([offs_d.shape[0]], tl.float32)
        bn = tl.zeros([offs_d.shape[0]], tl.float32)
    return w, bn


@triton.jit
def _load_q_side(Q, DO, LSE, DELTA, g_r, i_r, row_ok, heads, other, qsb, qsx, qsl, qsh, qsd,
                 dsb, dsx, dsl, dsh, dsd, lsb, lsx, lsl, lsh, offs_d, D, w, bn, scale, eps, HAS_NORM: tl.constexpr):
    # The query side of the backward: scale * LayerNorm(q) (and its xhat, rstd), dO, lse and delta rows.
    qbase, _ = _group_base(g_r, heads, other, qsb, qsx, qsh)
    q = _load_tile(Q, qbase, i_r, qsl, qsd, row_ok, offs_d, D).to(tl.float32)
    qhat = q
    qrstd = tl.zeros([q.shape[0]], tl.float32)
    if HAS_NORM:
        q, qhat, qrstd = _layer_norm(q, w, bn, offs_d, D, eps)
    dbase, _ = _group_base(g_r, heads, other, dsb, dsx, dsh)
    do = _load_tile(DO, dbase, i_r, dsl, dsd, row_ok, offs_d, D).to(tl.float32)
    lbase, _ = _group_base(g_r, heads, other, lsb, lsx, lsh)
    lse = tl.load(LSE + lbase + i_r.to(tl.int64) * lsl, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + lbase + i_r.to(tl.int64) * lsl, mask=row_ok, other=0.0)
    return q * scale, qhat, qrstd, do, lse, delta


@triton.jit
def _load_k_side(K, V, g_c, j_c, col_ok, heads, other, ksb, ksx, ksl, ksh, ksd, vsb, vsx, vsl, vsh, vsd,
                 offs_d, D, w, bn, eps, HAS_NORM: tl.constexpr):
    kbase, _ = _group_base(g_c, heads, other, ksb, ksx, ksh)
    vbase, _ = _group_base(g_c, heads, other, vsb, vsx, vsh)
    k = _load_tile(K, kbase, j_c, ksl, ksd, col_ok, offs_d, D).to(tl.float32)
    khat = k
    krstd = tl.zeros([k.shape[0]], tl.float32)
    if HAS_NORM:
        k, khat, krstd = _layer_norm(k, w, bn, offs_d, D, eps)
    v = _load_tile(V, vbase, j_c, vsl, vsd, col_ok, offs_d, D).to(tl.float32)
    return k, khat, krstd, v


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, W, Bn, DWP,
                   qsb, qsx, qsl, qsh, qsd, ksb, ksx, ksl, ksh, ksd, vsb, vsx, vsl, vsh, vsd,
                   dsb, dsx, dsl, dsh, dsd, osb, osx, osl, osh, osd, lsb, lsx, lsl, lsh,
                   G, other, heads, LQ, LK, D, scale, eps,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PER_Q: tl.constexpr, PER_K: tl.constexpr,
                   BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_NORM: tl.constexpr):
    SEQS: tl.constexpr = BLOCK_M // PER_Q
    g0 = tl.program_id(0) * SEQS
    g_r, i_r = _rows(g0, tl.program_id(1) * PER_Q, BLOCK_M, PER_Q)
    row_ok = (g_r < G) & (i_r < LQ)
    offs_d = tl.arange(0, BLOCK_D)
    w, bn = _norm_params(W, Bn, offs_d, D, HAS_NORM)
    qs, qhat, qrstd, do, lse, delta = _load_q_side(Q, DO, LSE, DELTA, g_r, i_r, row_ok, heads, other,
                                                   qsb, qsx, qsl, qsh, qsd, dsb, dsx, dsl, dsh, dsd,
                                                   lsb, lsx, lsl, lsh, offs_d, D, w, bn, scale, eps, HAS_NORM)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, LK, PER_K):
        g_c, j_c = _rows(g0, start, BLOCK_N, PER_K)
        col_ok = (g_c < G) & (j_c < LK)
        k, _, _, v = _load_k_side(K, V, g_c, j_c, col_ok, heads, other, ksb, ksx, ksl, ksh, ksd,
                                  vsb, vsx, vsl, vsh, vsd, offs_d, D, w, bn, eps, HAS_NORM)
        ok = (g_r[:, None] == g_c[None, :]) & col_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            ok = ok & (j_c[None, :] <= i_r[:, None] + (LK - LQ))
        p = tl.where(ok, tl.exp(tl.dot(qs, tl.trans(k), input_precision="ieee") - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds, k, input_precision="ieee")
    dq = dq * scale
    if HAS_NORM:
        part = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * 2 * BLOCK_D
        tl.store(DWP + part + offs_d, tl.sum(dq * qhat, 0))
        tl.store(DWP + part + BLOCK_D + offs_d, tl.sum(dq, 0))
        dq = _layer_norm_backward(dq, qhat, qrstd, w, offs_d, D)
    obase, _ = _group_base(g_r, heads, other, osb, osx, osh)
    tl.store(DQ + obase[:, None] + i_r[:, None].to(tl.int64) * osl + offs_d[None, :] * osd,
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, W, Bn, DWP,
                     qsb, qsx, qsl, qsh, qsd, ksb, ksx, ksl, ksh, ksd, vsb, vsx, vsl, vsh, vsd,
                     dsb, dsx, dsl, dsh, dsd, osb, osx, osl, osh, osd, lsb, lsx, lsl, lsh,
                     G, other, heads, LQ, LK, D, scale, eps,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PER_Q: tl.constexpr, PER_K: tl.constexpr,
                     BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_NORM: tl.constexpr):
    SEQS: tl.constexpr = BLOCK_N // PER_K
    g0 = tl.program_id(0) * SEQS
    g_c, j_c = _rows(g0, tl.program_id(1) * PER_K, BLOCK_N, PER_K)
    col_ok = (g_c < G) & (j_c < LK)
    offs_d = tl.arange(0, BLOCK_D)
    w, bn = _norm_params(W, Bn, offs_d, D, HAS_NORM)
    k, khat, krstd, v = _load_k_side(K, V, g_c, j_c, col_ok, heads, other, ksb, ksx, ksl, ksh, ksd,
                                     vsb, vsx, vsl, vsh, vsd, offs_d, D, w, bn, eps, HAS_NORM)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, LQ, PER_Q):
        g_r, i_r = _rows(g0, start, BLOCK_M, PER_Q)
        row_ok = (g_r < G) & (i_r < LQ)
        qs, _, _, do, lse, delta = _load_q_side(Q, DO, LSE, DELTA, g_r, i_r, row_ok, heads, other,
                                                qsb, qsx, qsl, qsh, qsd, dsb, dsx, dsl, dsh, dsd,
                                                lsb, lsx, lsl, lsh, offs_d, D, w, bn, scale, eps, HAS_NORM)
        ok = (g_c[:, None] == g_r[None, :]) & col_ok[:, None] & row_ok[None, :]
        if CAUSAL:
            ok = ok & (j_c[:, None] <= i_r[None, :] + (LK - LQ))
        pt = tl.where(ok, tl.exp(tl.dot(k, tl.trans(qs), input_precision="ieee") - lse[None, :]), 0.0)
        dv += tl.dot(pt, do, input_precision="ieee")
        dpt = tl.dot(v, tl.trans(do), input_precision="ieee")
        dk += tl.dot(pt * (dpt - delta[None, :]), qs, input_precision="ieee")
    if HAS_NORM:
        part = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * 2 * BLOCK_D
        tl.store(DWP + part + offs_d, tl.sum(dk * khat, 0))
        tl.store(DWP + part + BLOCK_D + offs_d, tl.sum(dk, 0))
        dk = _layer_norm_backward(dk, khat, krstd, w, offs_d, D)
    mask = col_ok[:, None] & (offs_d[None, :] < D)
    obase, _ = _group_base(g_c, heads, other, osb, osx, osh)
    offs = obase[:, None] + j_c[:, None].to(tl.int64) * osl + offs_d[None, :] * osd
    tl.store(DK + offs, dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=mask)


# --- host side ---------------------------------------------------------------------------------------------------


def _roles(t: torch.Tensor, temporal: bool) -> tuple[int, ...]:
    """Strides of a (B, T, S, H[, D]) tensor by role: batch, other token axis, sequence axis, head, dim."""
    st = t.stride()
    d = st[4] if t.dim() == 5 else 0
    return (st[0], st[2], st[1], st[3], d) if temporal else (st[0], st[1], st[2], st[3], d)


def _blocks(lq: int, lk: int, d: int) -> dict:
    """Tile sizes: short sequences (<= 64 positions) are packed SEQS to a program; long ones tiled by 64."""
    per_q = triton.next_power_of_2(lq) if lq <= 64 else 64
    per_k = triton.next_power_of_2(lk) if lk <= 64 else 64
    seqs = max(1, 64 // max(per_q, per_k)) if lq <= 64 and lk <= 64 else 1
    seqs = max(seqs, triton.cdiv(16, per_q), triton.cdiv(16, per_k))  # tl.dot needs 16-wide tiles
    return dict(BLOCK_M=seqs * per_q, BLOCK_N=seqs * per_k, PER_Q=per_q, PER_K=per_k,
                BLOCK_D=max(16, triton.next_power_of_2(d)))


def _sizes(q, k, temporal):
    b, t, s, h, d = q.shape
    other, lq, lk = (s, t, k.shape[1]) if temporal else (t, s, k.shape[2])
    return b * other * h, other, h, lq, lk, d


def _norm_args(q, weight, bias):
    if weight is None:
        dummy = q.new_empty((1,), dtype=torch.float32)
        return dummy, dummy
    return weight, (bias if bias is not None else torch.zeros_like(weight))


def _forward(q, k, v, temporal, causal, scale, weight, bias, eps):
    groups, other, heads, lq, lk, d = _sizes(q, k, temporal)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:4], dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    blk = _blocks(lq, lk, d)
    w, bn = _norm_args(q, weight, bias)
    grid = (triton.cdiv(groups, blk["BLOCK_M"] // blk["PER_Q"]), triton.cdiv(lq, blk["PER_Q"]))
    _fwd_kernel[grid](q, k, v, out, lse, lse, w, bn,
                      *_roles(q, temporal), *_roles(k, temporal), *_roles(v, temporal), *_roles(out, temporal),
                      *_roles(lse, temporal)[:4], 0,
                      groups, other, heads, lq, lk, d, scale, eps, **blk, CAUSAL=causal, HAS_NORM=weight is not None,
                      HAS_NF=False, STORE_LSE=True, F32=q.dtype == torch.float32)
    return out, lse


def _backward(grad_out, q, k, v, out, lse, temporal, causal, scale, weight, bias, eps):
    groups, other, heads, lq, lk, d = _sizes(q, k, temporal)
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    delta = (grad_out.float() * out.float()).sum(-1)  # (B, T, S, H), laid out like lse
    blk = _blocks(lq, lk, d)
    w, bn = _norm_args(q, weight, bias)
    seqs = blk["BLOCK_M"] // blk["PER_Q"]
    grid_q = (triton.cdiv(groups, seqs), triton.cdiv(lq, blk["PER_Q"]))
    grid_k = (triton.cdiv(groups, seqs), triton.cdiv(lk, blk["PER_K"]))
    parts = [torch.zeros((g[0] * g[1], 2, blk["BLOCK_D"]), dtype=torch.float32, device=q.device) for g in (grid_q, grid_k)]
    common = (*_roles(q, temporal), *_roles(k, temporal), *_roles(v, temporal), *_roles(grad_out, temporal))
    lse_roles = _roles(lse, temporal)[:4]
    meta = dict(**blk, CAUSAL=causal, HAS_NORM=weight is not None)
    if q.numel() and k.numel():
        _bwd_dq_kernel[grid_q](q, k, v, grad_out, lse, delta.contiguous(), dq, w, bn, parts[0], *common,
                               *_roles(dq, temporal), *lse_roles, groups, other, heads, lq, lk, d, scale, eps, **meta)
        _bwd_dkdv_kernel[grid_k](q, k, v, grad_out, lse, delta.contiguous(), dk, dv, w, bn, parts[1], *common,
                                 *_roles(dk, temporal), *lse_roles, groups, other, heads, lq, lk, d, scale, eps, **meta)
    else:
        dq.zero_(), dk.zero_(), dv.zero_()
    if weight is None:
        return dq, dk, dv, None, None
    total = (parts[0].sum(0) + parts[1].sum(0))[:, :d]
    db = total[1].to(bias.dtype) if bias is not None else None
    return dq, dk, dv, total[0].to(weight.dtype), db


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, weight, bias, temporal, causal, scale, eps):
        out, lse = _forward(q, k, v, temporal, causal, scale, weight, bias, eps)
        ctx.save_for_backward(q, k, v, out, lse, weight, bias)
        ctx.args = (temporal, causal, scale, eps)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, weight, bias = ctx.saved_tensors
        temporal, causal, scale, eps = ctx.args
        dq, dk, dv, dw, db = _backward(grad_out, q, k, v, out, lse, temporal, causal, scale, weight, bias, eps)
        return dq, dk, dv, dw, db, None, None, None, None


def attention(q, k, v, temporal, causal, scale, weight, bias, eps):
    """Spatial (temporal=False) or temporal attention on (B, T, S, H, D) views; differentiable."""
    return _Attention.apply(q, k, v, weight, bias, temporal, causal, scale, eps)


def frame_decode(q, k_cache, v_cache, num_frames, scale):
    """q (B, S, H, D) over caches (B, T_max, S, H, D); num_frames read on the device, clamped to [1, T_max]."""
    b, s, h, d = q.shape
    t_max = k_cache.shape[1]
    q5 = q.unsqueeze(1)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    out5 = out.unsqueeze(1)
    blk = _blocks(1, t_max, d)
    groups = b * s * h
    grid = (triton.cdiv(groups, blk["BLOCK_M"] // blk["PER_Q"]), 1)
    nf = num_frames.reshape(-1)
    _fwd_kernel[grid](q5, k_cache, v_cache, out5, out, nf, out, out,
                      *_roles(q5, True), *_roles(k_cache, True), *_roles(v_cache, True), *_roles(out5, True),
                      0, 0, 0, 0, 1 if nf.numel() > 1 else 0,
                      groups, s, h, 1, t_max, d, scale, 0.0, **blk, CAUSAL=False, HAS_NORM=False, HAS_NF=True,
                      STORE_LSE=False, F32=q.dtype == torch.float32)
    return out
