#pragma once
// The CPU flash-attention backward (the forward and the packing helpers: see flash_cpu.h). Per group, dK and
// dV accumulate in fp32 tiles over all query tiles, so no two threads ever write the same row and the result
// is deterministic. The probabilities are recomputed from the saved log-sum-exp: P = exp(scale * q.k - lse).
// With the qk LayerNorm, dq and dk go back through it, and each group sums its share of the weight and
// bias gradients into its own slot of `dnorm` (summed by the caller in group order), so the result does not
// depend on how the groups were split over threads. Short sequences (<= 16 frames) go a position at a time
// across the heads, as in the forward.
#include "attention/flash_cpu.h"

namespace wmk::attention::cpu {

// C[nkp x n] += A^T B for the mq4 x nkp tile A (leading dimension lda): straight from A where the kernels
// read it transposed, else through the scratch `at` (nkp x kTileQ).
template <typename Kern, typename acc_t>
inline void gemm_at_b(const acc_t* a, int64_t lda, int64_t mq4, int64_t nkp, acc_t* at, const acc_t* b, int64_t n,
                      acc_t* c, int64_t ldc) {
  if constexpr (Kern::kHasGemmTn) {
    Kern::gemm_tn(a, lda, b, n, c, ldc, nkp, n, mq4, true);
  } else {
    Kern::transpose(a, lda, mq4, nkp, at, kTileQ);
    Kern::gemm(at, kTileQ, b, n, c, ldc, nkp, n, mq4, true);
  }
}

// One head's state in the backward: its packed keys, the dK/dV accumulators, and the current query tile
// (scaled normalized q, dO, rowsum(dO * O), the log-sum-exp, and the qk LayerNorm's saved values).
template <typename acc_t>
struct BackwardHead {
  KeyPack<acc_t> pack;
  std::vector<acc_t> dkt, dvt, qt, dot, delta, lrow, qhat, qrstd;

