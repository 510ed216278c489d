#pragma once
// AVX-512 versions of the CPU attention inner loops (float only), chosen at run time where the CPU has
// AVX-512F/VL/BW/DQ (see `with_kernels` in attention_cpu.cpp). Same contracts as Avx2Kernels, from which the
// row helpers (layer_norm, transpose, hmax, hsum) are inherited. What AVX-512 buys here is registers: 32 of
// them hold an 8-row x 32-column accumulator tile (16 zmm) plus operands, twice the tile the 16 AVX2
// registers allow, so every loaded operand feeds twice the FMAs. The zmm exp also halves the softmax's
// instruction count, and a 16-key temporal sequence is exactly one register.
#include "attention/cpu_microkernels.h"

#if WMK_HAVE_AVX2_PATH
#define WMK_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

namespace wmk::attention::cpu {

struct Avx512Kernels : Avx2Kernels {
  static bool usable() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  }

  // exp8's range reduction and polynomial on 16 lanes (the same coefficients, so the same values).
  WMK_AVX512 static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    const __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                           _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, fx);  // y * 2^fx: fx is an integer in [-126, 0] here, so this is exp8's product
  }

  // Sum of 16 lanes in a fixed order (the two halves through the AVX2 pairwise order).
  WMK_AVX512 static inline float hsum16(__m512 x) {
    return hsum(_mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1)));
  }

  WMK_AVX512 static inline __mmask16 first_lanes(int64_t n) {
    return n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n > 0 ? n : 0)) - 1u);
  }

  // One MR x (16 * NV) tile of C (+)= A B over k; A is read transposed (A[kk][r], leading dimension lda) when
  // TransA. Constant bounds, so the accumulators stay in registers.
  template <int MR, int NV, bool TransA>
  WMK_AVX512 static inline void tile(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                                     int64_t k, bool accumulate) {
    __m512 acc[MR][NV];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * v) : _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; ++kk) {
      __m512 bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + kk * ldb + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(TransA ? a[kk * lda + r] : a[r * lda + kk]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
  }

  template <bool TransA>
  WMK_AVX512 static void gemm_impl(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                                   int64_t m, int64_t n, int64_t k, bool accumulate) {
    // Column panels outside (a 32-wide panel of B stays in L1 while the row blocks of A pass), 8-row blocks
    // inside; m is a multiple of 4 and n of 16 (the callers pad).
    auto a_rows = [&](int64_t i) { return TransA ? a + i : a + i * lda; };
    for (int64_t j = 0; j < n; j += 32) {
      const bool two = j + 32 <= n;
      int64_t i = 0;
      for (; i + 8 <= m; i += 8) {
        if (two)
          tile<8, 2, TransA>(a_rows(i), lda, b + j, ldb, c + i * ldc + j, ldc, k, accumulate);
        else
          tile<8, 1, TransA>(a_rows(i), lda, b + j, ldb, c + i * ldc + j, ldc, k, accumulate);
      }
      if (i < m) {
        if (two)
          tile<4, 2, TransA>(a_rows(i), lda, b + j, ldb, c + i * ldc + j, ldc, k, accumulate);
        else
          tile<4, 1, TransA>(a_rows(i), lda, b + j, ldb, c + i * ldc + j, ldc, k, accumulate);
      }
    }
  }

  // C[M x N] (+)= A[M x K] * B[K x N].
  WMK_AVX512 static void gemm(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                              int64_t m, int64_t n, int64_t k, bool accumulate) {
    gemm_impl<false>(a, lda, b, ldb, c, ldc, m, n, k, accumulate);
  }

  // C[M x N] (+)= A^T B with A stored K x M (leading dimension lda): the backward's P^T dO and dS^T Q
  // without transposing the probability tile first.
  static constexpr bool kHasGemmTn = true;
  WMK_AVX512 static void gemm_tn(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                                 int64_t m, int64_t n, int64_t k, bool accumulate) {
    gemm_impl<true>(a, lda, b, ldb, c, ldc, m, n, k, accumulate);
  }

  // layer_norm_row (common/attention.h) on 16 lanes: the same two-pass statistics with the mean-correction
  // pass, masked tails instead of scalar ones (rows of the qk LayerNorm are head dims: 16 to 256 values).
  WMK_AVX512 static float layer_norm(float* x, int64_t n, const float* w, const float* b, float eps, float* xhat) {
    __m512 s16 = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) s16 = _mm512_add_ps(s16, _mm512_maskz_loadu_ps(first_lanes(n - i), x + i));
    const float inv_n = 1.0f / static_cast<float>(n);
    float mean = _mm512_reduce_add_ps(s16) * inv_n;
    __m512 mean16 = _mm512_set1_ps(mean), c16 = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = first_lanes(n - i);
      c16 = _mm512_add_ps(c16, _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), mean16));
    }
    mean += _mm512_reduce_add_ps(c16) * inv_n;
    mean16 = _mm512_set1_ps(mean);
    __m512 v16 = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = first_lanes(n - i);
      const __m512 c = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), mean16);
      v16 = _mm512_fmadd_ps(c, c, v16);
    }
    const float rstd = 1.0f / std::sqrt(_mm512_reduce_add_ps(v16) * inv_n + eps);
    const __m512 rstd16 = _mm512_set1_ps(rstd);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = first_lanes(n - i);
      const __m512 h = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mean16), rstd16);
      if (xhat != nullptr) _mm512_mask_storeu_ps(xhat + i, m, h);
      const __m512 bias = b != nullptr ? _mm512_maskz_loadu_ps(m, b + i) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(x + i, m, _mm512_fmadd_ps(h, _mm512_maskz_loadu_ps(m, w + i), bias));
    }
    return rstd;
  }

  // layer_norm on `rows` rows of x (leading dimension ld) at once, for the decode's one row per head: with
  // d a multiple of 16 up to 64 and at most 16 rows, the three row reductions (sum, mean correction, squares)
  // of all rows go through one lane-transposing add tree each, instead of three dependent horizontal
  // reductions per row. Otherwise row by row.
  WMK_AVX512 static void layer_norm_rows(float* x, int64_t rows, int64_t ld, int64_t d, const float* w, const float* b,
                                         float eps) {
    if (d % 16 != 0 || d > 64 || rows > 16) {
      for (int64_t r = 0; r < rows; ++r) layer_norm(x + r * ld, d, w, b, eps, nullptr);
      return;
    }
    const int64_t chunks = d / 16;
    const __m512 inv_d = _mm512_set1_ps(1.0f / static_cast<float>(d));
    __m512 acc[16];
    // Pass 1: row sums (lane r of the tree's result = row r; rows past `rows` stay zero).
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) {
      acc[r] = _mm512_setzero_ps();
      for (int64_t c = 0; c < chunks && r < rows; ++c) acc[r] = _mm512_add_ps(acc[r], _mm512_loadu_ps(x + r * ld + 16 * c));
    }
    const __m512 mean0 = _mm512_mul_ps(sum_lanes16(acc), inv_d);
    // Pass 2: the mean-correction pass of layer_norm_row (a near-constant row must normalize to zeros).
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) {
      const __m512 m = lane(mean0, r);
      acc[r] = _mm512_setzero_ps();
      for (int64_t c = 0; c < chunks && r < rows; ++c)
        acc[r] = _mm512_add_ps(acc[r], _mm512_sub_ps(_mm512_loadu_ps(x + r * ld + 16 * c), m));
    }
    const __m512 mean = _mm512_fmadd_ps(sum_lanes16(acc), inv_d, mean0);
    // Pass 3: variance.
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) {
      const __m512 m = lane(mean, r);
      acc[r] = _mm512_setzero_ps();
      for (int64_t c = 0; c < chunks && r < rows; ++c) {
        const __m512 v = _mm512_sub_ps(_mm512_loadu_ps(x + r * ld + 16 * c), m);
        acc[r] = _mm512_fmadd_ps(v, v, acc[r]);
      }
    }
    const __m512 var = _mm512_mul_ps(sum_lanes16(acc), inv_d);
    const __m512 rstd = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_sqrt_ps(_mm512_add_ps(var, _mm512_set1_ps(eps))));
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 mr = lane(mean, static_cast<int>(r)), sr = lane(rstd, static_cast<int>(r));
      for (int64_t c = 0; c < chunks; ++c) {
        const __m512 h = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + r * ld + 16 * c), mr), sr);
        const __m512 bias = b != nullptr ? _mm512_loadu_ps(b + 16 * c) : _mm512_setzero_ps();
        _mm512_storeu_ps(x + r * ld + 16 * c, _mm512_fmadd_ps(h, _mm512_loadu_ps(w + 16 * c), bias));
      }
    }
  }

  // Lane r of v in every lane.
  WMK_AVX512 static inline __m512 lane(__m512 v, int r) { return _mm512_permutexvar_ps(_mm512_set1_epi32(r), v); }

  WMK_AVX512 static float dot(const float* a, const float* b, int64_t n) {
    __m512 s16 = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 mask = first_lanes(n - i);
      s16 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i), s16);
    }
    return hsum16(s16);
  }

  WMK_AVX512 static void scale(const float* src, int64_t n, float s, float* dst) {
    const __m512 s16 = _mm512_set1_ps(s);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 mask = first_lanes(n - i);
      _mm512_mask_storeu_ps(dst + i, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, src + i), s16));
    }
  }

  WMK_AVX512 static void softmax_grad(float* p, const float* dp, int64_t n, float delta) {
    const __m512 d16 = _mm512_set1_ps(delta);
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 mask = first_lanes(n - j);
      const __m512 g = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, dp + j), d16);
      _mm512_mask_storeu_ps(p + j, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, p + j), g));
    }
  }

  WMK_AVX512 static float max(const float* x, int64_t n) {
    __m512 m0 = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
      m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + j + 16));
    }
    m0 = _mm512_max_ps(m0, m1);
    if (j + 16 <= n) {
      m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
      j += 16;
    }
    if (j < n) m0 = _mm512_mask_max_ps(m0, first_lanes(n - j), m0, _mm512_maskz_loadu_ps(first_lanes(n - j), x + j));
    return _mm512_reduce_max_ps(m0);
  }

  WMK_AVX512 static float exp_shift(float* x, int64_t n, float shift) {
    const __m512 s16 = _mm512_set1_ps(shift);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      const __m512 e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), s16));
      const __m512 e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), s16));
      _mm512_storeu_ps(x + j, e0);
      _mm512_storeu_ps(x + j + 16, e1);
      sum0 = _mm512_add_ps(sum0, e0);
      sum1 = _mm512_add_ps(sum1, e1);
    }
    for (; j < n; j += 16) {  // the tail through masks, so every value goes through the same exp
      const __mmask16 mask = first_lanes(n - j);
      const __m512 e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + j), s16)));
      _mm512_mask_storeu_ps(x + j, mask, e);
      sum0 = _mm512_add_ps(sum0, e);
    }
    return hsum16(_mm512_add_ps(sum0, sum1));
  }

  // r[j] = the sum of the 16 lanes of a[j], for j < 16: a transpose folded into a tree of adds.
  WMK_AVX512 static inline __m512 sum_lanes16(const __m512 (&a)[16]) {
    __m512 b[8], c[4];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)  // 128-bit lane L of b[i]: a[2i], a[2i+1] interleaved, two partial sums each
      b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i)  // lane L of c[i]: the sums over lane L of a[4i .. 4i+3]
      c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44), _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));
    const __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
    const __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xDD));
  }

  // Avx2Kernels::decode_rows with one zmm per row of 16 scores.
  static constexpr bool kHasDecodeRow = true;
  // On Zen 4 (the AVX-512 machine) prefetching the next position's rows made the decode ~30% faster.
  static constexpr bool kPrefetchDecode = true;
  // pf_k / pf_v (may be null): row r's keys / values at the next position, pf_n of them, prefetched into L2 while
  // row r's scores / weighted sum run (spread over the rows: all at once, they held the miss buffers).
  WMK_AVX512 static void decode_rows(int64_t rows, const float* q, int64_t dv, const float* const* k, int64_t ksj,
                                     const float* const* v, int64_t vsj, int64_t lk, int64_t d, float* const* out,
                                     const float* const* k_last, const float* const* v_last,
                                     const float* const* pf_k = nullptr, const float* const* pf_v = nullptr,
                                     int64_t pf_n = 0) {
    const auto prefetch = [&](const float* base, int64_t stride) {
      for (int64_t j = 0; j < pf_n; ++j) prefetch_row_l2(base + j * stride, d);
    };
    alignas(64) float p[kDecodeRows][16];
    float inv[kDecodeRows];
    const int64_t fresh = k_last != nullptr ? lk - 1 : -1;
    const __mmask16 vis = first_lanes(lk);
    for (int64_t r = 0; r < rows; ++r) {  // the scores
      if (pf_k != nullptr) prefetch(pf_k[r], ksj);
      const float* kr = k[r];
      const float* kl = fresh >= 0 ? k_last[r] : nullptr;
      const auto k_row = [&](int64_t j) { return j == fresh ? kl : kr + j * ksj; };
      __m512 acc[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
      for (int64_t c = 0; c < d; c += 16) {
        const __mmask16 mask = first_lanes(d - c);
        const __m512 qc = _mm512_loadu_ps(q + r * dv + c);
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j)
          if (j < lk) acc[j] = _mm512_fmadd_ps(qc, _mm512_maskz_loadu_ps(mask, k_row(j) + c), acc[j]);
      }
      _mm512_store_ps(p[r], sum_lanes16(acc));
    }
    for (int64_t r = 0; r < rows; ++r) {  // the softmax numerators and 1 / their sum
      const __m512 s = _mm512_load_ps(p[r]);
      const float mx = _mm512_mask_reduce_max_ps(vis, s);
      const __m512 e = _mm512_maskz_mov_ps(vis, exp16(_mm512_sub_ps(s, _mm512_set1_ps(mx))));
      inv[r] = 1.0f / hsum16(e);
      _mm512_store_ps(p[r], e);
    }
    for (int64_t r = 0; r < rows; ++r) {  // the weighted sums of the values
      if (pf_v != nullptr) prefetch(pf_v[r], vsj);
      const float* vr = v[r];
      const float* vl = fresh >= 0 ? v_last[r] : nullptr;
      const auto v_row = [&](int64_t j) { return j == fresh ? vl : vr + j * vsj; };
      const float* pr = p[r];
      const __m512 iv = _mm512_set1_ps(inv[r]);
      for (int64_t c = 0; c < d; c += 16) {
        const __mmask16 mask = first_lanes(d - c);
        __m512 o0 = _mm512_setzero_ps(), o1 = _mm512_setzero_ps();  // two chains: even and odd keys
        int64_t j = 0;
        for (; j + 2 <= lk; j += 2) {
          o0 = _mm512_fmadd_ps(_mm512_set1_ps(pr[j]), _mm512_maskz_loadu_ps(mask, v_row(j) + c), o0);
          o1 = _mm512_fmadd_ps(_mm512_set1_ps(pr[j + 1]), _mm512_maskz_loadu_ps(mask, v_row(j + 1) + c), o1);
        }
        if (j < lk) o0 = _mm512_fmadd_ps(_mm512_set1_ps(pr[j]), _mm512_maskz_loadu_ps(mask, v_row(j) + c), o0);
        _mm512_mask_storeu_ps(out[r] + c, mask, _mm512_mul_ps(_mm512_add_ps(o0, o1), iv));
      }
    }
  }

  // Avx2Kernels::attend_short with one zmm per row of 16 scores and 8 rows per register tile.
  WMK_AVX512 static void attend_short(const float* qt, int64_t dv, const float* kt, const float* vr, int64_t d,
                                      int64_t mq, const int64_t* nvis, float* ob, float* m, float* l) {
    alignas(64) float p[8][16];
    for (int64_t r0 = 0; r0 < mq; r0 += 8) {
      const int64_t rows = mq - r0 < 8 ? mq - r0 : 8;
      __m512 s[8];
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) s[r] = _mm512_setzero_ps();
      const float* a0 = qt + r0 * dv;  // rows past mq: stale or padding rows of the tile, never stored
      for (int64_t i = 0; i < d; ++i) {
        const __m512 kv = _mm512_loadu_ps(kt + i * 16);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) s[r] = _mm512_fmadd_ps(_mm512_set1_ps(a0[r * dv + i]), kv, s[r]);
      }
      int64_t nk_max = 0;
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        const int64_t nv = r < rows ? nvis[r0 + r] : 0;
        nk_max = nv > nk_max ? nv : nk_max;
        const __mmask16 vis = first_lanes(nv);
        const float mx = nv > 0 ? _mm512_mask_reduce_max_ps(vis, s[r]) : 0.0f;
        const __m512 e = _mm512_maskz_mov_ps(vis, exp16(_mm512_sub_ps(s[r], _mm512_set1_ps(mx))));
        _mm512_store_ps(p[r], e);
        if (r < rows) {
          m[r0 + r] = nv > 0 ? mx : -std::numeric_limits<float>::infinity();
          l[r0 + r] = hsum16(e);
        }
      }
      for (int64_t c = 0; c < dv; c += 32) {
        if (c + 32 <= dv)
          tile<8, 2, false>(&p[0][0], 16, vr + c, dv, ob + r0 * dv + c, dv, nk_max, false);
        else
          tile<8, 1, false>(&p[0][0], 16, vr + c, dv, ob + r0 * dv + c, dv, nk_max, false);
      }
    }
  }
};

}  // namespace wmk::attention::cpu

#undef WMK_AVX512
#endif
