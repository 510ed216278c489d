// The AVX2+FMA kernel of wmk::linear_prepacked (see packed_linear.h): 6 x 16 register tiles, one panel at a time.
// Compiled with -mavx2 -mfma on x86-64; elsewhere only the stub that says it is not there.
#include "linear/packed_linear.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "linear/packed_gemm_impl.h"

namespace wmk::linear::cpu {
namespace {

struct Avx2Ops {
  using Vec = __m256;
  static constexpr int kWidth = 8;
  static constexpr int kTileRows = 6;  // 6 rows x 2 vectors: 12 accumulators of the 16 ymm registers
  static constexpr int kGroup = 1;
  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec load(const float* p) { return _mm256_load_ps(p); }
  static Vec loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm256_store_ps(p, v); }
  static void storeu(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec set1(float x) { return _mm256_set1_ps(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
};

}  // namespace

bool avx2_usable() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

void packed_gemm_avx2(const float* a, int64_t lda, int64_t rows, int64_t k, const float* panels, int64_t n_total,
                      int64_t panel_begin, int64_t panel_end, const float* bias, float* c, int64_t ldc) {
  packed_gemm<Avx2Ops>(a, lda, rows, k, panels, n_total, panel_begin, panel_end, bias, c, ldc);
}

}  // namespace wmk::linear::cpu

#else

namespace wmk::linear::cpu {
bool avx2_usable() { return false; }
void packed_gemm_avx2(const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                      const float*, float*, int64_t) {}
}  // namespace wmk::linear::cpu

#endif