  void resize(int64_t lk, int64_t d, bool norm) {
    pack.resize(lk, d, true, norm);
    const int64_t dv = pack.dv;
    dkt.assign(pack.lkp * dv, 0);
    dvt.assign(pack.lkp * dv, 0);
    qt.assign(kTileQ * dv, 0);
    dot.assign(kTileQ * dv, 0);
    delta.assign(kTileQ, 0);
    lrow.assign(kTileQ, 0);
    qhat.assign(kTileQ * d, 0);
    qrstd.assign(kTileQ, 0);
  }
};

// Per-thread scratch shared by the heads: score and dP tiles, the transposed tile, dQ of the tile, rows.
template <typename acc_t>
struct BackwardScratch {
  std::vector<acc_t> sc, dp, pt, dqt, row, dx;
  BackwardScratch(int64_t d, int64_t dv)
      : sc(kTileQ * kTileK), dp(kTileQ * kTileK), pt(kTileK * kTileQ), dqt(kTileQ * dv), row(dv), dx(d) {}
};

// The operands of one backward call.
template <typename scalar_t, typename acc_t>
struct BackwardArgs {
  Operand<scalar_t> q, k, v, out, dout;
  const acc_t* lse;
  Roles ls;
  MutOperand<scalar_t> dq, dk, dv;
  const Norm<acc_t>* norm;
  acc_t* dnorm;
};

// Query row r (of the tile starting at i0) of group (b, x, h) into the head's tile.
template <typename Kern, typename scalar_t, typename acc_t>
inline void load_backward_row(const Problem& p, const BackwardArgs<scalar_t, acc_t>& a, int64_t b, int64_t x,
                              int64_t h, int64_t i0, int64_t r, BackwardHead<acc_t>& hd, BackwardScratch<acc_t>& s) {
  const int64_t d = p.dim, dv = hd.pack.dv, i = i0 + r;
  pack_query_row<Kern>(a.q.group(b, x, h) + i * a.q.st.l, a.q.st.d, d, dv, static_cast<acc_t>(p.scale), *a.norm,
                       hd.qt.data() + r * dv, hd.qhat.data() + r * d, hd.qrstd.data() + r);
  load_row(a.dout.group(b, x, h) + i * a.dout.st.l, a.dout.st.d, d, dv, hd.dot.data() + r * dv);
  load_row(a.out.group(b, x, h) + i * a.out.st.l, a.out.st.d, d, dv, s.row.data());
  hd.delta[r] = Kern::dot(hd.dot.data() + r * dv, s.row.data(), d);  // rowsum(dO * O): the softmax backward's shift
  hd.lrow[r] = a.lse[b * a.ls.b + x * a.ls.x + i * a.ls.l + h * a.ls.h];
}

// The tile's share of the gradients once its rows are loaded: dK and dV accumulate in the head's tiles; dQ of
// the tile's mq rows is written out (through the qk LayerNorm's backward, its weight gradients into slot g).
template <typename Kern, typename scalar_t, typename acc_t>
void backward_tile(const Problem& p, const BackwardArgs<scalar_t, acc_t>& a, int64_t b, int64_t x, int64_t h,
                   int64_t lk, int64_t i0, int64_t mq, BackwardHead<acc_t>& hd, BackwardScratch<acc_t>& s) {
  const int64_t d = p.dim, dv = hd.pack.dv, lkp = hd.pack.lkp, lq = p.lq, mq4 = round_up(mq, 4);
  const acc_t scale = static_cast<acc_t>(p.scale);
  std::fill(hd.qt.begin() + mq * dv, hd.qt.begin() + mq4 * dv, acc_t(0));
  std::fill(hd.dot.begin() + mq * dv, hd.dot.begin() + mq4 * dv, acc_t(0));
  std::fill(s.dqt.begin(), s.dqt.begin() + mq4 * dv, acc_t(0));
  const int64_t key_end = visible_keys(i0 + mq - 1, lq, lk, p.causal);
  for (int64_t kb = 0; kb < key_end; kb += kTileK) {
    const int64_t nk = std::min(kTileK, key_end - kb), nkp = round_up(nk, 16);
    Kern::gemm(hd.qt.data(), dv, hd.pack.kt.data() + kb, lkp, s.sc.data(), kTileK, mq4, nkp, d, false);
    for (int64_t r = 0; r < mq4; ++r) {
      acc_t* sr = s.sc.data() + r * kTileK;
      const int64_t nv = r < mq ? std::clamp<int64_t>(visible_keys(i0 + r, lq, lk, p.causal) - kb, 0, nk) : 0;
      if (nv > 0) Kern::exp_shift(sr, nv, hd.lrow[r]);
      std::fill(sr + nv, sr + nkp, acc_t(0));
    }
    // dV += P^T dO
    gemm_at_b<Kern>(s.sc.data(), kTileK, mq4, nkp, s.pt.data(), hd.dot.data(), dv, hd.dvt.data() + kb * dv, dv);
    // dS = P * (dO V^T - delta)
    Kern::gemm(hd.dot.data(), dv, hd.pack.vt.data() + kb, lkp, s.dp.data(), kTileK, mq4, nkp, d, false);
    for (int64_t r = 0; r < mq4; ++r)
      Kern::softmax_grad(s.sc.data() + r * kTileK, s.dp.data() + r * kTileK, nkp, r < mq ? hd.delta[r] : acc_t(0));
    // dQs += dS K, dK += dS^T Qs (Qs already holds the scale)
    Kern::gemm(s.sc.data(), kTileK, hd.pack.kr.data() + kb * dv, dv, s.dqt.data(), dv, mq4, dv, nk, true);
    gemm_at_b<Kern>(s.sc.data(), kTileK, mq4, nkp, s.pt.data(), hd.qt.data(), dv, hd.dkt.data() + kb * dv, dv);
  }
  const Norm<acc_t>& norm = *a.norm;
  const int64_t g = (b * p.other + x) * p.heads + h;
  acc_t* dw = norm.on ? a.dnorm + g * 2 * d : nullptr;
  scalar_t* dqg = a.dq.group(b, x, h);
  for (int64_t r = 0; r < mq; ++r) {
    acc_t* g_row = s.dqt.data() + r * dv;
    scalar_t* dst = dqg + (i0 + r) * a.dq.st.l;
    if (norm.on) {
      Kern::scale(g_row, d, scale, g_row);
      layer_norm_row_backward(g_row, hd.qhat.data() + r * d, d, norm.w.data(), hd.qrstd[r], s.dx.data(), dw, dw + d);
      store_row<Kern>(s.dx.data(), d, acc_t(1), dst, a.dq.st.d);
    } else {
      store_row<Kern>(g_row, d, scale, dst, a.dq.st.d);
    }
  }
}

// dK and dV row j of group (b, x, h), from the head's accumulators (through the qk LayerNorm's backward).
template <typename Kern, typename scalar_t, typename acc_t>
inline void store_key_grads(const Problem& p, const BackwardArgs<scalar_t, acc_t>& a, int64_t b, int64_t x, int64_t h,
                            int64_t j, const BackwardHead<acc_t>& hd, BackwardScratch<acc_t>& s) {
  const int64_t d = p.dim, dv = hd.pack.dv;
  const acc_t* src = hd.dkt.data() + j * dv;
  if (a.norm->on) {
    acc_t* dw = a.dnorm + ((b * p.other + x) * p.heads + h) * 2 * d;
    layer_norm_row_backward(src, hd.pack.khat.data() + j * d, d, a.norm->w.data(), hd.pack.krstd[j], s.dx.data(), dw,
                            dw + d);
    src = s.dx.data();
  }
  store_row<Kern>(src, d, acc_t(1), a.dk.group(b, x, h) + j * a.dk.st.l, a.dk.st.d);
  store_row<Kern>(hd.dvt.data() + j * dv, d, acc_t(1), a.dv.group(b, x, h) + j * a.dv.st.l, a.dv.st.d);
}

// Short sequences: a position (b, x) at a time with all its heads, rows read frame by frame across the heads
// and the next position's prefetched meanwhile (see short_forward).
template <typename scalar_t, typename acc_t, typename Kern>
void short_backward(const Problem& p, const BackwardArgs<scalar_t, acc_t>& a) {
  const int64_t heads = p.heads, d = p.dim, lq = p.lq;
  at::parallel_for(0, p.batch * p.other, 1, [&](int64_t begin, int64_t end) {
    std::vector<BackwardHead<acc_t>> hds(heads);
    for (auto& hd : hds) hd.resize(p.lk, d, a.norm->on);
    BackwardScratch<acc_t> s(d, round_up(d, 16));
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t x = pos % p.other, b = pos / p.other, lk = p.lk;
      const NextPosition<scalar_t> next(pos, end, p.other);
      pack_position_keys<Kern>(p, a.k, a.v, b, x, lk, next, lk, *a.norm, true,
                               [&](int64_t h) -> KeyPack<acc_t>& { return hds[h].pack; });
      for (auto& hd : hds) {
        std::fill(hd.dkt.begin(), hd.dkt.end(), acc_t(0));
        std::fill(hd.dvt.begin(), hd.dvt.end(), acc_t(0));
      }
      for (int64_t i0 = 0; i0 < lq; i0 += kShortTileQ) {
        const int64_t mq = std::min(kShortTileQ, lq - i0);
        for (int64_t r = 0; r < mq; ++r) {
          next.prefetch(a.q, heads, i0 + r, d);
          next.prefetch(a.dout, heads, i0 + r, d);
          next.prefetch(a.out, heads, i0 + r, d);
          for (int64_t h = 0; h < heads; ++h) load_backward_row<Kern>(p, a, b, x, h, i0, r, hds[h], s);
        }
        for (int64_t h = 0; h < heads; ++h) backward_tile<Kern>(p, a, b, x, h, lk, i0, mq, hds[h], s);
      }
      for (int64_t j = 0; j < lk; ++j)
        for (int64_t h = 0; h < heads; ++h) store_key_grads<Kern>(p, a, b, x, h, j, hds[h], s);
    }
  });
}

