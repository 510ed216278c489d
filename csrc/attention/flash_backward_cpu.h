#pragma once
// Backward of the CPU flash-attention engine (see flash_cpu.h). Per group, dK and dV accumulate in fp32
// tiles over all query tiles, so no two threads ever write the same row and the result is deterministic.
// The probabilities are recomputed from the saved log-sum-exp: P = exp(scale * q.k - lse).
// With the qk LayerNorm, dq and dk go back through it, and each group sums its share of the weight and
// bias gradients into its own slot of `dnorm` (summed by the caller in group order), so the result does not
// depend on how the groups were split over threads.
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

// dnorm: (groups, 2, D) zeroed when the qk LayerNorm is on; slot = group index.
template <typename scalar_t, typename acc_t, typename Kern>
void flash_backward(const Problem& p, Operand<scalar_t> q, Operand<scalar_t> k, Operand<scalar_t> v,
                    Operand<scalar_t> out, Operand<scalar_t> dout, const acc_t* lse, Roles ls, MutOperand<scalar_t> dq,
                    MutOperand<scalar_t> dk, MutOperand<scalar_t> dv_, const Norm<acc_t>& norm, acc_t* dnorm) {
  const int64_t groups = num_groups(p);
  if (groups == 0) return;
  const int64_t d = p.dim, dv = round_up(d, 16), lq = p.lq, lk = p.lk;
  const acc_t scale = static_cast<acc_t>(p.scale);
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, lq * lk));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    KeyPack<acc_t> pack;
    pack.resize(lk, d, true, norm.on);
    const int64_t lkp = pack.lkp;
    std::vector<acc_t> row(dv), qt(kTileQ * dv), dot(kTileQ * dv), sc(kTileQ * kTileK), dp(kTileQ * kTileK),
        pt(kTileK * kTileQ), dqt(kTileQ * dv), delta(kTileQ), lrow(kTileQ), qhat(kTileQ * d), qrstd(kTileQ),
        dkt(lkp * dv), dvt(lkp * dv), dx(d);
    for (int64_t g = begin; g < end; ++g) {
      const int64_t h = g % p.heads, x = (g / p.heads) % p.other, b = g / (p.heads * p.other);
      acc_t* dw = norm.on ? dnorm + g * 2 * d : nullptr;
      acc_t* db = norm.on ? dw + d : nullptr;
      if (g + 1 < end) {
        const int64_t hn = (g + 1) % p.heads, xn = ((g + 1) / p.heads) % p.other, bn = (g + 1) / (p.heads * p.other);
        // The first rows only: the packing loops prefetch the rest as they go (see prefetch_row).
        const int64_t nq = std::min(lq, kPrefetchRows), nk = std::min(lk, kPrefetchRows);
        prefetch_rows(q.group(bn, xn, hn), nq, q.st.l, q.st.d, d);
        prefetch_rows(out.group(bn, xn, hn), nq, out.st.l, out.st.d, d);
        prefetch_rows(dout.group(bn, xn, hn), nq, dout.st.l, dout.st.d, d);
        prefetch_rows(k.group(bn, xn, hn), nk, k.st.l, k.st.d, d);
        prefetch_rows(v.group(bn, xn, hn), nk, v.st.l, v.st.d, d);
      }
      pack_keys<Kern>(k.group(b, x, h), k.st, v.group(b, x, h), v.st, lk, d, norm, true, pack);
      std::fill(dkt.begin(), dkt.end(), acc_t(0));
      std::fill(dvt.begin(), dvt.end(), acc_t(0));
      const scalar_t* og = out.group(b, x, h);
      const scalar_t* dog = dout.group(b, x, h);
      for (int64_t i0 = 0; i0 < lq; i0 += kTileQ) {
        const int64_t mq = std::min(kTileQ, lq - i0), mq4 = round_up(mq, 4);
        pack_queries<Kern>(q.group(b, x, h), q.st, i0, mq, d, dv, scale, norm, qt.data(), qhat.data(), qrstd.data());
        for (int64_t r = 0; r < mq; ++r) {
          if (r + kPrefetchRows < mq) {
            prefetch_row(dog + (i0 + r + kPrefetchRows) * dout.st.l, dout.st.d, d);
            prefetch_row(og + (i0 + r + kPrefetchRows) * out.st.l, out.st.d, d);
          }
          load_row(dog + (i0 + r) * dout.st.l, dout.st.d, d, dv, dot.data() + r * dv);
          load_row(og + (i0 + r) * out.st.l, out.st.d, d, dv, row.data());
          delta[r] = Kern::dot(dot.data() + r * dv, row.data(), d);  // rowsum(dO * O): the softmax backward's shift
          lrow[r] = lse[b * ls.b + x * ls.x + (i0 + r) * ls.l + h * ls.h];
        }
        std::fill(dot.begin() + mq * dv, dot.begin() + mq4 * dv, acc_t(0));
        std::fill(dqt.begin(), dqt.begin() + mq4 * dv, acc_t(0));
        const int64_t key_end = visible_keys(i0 + mq - 1, lq, lk, p.causal);
        for (int64_t kb = 0; kb < key_end; kb += kTileK) {
          const int64_t nk = std::min(kTileK, key_end - kb), nkp = round_up(nk, 16);
          Kern::gemm(qt.data(), dv, pack.kt.data() + kb, lkp, sc.data(), kTileK, mq4, nkp, d, false);
          for (int64_t r = 0; r < mq4; ++r) {
            acc_t* s = sc.data() + r * kTileK;
            const int64_t nv = r < mq ? std::clamp<int64_t>(visible_keys(i0 + r, lq, lk, p.causal) - kb, 0, nk) : 0;
            if (nv > 0) Kern::exp_shift(s, nv, lrow[r]);
            std::fill(s + nv, s + nkp, acc_t(0));
          }
          // dV += P^T dO
          gemm_at_b<Kern>(sc.data(), kTileK, mq4, nkp, pt.data(), dot.data(), dv, dvt.data() + kb * dv, dv);
          // dS = P * (dO V^T - delta)
          Kern::gemm(dot.data(), dv, pack.vt.data() + kb, lkp, dp.data(), kTileK, mq4, nkp, d, false);
          for (int64_t r = 0; r < mq4; ++r) {
            acc_t* s = sc.data() + r * kTileK;
            const acc_t* dpr = dp.data() + r * kTileK;
            Kern::softmax_grad(s, dpr, nkp, r < mq ? delta[r] : acc_t(0));
          }
          // dQs += dS K, dK += dS^T Qs (Qs already holds the scale)
          Kern::gemm(sc.data(), kTileK, pack.kr.data() + kb * dv, dv, dqt.data(), dv, mq4, dv, nk, true);
          gemm_at_b<Kern>(sc.data(), kTileK, mq4, nkp, pt.data(), qt.data(), dv, dkt.data() + kb * dv, dv);
        }
        scalar_t* dqg = dq.group(b, x, h);
        for (int64_t r = 0; r < mq; ++r) {
          acc_t* g_row = dqt.data() + r * dv;
          scalar_t* dst = dqg + (i0 + r) * dq.st.l;
          if (norm.on) {
            Kern::scale(g_row, d, scale, g_row);
            layer_norm_row_backward(g_row, qhat.data() + r * d, d, norm.w.data(), qrstd[r], dx.data(), dw, db);
            store_row<Kern>(dx.data(), d, acc_t(1), dst, dq.st.d);
          } else {
            store_row<Kern>(g_row, d, scale, dst, dq.st.d);
          }
        }
      }
      scalar_t* dkg = dk.group(b, x, h);
      scalar_t* dvg = dv_.group(b, x, h);
      for (int64_t j = 0; j < lk; ++j) {
        const acc_t* src = dkt.data() + j * dv;
        if (norm.on) {
          layer_norm_row_backward(src, pack.khat.data() + j * d, d, norm.w.data(), pack.krstd[j], dx.data(), dw, db);
          src = dx.data();
        }
        store_row<Kern>(src, d, acc_t(1), dkg + j * dk.st.l, dk.st.d);
        store_row<Kern>(dvt.data() + j * dv, d, acc_t(1), dvg + j * dv_.st.l, dv_.st.d);
      }
    }
  });
}

}  // namespace wmk::attention::cpu
