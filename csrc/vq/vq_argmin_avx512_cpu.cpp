// AVX-512F micro-kernel of the CPU nearest-code search. Compiled with -mavx512f -mavx2 -mfma (see
// CMakeLists.txt) and chosen at run time only where the CPU has AVX-512F; includes no torch (see
// vq_argmin.h).
#include "vq/vq_argmin.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include "vq/vq_argmin_impl.h"

namespace wmk::vq::cpu {
namespace {

// 32 rows (two zmm of 16) x 12 codes = 24 accumulators, + 2 row vectors + 1 broadcast + 4 running
// best/index vectors = 31 of 32 zmm. Same arithmetic order as the AVX2 and scalar kernels.
struct Avx512Kernel {
  static constexpr int kMr = 32;
  static constexpr int kNr = 12;

  static inline void run(const float* xt, const float* panels, const float* bias, int64_t num_panels, int64_t dim,
                         int32_t first_code, float* best, int32_t* index) {
    __m512 best0 = _mm512_load_ps(best), best1 = _mm512_load_ps(best + 16);
    __m512i idx0 = _mm512_load_si512(index), idx1 = _mm512_load_si512(index + 16);
    for (int64_t p = 0; p < num_panels; ++p) {
      const float* pan = panels + p * dim * kNr;
      const float* b = bias + p * kNr;
      __m512 a0[kNr], a1[kNr];
#pragma GCC unroll 12
      for (int j = 0; j < kNr; ++j) a0[j] = a1[j] = _mm512_set1_ps(b[j]);
      const float* xp = xt;
#pragma GCC unroll 2
      for (int64_t d = 0; d < dim; ++d, xp += kMr, pan += kNr) {
        const __m512 x0 = _mm512_load_ps(xp), x1 = _mm512_load_ps(xp + 16);
#pragma GCC unroll 12
        for (int j = 0; j < kNr; ++j) {
          const __m512 c = _mm512_set1_ps(pan[j]);
          a0[j] = _mm512_fmadd_ps(x0, c, a0[j]);
          a1[j] = _mm512_fmadd_ps(x1, c, a1[j]);
        }
      }
      // Codes in increasing order, strict less-than: ties keep the lower index, NaN never wins.
      const int32_t k = first_code + static_cast<int32_t>(p * kNr);
#pragma GCC unroll 12
      for (int j = 0; j < kNr; ++j) {
        const __m512i kv = _mm512_set1_epi32(k + j);
        const __mmask16 m0 = _mm512_cmp_ps_mask(a0[j], best0, _CMP_LT_OQ);
        const __mmask16 m1 = _mm512_cmp_ps_mask(a1[j], best1, _CMP_LT_OQ);
        best0 = _mm512_mask_mov_ps(best0, m0, a0[j]), idx0 = _mm512_mask_mov_epi32(idx0, m0, kv);
        best1 = _mm512_mask_mov_ps(best1, m1, a1[j]), idx1 = _mm512_mask_mov_epi32(idx1, m1, kv);
      }
    }
    _mm512_store_ps(best, best0), _mm512_store_ps(best + 16, best1);
    _mm512_store_si512(index, idx0), _mm512_store_si512(index + 16, idx1);
  }
};

void search_avx512(const float* x, int64_t x_stride, int64_t num_rows, const PackedCodebook& cb, float* scratch,
                   int32_t* best_index, float* best_score) {
  search_rows<Avx512Kernel>(x, x_stride, num_rows, cb, scratch, best_index, best_score);
}

}  // namespace

bool avx512_isa(Isa* out) {
  *out = Isa{"avx512", Avx512Kernel::kNr, Avx512Kernel::kMr, &search_avx512};
  return true;
}

}  // namespace wmk::vq::cpu

#else  // not compiled for AVX-512

namespace wmk::vq::cpu {
bool avx512_isa(Isa*) { return false; }
}  // namespace wmk::vq::cpu

#endif