// dnorm: (groups, 2, D) zeroed when the qk LayerNorm is on; slot = group index.
template <typename scalar_t, typename acc_t, typename Kern>
void flash_backward(const Problem& p, const BackwardArgs<scalar_t, acc_t>& a) {
  if (num_groups(p) == 0) return;
  if constexpr (Kern::kHasShort) {
    if (round_up(std::max<int64_t>(p.lk, 1), 16) == Kern::kShortKeys) return short_backward<scalar_t, acc_t, Kern>(p, a);
  }
  const int64_t d = p.dim, lq = p.lq, lk = p.lk;
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, lq * lk));
  at::parallel_for(0, num_groups(p), grain, [&](int64_t begin, int64_t end) {
    BackwardHead<acc_t> hd;
    hd.resize(lk, d, a.norm->on);
    BackwardScratch<acc_t> s(d, hd.pack.dv);
    for (int64_t g = begin; g < end; ++g) {
      const int64_t h = g % p.heads, x = (g / p.heads) % p.other, b = g / (p.heads * p.other);
      if (g + 1 < end) {
        const int64_t hn = (g + 1) % p.heads, xn = ((g + 1) / p.heads) % p.other, bn = (g + 1) / (p.heads * p.other);
        // The first rows only: the packing loops prefetch the rest as they go (see prefetch_row).
        const int64_t nq = std::min(lq, kPrefetchRows), nk = std::min(lk, kPrefetchRows);
        for (const auto* t : {&a.q, &a.out, &a.dout}) prefetch_rows(t->group(bn, xn, hn), nq, t->st.l, t->st.d, d);
        for (const auto* t : {&a.k, &a.v}) prefetch_rows(t->group(bn, xn, hn), nk, t->st.l, t->st.d, d);
      }
      pack_keys<Kern>(a.k.group(b, x, h), a.k.st, a.v.group(b, x, h), a.v.st, lk, d, *a.norm, true, hd.pack);
      std::fill(hd.dkt.begin(), hd.dkt.end(), acc_t(0));
      std::fill(hd.dvt.begin(), hd.dvt.end(), acc_t(0));
      for (int64_t i0 = 0; i0 < lq; i0 += kTileQ) {
        const int64_t mq = std::min(kTileQ, lq - i0);
        for (int64_t r = 0; r < mq; ++r) {
          if (r + kPrefetchRows < mq) {
            const int64_t i = i0 + r + kPrefetchRows;
            for (const auto* t : {&a.q, &a.out, &a.dout}) prefetch_row(t->group(b, x, h) + i * t->st.l, t->st.d, d);
          }
          load_backward_row<Kern>(p, a, b, x, h, i0, r, hd, s);
        }
        backward_tile<Kern>(p, a, b, x, h, lk, i0, mq, hd, s);
      }
      for (int64_t j = 0; j < lk; ++j) store_key_grads<Kern>(p, a, b, x, h, j, hd, s);
    }
  });
}

}  // namespace wmk::attention::cpu
