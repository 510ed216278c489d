// The AVX2+FMA micro-kernel of wmk::linear_prepacked (see packed_linear.h). Compiled with -mavx2 -mfma on x86-64;
// elsewhere only the stub that says it is not there.
#include "linear/packed_linear.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace wmk::linear::cpu {
namespace {

// Each output is summed in blocks of kSumBlock k (each from 0, then added to the running sum): with K = 1,024 a single
// chain of FMAs measured 3.6x the error of torch's fp32 product, blocks of 256 stay within its 2x.
constexpr int64_t kSumBlock = 256;
constexpr int kTileRows = 6;
constexpr int64_t kBlockRows = 96;

// Rows [0, MR) x the panel's 16 outputs, over k in [k0, k1): the sum starts from 0 and, unless k0 == 0, is then
// added to what `out` holds (the earlier blocks' sum); `bias` (null but in the last block) is added last. The
// accumulators stay in registers: every loop over the rows is unrolled (an indexed accumulator array would
// otherwise live in memory, 3x slower).
template <int MR>
inline void tile(const float* a, int64_t lda, int64_t k0, int64_t k1, const float* panel, const float* bias,
                 float* out, int64_t ldo) {
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc0[i] = _mm256_setzero_ps();
    acc1[i] = _mm256_setzero_ps();
  }
  for (int64_t kk = k0; kk < k1; ++kk) {
    const __m256 b0 = _mm256_load_ps(panel + kk * kPanelWidth);
    const __m256 b1 = _mm256_load_ps(panel + kk * kPanelWidth + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 x = _mm256_broadcast_ss(a + i * lda + kk);
      acc0[i] = _mm256_fmadd_ps(x, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(x, b1, acc1[i]);
    }
  }
  if (k0 > 0) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      acc0[i] = _mm256_add_ps(_mm256_loadu_ps(out + i * ldo), acc0[i]);
      acc1[i] = _mm256_add_ps(_mm256_loadu_ps(out + i * ldo + 8), acc1[i]);
    }
  }
  if (bias != nullptr) {
    const __m256 bias0 = _mm256_loadu_ps(bias), bias1 = _mm256_loadu_ps(bias + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      acc0[i] = _mm256_add_ps(acc0[i], bias0);
      acc1[i] = _mm256_add_ps(acc1[i], bias1);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(out + i * ldo, acc0[i]);
    _mm256_storeu_ps(out + i * ldo + 8, acc1[i]);
  }
}

// Rows [0, rows) of one panel over k in [k0, k1), in tiles of kTileRows rows and a last shorter one.
inline void panel_rows(const float* a, int64_t lda, int64_t rows, int64_t k0, int64_t k1, const float* panel,
                       const float* bias, float* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + kTileRows <= rows; r += kTileRows) tile<kTileRows>(a + r * lda, lda, k0, k1, panel, bias, out + r * ldo, ldo);
  const float* ar = a + r * lda;
  float* o = out + r * ldo;
  switch (rows - r) {
    case 5: tile<5>(ar, lda, k0, k1, panel, bias, o, ldo); break;
    case 4: tile<4>(ar, lda, k0, k1, panel, bias, o, ldo); break;
    case 3: tile<3>(ar, lda, k0, k1, panel, bias, o, ldo); break;
    case 2: tile<2>(ar, lda, k0, k1, panel, bias, o, ldo); break;
    case 1: tile<1>(ar, lda, k0, k1, panel, bias, o, ldo); break;
    default: break;
  }
}

}  // namespace

bool avx2_usable() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

void packed_gemm_avx2(const float* a, int64_t lda, int64_t rows, int64_t k, const float* panels, int64_t n_total,
                      int64_t panel_begin, int64_t panel_end, const float* bias, float* c, int64_t ldc) {
  // Full panels: blocks of kSumBlock k outermost, so a block of x (rows x kSumBlock) stays in L2 while the panels
  // pass over it; then blocks of kBlockRows rows, so each panel's slice stays in L1 across them.
  const int64_t full_end = n_total / kPanelWidth < panel_end ? n_total / kPanelWidth : panel_end;
  for (int64_t k0 = 0; k0 < k; k0 += kSumBlock) {
    const int64_t k1 = k0 + kSumBlock < k ? k0 + kSumBlock : k;
    for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
      const int64_t block = rows - r0 < kBlockRows ? rows - r0 : kBlockRows;
      for (int64_t p = panel_begin; p < full_end; ++p) {
        const float* panel_bias = bias != nullptr && k1 == k ? bias + p * kPanelWidth : nullptr;
        panel_rows(a + r0 * lda, lda, block, k0, k1, panels + p * k * kPanelWidth, panel_bias,
                   c + r0 * ldc + p * kPanelWidth, ldc);
      }
    }
  }
  if (full_end >= panel_end) return;
  // The last, partial panel (n_total not a multiple of 16): the same sums, in a scratch of 16 columns per tile.
  const int64_t p = full_end, n0 = p * kPanelWidth, cols = n_total - n0;
  const float* panel = panels + p * k * kPanelWidth;
  alignas(32) float part[kTileRows * kPanelWidth];
  for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
    const int64_t block = rows - r0 < kTileRows ? rows - r0 : kTileRows;
    for (int64_t k0 = 0; k0 < k; k0 += kSumBlock) {
      const int64_t k1 = k0 + kSumBlock < k ? k0 + kSumBlock : k;
      panel_rows(a + r0 * lda, lda, block, k0, k1, panel, nullptr, part, kPanelWidth);
    }
    for (int64_t i = 0; i < block; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        c[(r0 + i) * ldc + n0 + j] = bias != nullptr ? part[i * kPanelWidth + j] + bias[n0 + j] : part[i * kPanelWidth + j];
      }
    }
  }
}

}  // namespace wmk::linear::cpu

#else

namespace wmk::linear::cpu {
bool avx2_usable() { return false; }
void packed_gemm_avx2(const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                      const float*, float*, int64_t) {}
}  // namespace wmk::linear::cpu

#endif
