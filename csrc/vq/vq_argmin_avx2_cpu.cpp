// AVX2 + FMA micro-kernel of the CPU nearest-code search. Compiled with -mavx2 -mfma (see CMakeLists.txt)
// and chosen at run time only where the CPU has both; includes no torch (see vq_argmin.h).
#include "vq/vq_argmin.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "vq/vq_argmin_impl.h"

namespace wmk::vq::cpu {
namespace {

// 16 rows (two ymm of 8) x 6 codes = 12 accumulators, + 2 row vectors + 1 broadcast = 15 of 16 ymm.
// The accumulators start at the codes' bias, so the finished accumulator is the score itself.
struct Avx2Kernel {
  static constexpr int kMr = 16;
  static constexpr int kNr = 6;

  static inline void run(const float* xt, const float* panels, const float* bias, int64_t num_panels, int64_t dim,
                         int32_t first_code, float* best, int32_t* index) {
    __m256 best0 = _mm256_load_ps(best), best1 = _mm256_load_ps(best + 8);
    __m256 idx0 = _mm256_load_ps(reinterpret_cast<const float*>(index));
    __m256 idx1 = _mm256_load_ps(reinterpret_cast<const float*>(index + 8));
    for (int64_t p = 0; p < num_panels; ++p) {
      const float* pan = panels + p * dim * kNr;
      const float* b = bias + p * kNr;
      __m256 a00 = _mm256_broadcast_ss(b + 0), a10 = a00;
      __m256 a01 = _mm256_broadcast_ss(b + 1), a11 = a01;
      __m256 a02 = _mm256_broadcast_ss(b + 2), a12 = a02;
      __m256 a03 = _mm256_broadcast_ss(b + 3), a13 = a03;
      __m256 a04 = _mm256_broadcast_ss(b + 4), a14 = a04;
      __m256 a05 = _mm256_broadcast_ss(b + 5), a15 = a05;
      const float* xp = xt;
#pragma GCC unroll 4
      for (int64_t d = 0; d < dim; ++d, xp += kMr, pan += kNr) {
        const __m256 x0 = _mm256_load_ps(xp), x1 = _mm256_load_ps(xp + 8);
        __m256 c = _mm256_broadcast_ss(pan + 0);
        a00 = _mm256_fmadd_ps(x0, c, a00), a10 = _mm256_fmadd_ps(x1, c, a10);
        c = _mm256_broadcast_ss(pan + 1);
        a01 = _mm256_fmadd_ps(x0, c, a01), a11 = _mm256_fmadd_ps(x1, c, a11);
        c = _mm256_broadcast_ss(pan + 2);
        a02 = _mm256_fmadd_ps(x0, c, a02), a12 = _mm256_fmadd_ps(x1, c, a12);
        c = _mm256_broadcast_ss(pan + 3);
        a03 = _mm256_fmadd_ps(x0, c, a03), a13 = _mm256_fmadd_ps(x1, c, a13);
        c = _mm256_broadcast_ss(pan + 4);
        a04 = _mm256_fmadd_ps(x0, c, a04), a14 = _mm256_fmadd_ps(x1, c, a14);
        c = _mm256_broadcast_ss(pan + 5);
        a05 = _mm256_fmadd_ps(x0, c, a05), a15 = _mm256_fmadd_ps(x1, c, a15);
      }
      // Codes in increasing order, strict less-than: ties keep the lower index, NaN never wins.
      const int32_t k = first_code + static_cast<int32_t>(p * kNr);
#define WMK_VQ_UPDATE(A0, A1, J)                                                         \
  {                                                                                      \
    const __m256 kv = _mm256_castsi256_ps(_mm256_set1_epi32(k + J));                     \
    const __m256 m0 = _mm256_cmp_ps(A0, best0, _CMP_LT_OQ);                              \
    const __m256 m1 = _mm256_cmp_ps(A1, best1, _CMP_LT_OQ);                              \
    best0 = _mm256_blendv_ps(best0, A0, m0), idx0 = _mm256_blendv_ps(idx0, kv, m0);      \
    best1 = _mm256_blendv_ps(best1, A1, m1), idx1 = _mm256_blendv_ps(idx1, kv, m1);      \
  }
      WMK_VQ_UPDATE(a00, a10, 0)
      WMK_VQ_UPDATE(a01, a11, 1)
      WMK_VQ_UPDATE(a02, a12, 2)
      WMK_VQ_UPDATE(a03, a13, 3)
      WMK_VQ_UPDATE(a04, a14, 4)
      WMK_VQ_UPDATE(a05, a15, 5)
#undef WMK_VQ_UPDATE
    }
    _mm256_store_ps(best, best0), _mm256_store_ps(best + 8, best1);
    _mm256_store_ps(reinterpret_cast<float*>(index), idx0);
    _mm256_store_ps(reinterpret_cast<float*>(index + 8), idx1);
  }
};

void search_avx2(const float* x, int64_t x_stride, int64_t num_rows, const PackedCodebook& cb, float* scratch,
                 int32_t* best_index, float* best_score) {
  search_rows<Avx2Kernel>(x, x_stride, num_rows, cb, scratch, best_index, best_score);
}

}  // namespace

bool avx2_isa(Isa* out) {
  *out = Isa{"avx2", Avx2Kernel::kNr, Avx2Kernel::kMr, &search_avx2};
  return true;
}

}  // namespace wmk::vq::cpu

#else  // not compiled for AVX2 (non-x86 target or a compiler without the flags)

namespace wmk::vq::cpu {
bool avx2_isa(Isa*) { return false; }
}  // namespace wmk::vq::cpu

#endif
