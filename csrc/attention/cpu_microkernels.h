#pragma once
// The inner loops of the CPU attention kernels, on packed fp32/fp64 tiles: a register-blocked matmul
// and the exp/max of the softmax. Two versions: portable loops (any ISA, float64, any CPU) and AVX2+FMA
// intrinsics for float, compiled through function target attributes so that the package itself stays
// portable (no -march flag) and the AVX2 code runs only where the CPU has it (`Avx2Kernels::usable()`).
//
// Tile conventions: matrices are row-major with explicit leading dimensions; gemm's M is a multiple of 4
// and N a multiple of 16 (callers zero-pad), K is arbitrary.
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/attention.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define WMK_HAVE_AVX2_PATH 1
#else
#define WMK_HAVE_AVX2_PATH 0
#endif

namespace wmk::attention::cpu {

// Starts loading one contiguous row of d floats into L2 (not L1: prefetcht0 of the same rows made the decode
// 2x slower, prefetcht2 made it ~30% faster on Zen 4, GENIE-35M layer, 13 cached frames read from DRAM; on Zen 3
// it made it slower, so each kernel set says whether to use it: Kern::kPrefetchDecode).
inline void prefetch_row_l2(const float* row, int64_t d) {
  for (int64_t o = 0; o < d; o += 16) {
#if defined(__x86_64__) && defined(__GNUC__)
    asm volatile("prefetcht2 %0" : : "m"(row[o]));
#else
    __builtin_prefetch(row + o, 0, 1);
#endif
  }
}

template <typename T>
struct PortableKernels {
  static constexpr bool kHasShort = false;
  static constexpr bool kHasGemmTn = false;
  static constexpr bool kHasDecodeRow = false;
  static bool usable() { return true; }

  // C[M x N] (+)= A[M x K] * B[K x N].
  static void gemm(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t m, int64_t n,
                   int64_t k, bool accumulate) {
    for (int64_t i = 0; i < m; ++i) {
      T* crow = c + i * ldc;
      if (!accumulate)
        for (int64_t j = 0; j < n; ++j) crow[j] = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        const T av = a[i * lda + kk];
        const T* brow = b + kk * ldb;
        for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
      }
    }
  }

  static T layer_norm(T* x, int64_t n, const T* w, const T* b, T eps, T* xhat) {
    return layer_norm_row(x, n, w, b, eps, xhat);
  }

  // dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols.
  static void transpose(const T* src, int64_t lds, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }

  static T dot(const T* a, const T* b, int64_t n) {
    T s = 0;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
  }

  // dst[i] = src[i] * s (dst may be src).
  static void scale(const T* src, int64_t n, T s, T* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * s;
  }

  // The softmax backward on one row: p[j] <- p[j] * (dp[j] - delta).
  static void softmax_grad(T* p, const T* dp, int64_t n, T delta) {
    for (int64_t j = 0; j < n; ++j) p[j] = p[j] * (dp[j] - delta);
  }

  static T max(const T* x, int64_t n) {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
    return m;
  }

  // x[j] <- exp(x[j] - shift) for j < n; returns their sum.
  static T exp_shift(T* x, int64_t n, T shift) {
    T sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      x[j] = std::exp(x[j] - shift);
      sum += x[j];
    }
    return sum;
  }
};

#if WMK_HAVE_AVX2_PATH
#define WMK_AVX2 __attribute__((target("avx2,fma")))

struct Avx2Kernels {
  static constexpr bool kHasShort = true;
  static constexpr bool kHasGemmTn = true;
  static constexpr int64_t kShortKeys = 16;
  static bool usable() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }

  // exp on 8 lanes for x <= 0 (softmax arguments are x - max): range reduction x = n ln2 + r, a degree-5
  // polynomial for exp(r) (Cephes' coefficients), 2^n through the exponent bits. Relative error ~1e-7.
  // Inputs are clamped at -87.3 so that 2^n stays a normal number; exp(-87.3) ~ 1e-38 is 0 for a softmax.
  WMK_AVX2 static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  }

  // One MR x 16 tile of C (+)= A B over k; A read transposed (A[kk][r] at a + kk * lda + r) when TransA. Six rows
  // make 12 accumulators, which with the two B vectors and a broadcast fill 15 of the 16 ymm registers.
  template <int MR, bool TransA>
  WMK_AVX2 static inline void tile16(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                                     int64_t k, bool accumulate) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      acc[r][0] = accumulate ? _mm256_loadu_ps(c + r * ldc) : _mm256_setzero_ps();
      acc[r][1] = accumulate ? _mm256_loadu_ps(c + r * ldc + 8) : _mm256_setzero_ps();
    }
    for (int64_t kk = 0; kk < k; ++kk) {
      const __m256 b0 = _mm256_loadu_ps(b + kk * ldb);
      const __m256 b1 = _mm256_loadu_ps(b + kk * ldb + 8);
#pragma GCC unroll 6
      for (int r = 0; r < MR; ++r) {
        const __m256 av = _mm256_broadcast_ss(TransA ? a + kk * lda + r : a + r * lda + kk);
        acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
      }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      _mm256_storeu_ps(c + r * ldc, acc[r][0]);
      _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
    }
  }

  template <bool TransA>
  WMK_AVX2 static void gemm_impl(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                                 int64_t m, int64_t n, int64_t k, bool accumulate) {
    // Column panels outside, so a 16-wide panel of B stays in L1 while the row blocks of A pass; m is a multiple
    // of 4, so after the 6-row blocks 0, 2 or 4 rows remain.
    auto a_rows = [&](int64_t i) { return TransA ? a + i : a + i * lda; };
    for (int64_t j = 0; j < n; j += 16) {
      int64_t i = 0;
      for (; i + 6 <= m; i += 6) tile16<6, TransA>(a_rows(i), lda, b + j, ldb, c + i * ldc + j, ldc, k, accumulate);
      if (m - i == 4) tile16<4, TransA>(a_rows(i), lda, b + j, ldb, c + i * ldc + j, ldc, k, accumulate);
      if (m - i == 2) tile16<2, TransA>(a_rows(i), lda, b + j, ldb, c + i * ldc + j, ldc, k, accumulate);
    }
  }

  WMK_AVX2 static void gemm(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m,
                            int64_t n, int64_t k, bool accumulate) {
    gemm_impl<false>(a, lda, b, ldb, c, ldc, m, n, k, accumulate);
  }

  // C[M x N] (+)= A^T B with A stored K x M: the backward's P^T dO and dS^T Q without a transposed copy.
  WMK_AVX2 static void gemm_tn(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                               int64_t m, int64_t n, int64_t k, bool accumulate) {
    gemm_impl<true>(a, lda, b, ldb, c, ldc, m, n, k, accumulate);
  }

  // One tile of mq query rows against nk <= 16 keys (temporal attention: T frames), entirely in registers:
  // scores, mask, softmax and P V, without the per-row calls and score-tile round trips of the general
  // path. qt: rows of dv (scale folded in); kt: d x 16, keys transposed, zero past nk; vr: nk rows of dv.
  // nvis[r]: keys row r sees (a prefix). Writes the unnormalised output rows ob (mq x dv), row maxima m
  // and sums l, as the general path leaves them.
  WMK_AVX2 static void attend_short(const float* qt, int64_t dv, const float* kt, const float* vr, int64_t d,
                                    int64_t mq, const int64_t* nvis, float* ob, float* m, float* l) {
    alignas(32) float p[4][16];
    for (int64_t r0 = 0; r0 < mq; r0 += 4) {
      const int64_t rows = mq - r0 < 4 ? mq - r0 : 4;
      // Loops over the 4 rows have constant bounds and are unrolled, so the accumulators stay in registers.
      __m256 acc[4][2];
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      const float* a0 = qt + r0 * dv;  // rows past mq are zero padding of the tile (callers pad to 4)
      for (int64_t i = 0; i < d; ++i) {
        const __m256 b0 = _mm256_loadu_ps(kt + i * 16);
        const __m256 b1 = _mm256_loadu_ps(kt + i * 16 + 8);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          const __m256 av = _mm256_broadcast_ss(a0 + r * dv + i);
          acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
      }
      int64_t nk_max = 0;
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        const int64_t nv = r < rows ? nvis[r0 + r] : 0;
        nk_max = nv > nk_max ? nv : nk_max;
        softmax16(acc[r][0], acc[r][1], nv, p[r], r < rows ? m + r0 + r : nullptr, r < rows ? l + r0 + r : nullptr);
      }
      // P V over 16 output columns at a time; keys past every row's prefix contribute nothing.
      for (int64_t c = 0; c < dv; c += 16) {
        __m256 o[4][2];
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) o[r][0] = o[r][1] = _mm256_setzero_ps();
        for (int64_t j = 0; j < nk_max; ++j) {
          const __m256 b0 = _mm256_loadu_ps(vr + j * dv + c);
          const __m256 b1 = _mm256_loadu_ps(vr + j * dv + c + 8);
#pragma GCC unroll 4
          for (int r = 0; r < 4; ++r) {
            const __m256 pv = _mm256_broadcast_ss(&p[r][j]);
            o[r][0] = _mm256_fmadd_ps(pv, b0, o[r][0]);
            o[r][1] = _mm256_fmadd_ps(pv, b1, o[r][1]);
          }
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          if (r < rows) {
            _mm256_storeu_ps(ob + (r0 + r) * dv + c, o[r][0]);
            _mm256_storeu_ps(ob + (r0 + r) * dv + c + 8, o[r][1]);
          }
        }
      }
    }
  }

  // Softmax numerators of one row of 16 scores (s0, s1) of which the first nv are visible: p <- exp(s - max)
  // (0 where masked), *m <- max, *l <- sum (m and l may be null for a padding row). With nv = 0, p = 0 and
  // l = 0, which is what the general path leaves for a row that sees no key.
  WMK_AVX2 static inline void softmax16(__m256 s0, __m256 s1, int64_t nv, float* p, float* m, float* l) {
    const __m256 vis0 = _mm256_castsi256_ps(first_lanes8(nv));
    const __m256 vis1 = _mm256_castsi256_ps(first_lanes8(nv - 8));
    const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    s0 = _mm256_blendv_ps(ninf, s0, vis0);
    s1 = _mm256_blendv_ps(ninf, s1, vis1);
    const float mx = hmax(_mm256_max_ps(s0, s1));
    const __m256 mx8 = _mm256_set1_ps(nv > 0 ? mx : 0.0f);
    const __m256 e0 = _mm256_and_ps(exp8(_mm256_sub_ps(s0, mx8)), vis0);
    const __m256 e1 = _mm256_and_ps(exp8(_mm256_sub_ps(s1, mx8)), vis1);
    _mm256_store_ps(p, e0);
    _mm256_store_ps(p + 8, e1);
    if (m != nullptr) *m = mx;
    if (l != nullptr) *l = hsum(_mm256_add_ps(e0, e1));
  }

  WMK_AVX2 static inline float hmax(__m256 x) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
  }

  // Sum of the 8 lanes in a fixed pairwise order (exp_shift and the short tile alike).
  WMK_AVX2 static inline float hsum(__m256 x) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, x);
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  }

  // layer_norm_row (common/attention.h) on 8 lanes: the same two-pass statistics, summed in 8 partial sums.
  WMK_AVX2 static float layer_norm(float* x, int64_t n, const float* w, const float* b, float eps, float* xhat) {
    const int64_t n8 = n / 8 * 8;
    __m256 s8 = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) s8 = _mm256_add_ps(s8, _mm256_loadu_ps(x + i));
    float sum = hsum(s8);
    for (int64_t i = n8; i < n; ++i) sum += x[i];
    float mean = sum / static_cast<float>(n);
    // The mean-correction pass of layer_norm_row (a constant row must normalize to zeros, not to rounding noise
    // amplified by 1/sqrt(eps)).
    __m256 c8 = _mm256_setzero_ps();
    const __m256 mean0 = _mm256_set1_ps(mean);
    for (int64_t i = 0; i < n8; i += 8) c8 = _mm256_add_ps(c8, _mm256_sub_ps(_mm256_loadu_ps(x + i), mean0));
    float correction = hsum(c8);
    for (int64_t i = n8; i < n; ++i) correction += x[i] - mean;
    mean += correction / static_cast<float>(n);
    const __m256 mean8 = _mm256_set1_ps(mean);
    __m256 v8 = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) {
      const __m256 c = _mm256_sub_ps(_mm256_loadu_ps(x + i), mean8);
      v8 = _mm256_fmadd_ps(c, c, v8);
    }
    float var = hsum(v8);
    for (int64_t i = n8; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    var /= static_cast<float>(n);
    const float rstd = 1.0f / std::sqrt(var + eps);
    const __m256 rstd8 = _mm256_set1_ps(rstd);
    for (int64_t i = 0; i < n8; i += 8) {
      const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mean8), rstd8);
      if (xhat != nullptr) _mm256_storeu_ps(xhat + i, h);
      const __m256 bias = b != nullptr ? _mm256_loadu_ps(b + i) : _mm256_setzero_ps();
      _mm256_storeu_ps(x + i, _mm256_fmadd_ps(h, _mm256_loadu_ps(w + i), bias));
    }
    for (int64_t i = n8; i < n; ++i) {
      const float h = (x[i] - mean) * rstd;
      if (xhat != nullptr) xhat[i] = h;
      x[i] = h * w[i] + (b != nullptr ? b[i] : 0.0f);
    }
    return rstd;
  }

  // dst[c * ldd + r] = src[r * lds + c], in 8x8 register blocks (a scalar loop for the edges).
  WMK_AVX2 static void transpose(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
    const int64_t rows8 = rows / 8 * 8, cols8 = cols / 8 * 8;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = r < rows8 ? cols8 : 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
    for (int64_t r = 0; r < rows8; r += 8) {
      for (int64_t c = 0; c < cols8; c += 8) {
        __m256 x[8], y[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) x[i] = _mm256_loadu_ps(src + (r + i) * lds + c);
#pragma GCC unroll 4
        for (int i = 0; i < 8; i += 2) {
          y[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);
          y[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
        }
#pragma GCC unroll 2
        for (int i = 0; i < 8; i += 4) {
          x[i] = _mm256_shuffle_ps(y[i], y[i + 2], 0x44);
          x[i + 1] = _mm256_shuffle_ps(y[i], y[i + 2], 0xEE);
          x[i + 2] = _mm256_shuffle_ps(y[i + 1], y[i + 3], 0x44);
          x[i + 3] = _mm256_shuffle_ps(y[i + 1], y[i + 3], 0xEE);
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          y[i] = _mm256_permute2f128_ps(x[i], x[i + 4], 0x20);
          y[i + 4] = _mm256_permute2f128_ps(x[i], x[i + 4], 0x31);
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (c + i) * ldd + r, y[i]);
      }
    }
  }

  WMK_AVX2 static float dot(const float* a, const float* b, int64_t n) {
    __m256 s8 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) s8 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s8);
    float s = hsum(s8);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
  }

  WMK_AVX2 static void scale(const float* src, int64_t n, float s, float* dst) {
    const __m256 s8 = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_loadu_ps(src + i), s8));
    for (; i < n; ++i) dst[i] = src[i] * s;
  }

  WMK_AVX2 static void softmax_grad(float* p, const float* dp, int64_t n, float delta) {
    const __m256 d8 = _mm256_set1_ps(delta);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
      _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), _mm256_sub_ps(_mm256_loadu_ps(dp + j), d8)));
    for (; j < n; ++j) p[j] = p[j] * (dp[j] - delta);
  }

  WMK_AVX2 static float max(const float* x, int64_t n) {
    // Four running maxima, so the loop is not bound by the latency of one dependency chain.
    __m256 m8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), m8b = m8, m8c = m8, m8d = m8;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      m8 = _mm256_max_ps(m8, _mm256_loadu_ps(x + j));
      m8b = _mm256_max_ps(m8b, _mm256_loadu_ps(x + j + 8));
      m8c = _mm256_max_ps(m8c, _mm256_loadu_ps(x + j + 16));
      m8d = _mm256_max_ps(m8d, _mm256_loadu_ps(x + j + 24));
    }
    m8 = _mm256_max_ps(_mm256_max_ps(m8, m8b), _mm256_max_ps(m8c, m8d));
    for (; j + 8 <= n; j += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(x + j));
    float m = hmax(m8);
    for (; j < n; ++j) m = x[j] > m ? x[j] : m;
    return m;
  }

  // The first n lanes (n clipped to [0, 8]) as a maskload/maskstore mask.
  WMK_AVX2 static inline __m256i first_lanes8(int64_t n) {
    const int32_t m = static_cast<int32_t>(n < 0 ? 0 : n > 8 ? 8 : n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }

  // Eight floats at p, of which only the first n (clipped to 8) are read; the rest are zero.
  WMK_AVX2 static inline __m256 load8(const float* p, int64_t n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first_lanes8(n));
  }

  // r[j] = the sum of the 8 lanes of a[j]: a transpose folded into horizontal adds.
  WMK_AVX2 static inline __m256 sum_lanes8(const __m256 (&a)[8]) {
    const __m256 c0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 c1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    // 128-bit half h of c0 holds the partial sums of a[0..3] over lanes 4h .. 4h+3; likewise c1 for a[4..7].
    return _mm256_add_ps(_mm256_permute2f128_ps(c0, c1, 0x20), _mm256_permute2f128_ps(c0, c1, 0x31));
  }

  // Frame decoding of `rows` <= kDecodeRows query rows (a position's heads), each against lk <= 16 keys read in
  // place: row r's q at q + r * dv (scale and LayerNorm applied, zero past d), its key / value row j at
  // k[r] + j * ksj / v[r] + j * vsj (d contiguous floats each); with k_last, row lk - 1 at k_last[r] / v_last[r]
  // instead (a frame whose K/V were not stored). Writes softmax(q k^T) v to out[r] (d floats). Rows past lk and
  // floats past d are never read. Each phase (scores, softmax, weighted sums) runs over every row before the next:
  // one row's chain of reductions, exp and division is long, and the rows' chains, independent, then overlap. One
  // row per call, a GENIE-35M head-row took ~80 ns at 1 cached frame, ~45 ns of it here, mostly waiting on that
  // chain; 4 rows per call, 32 layers' decode ran 1.20x / 1.08x / 1.02x faster at 1 / 4 / 12 cached frames (2-thread
  // Xeon, AVX-512; 8 rows per call was slower from 8 frames on). Each row's arithmetic is that of a row alone.
  static constexpr bool kHasDecodeRow = true;
  static constexpr int64_t kDecodeRows = 4;
  // Whether decode_forward prefetches the next position's cached rows (see prefetch_row_l2). Not here: on Zen 3
  // (the AVX2 machine) the hardware prefetcher already streams them, and the prefetcht2 instructions only held miss
  // buffers: one GENIE-35M decode call over 13 cached frames took 47 ms with them and 34 ms without, 1 thread.
  static constexpr bool kPrefetchDecode = false;
  WMK_AVX2 static void decode_rows(int64_t rows, const float* q, int64_t dv, const float* const* k, int64_t ksj,
                                   const float* const* v, int64_t vsj, int64_t lk, int64_t d, float* const* out,
                                   const float* const* k_last, const float* const* v_last,
                                   const float* const* = nullptr, const float* const* = nullptr, int64_t = 0) {
    alignas(32) float p[kDecodeRows][16];
    float inv[kDecodeRows];
    const int64_t fresh = k_last != nullptr ? lk - 1 : -1;
    for (int64_t r = 0; r < rows; ++r) {  // the scores
      const float* kr = k[r];
      const float* kl = fresh >= 0 ? k_last[r] : nullptr;
      const auto k_row = [&](int64_t j) { return j == fresh ? kl : kr + j * ksj; };
#pragma GCC unroll 2
      for (int g = 0; g < 2; ++g) {  // keys 8g .. 8g+7: eight dot products, then one lane-transposing reduction
        __m256 acc[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
        if (8 * g < lk) {
          for (int64_t c = 0; c < d; c += 8) {
            const __m256 qc = _mm256_loadu_ps(q + r * dv + c);
#pragma GCC unroll 8
            for (int j = 0; j < 8; ++j)
              if (8 * g + j < lk) acc[j] = _mm256_fmadd_ps(qc, load8(k_row(8 * g + j) + c, d - c), acc[j]);
          }
        }
        _mm256_store_ps(p[r] + 8 * g, sum_lanes8(acc));
      }
    }
    for (int64_t r = 0; r < rows; ++r) {  // the softmax numerators and 1 / their sum
      float l = 0.0f;
      softmax16(_mm256_load_ps(p[r]), _mm256_load_ps(p[r] + 8), lk, p[r], nullptr, &l);
      inv[r] = 1.0f / l;
    }
    for (int64_t r = 0; r < rows; ++r) {  // the weighted sums of the values
      const float* vr = v[r];
      const float* vl = fresh >= 0 ? v_last[r] : nullptr;
      const auto v_row = [&](int64_t j) { return j == fresh ? vl : vr + j * vsj; };
      const float* pr = p[r];
      const __m256 iv = _mm256_set1_ps(inv[r]);
      for (int64_t c = 0; c < d; c += 8) {
        __m256 o0 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps();  // two chains: even and odd keys
        int64_t j = 0;
        for (; j + 2 <= lk; j += 2) {
          o0 = _mm256_fmadd_ps(_mm256_set1_ps(pr[j]), load8(v_row(j) + c, d - c), o0);
          o1 = _mm256_fmadd_ps(_mm256_set1_ps(pr[j + 1]), load8(v_row(j + 1) + c, d - c), o1);
        }
        if (j < lk) o0 = _mm256_fmadd_ps(_mm256_set1_ps(pr[j]), load8(v_row(j) + c, d - c), o0);
        const __m256 o = _mm256_mul_ps(_mm256_add_ps(o0, o1), iv);
        if (d - c >= 8)
          _mm256_storeu_ps(out[r] + c, o);
        else
          _mm256_maskstore_ps(out[r] + c, first_lanes8(d - c), o);
      }
    }
  }

  // The LayerNorm of `rows` rows of d floats, ld apart (frame decoding's keys and queries of one position). With
  // d a multiple of 8, eight rows at a time, each statistic of every row comes out of one lane-transposing reduction
  // (row r in lane r), in layer_norm's order of operations, so the results are layer_norm's bit for bit.
  WMK_AVX2 static void layer_norm_rows(float* x, int64_t rows, int64_t ld, int64_t d, const float* w, const float* b,
                                       float eps) {
    if (d % 8 != 0) {
      for (int64_t r = 0; r < rows; ++r) layer_norm(x + r * ld, d, w, b, eps, nullptr);
      return;
    }
    for (; rows > 8; rows -= 8, x += 8 * ld) layer_norm_rows(x, 8, ld, d, w, b, eps);
    const __m256 n8 = _mm256_set1_ps(static_cast<float>(d));
    __m256 acc[8];
    alignas(32) float m0[8], m[8], rstd[8];
    // Pass 1: row sums. Rows past `rows` stay zero.
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
      acc[r] = _mm256_setzero_ps();
      for (int64_t c = 0; c < d && r < rows; c += 8) acc[r] = _mm256_add_ps(acc[r], _mm256_loadu_ps(x + r * ld + c));
    }
    const __m256 mean0 = _mm256_div_ps(sum_lanes8(acc), n8);
    _mm256_store_ps(m0, mean0);
    // Pass 2: layer_norm's mean correction.
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
      acc[r] = _mm256_setzero_ps();
      const __m256 mr = _mm256_broadcast_ss(&m0[r]);
      for (int64_t c = 0; c < d && r < rows; c += 8)
        acc[r] = _mm256_add_ps(acc[r], _mm256_sub_ps(_mm256_loadu_ps(x + r * ld + c), mr));
    }
    _mm256_store_ps(m, _mm256_add_ps(mean0, _mm256_div_ps(sum_lanes8(acc), n8)));
    // Pass 3: variance.
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
      acc[r] = _mm256_setzero_ps();
      const __m256 mr = _mm256_broadcast_ss(&m[r]);
      for (int64_t c = 0; c < d && r < rows; c += 8) {
        const __m256 t = _mm256_sub_ps(_mm256_loadu_ps(x + r * ld + c), mr);
        acc[r] = _mm256_fmadd_ps(t, t, acc[r]);
      }
    }
    const __m256 var = _mm256_div_ps(sum_lanes8(acc), n8);
    _mm256_store_ps(rstd, _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_sqrt_ps(_mm256_add_ps(var, _mm256_set1_ps(eps)))));
    for (int64_t r = 0; r < rows; ++r) {
      const __m256 mr = _mm256_broadcast_ss(&m[r]), sr = _mm256_broadcast_ss(&rstd[r]);
      for (int64_t c = 0; c < d; c += 8) {
        const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + r * ld + c), mr), sr);
        const __m256 bias = b != nullptr ? _mm256_loadu_ps(b + c) : _mm256_setzero_ps();
        _mm256_storeu_ps(x + r * ld + c, _mm256_fmadd_ps(h, _mm256_loadu_ps(w + c), bias));
      }
    }
  }

  WMK_AVX2 static float exp_shift(float* x, int64_t n, float shift) {
    const __m256 s8 = _mm256_set1_ps(shift);
    __m256 sum8 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), s8));
      _mm256_storeu_ps(x + j, e);
      sum8 = _mm256_add_ps(sum8, e);
    }
    if (j < n) {  // the tail through a masked load/store, so every value goes through the same exp
      const __m256i mask = first_lanes8(n - j);
      const __m256 e = exp8(_mm256_sub_ps(_mm256_maskload_ps(x + j, mask), s8));
      const __m256 e_masked = _mm256_and_ps(e, _mm256_castsi256_ps(mask));
      _mm256_maskstore_ps(x + j, mask, e_masked);
      sum8 = _mm256_add_ps(sum8, e_masked);
    }
    return hsum(sum8);
  }
};
#undef WMK_AVX2
#endif

}  // namespace wmk::attention::cpu
