// The AVX-512F kernel of wmk::linear_prepacked (see packed_linear.h): 6 rows x up to 4 panels (64 outputs) per register
// tile, 24 of the 32 zmm registers. On the 2-core Intel Xeon VM (AVX-512), over GENIE-35M's 192 products at 256 rows
// with single chains of 256 k, 6 x 4 measured 305 GFLOP/s against 285 for 12 x 2, 291 for 8 x 3 and 217 for 14 x 1.
// With the pairwise chains of 16 that accuracy needs, it runs at 0.90-1.0x of MKL's sgemm at 256 rows and ~12% behind
// it at 4,096 (BENCHMARKS.md), so the layers keep MKL on AVX-512 CPUs by default; this kernel is what the packed path
// runs there when it is switched on. Compiled with -mavx512f on x86-64; elsewhere only the stub that says it is not
// there.
#include "linear/packed_linear.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__FMA__)
#include <immintrin.h>

#include "linear/packed_gemm_impl.h"

namespace wmk::linear::cpu {
namespace {

struct Avx512Ops {
  using Vec = __m512;
  static constexpr int kWidth = 16;
  static constexpr int kTileRows = 6;
  static constexpr int kGroup = 4;
  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec load(const float* p) { return _mm512_load_ps(p); }
  static Vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm512_store_ps(p, v); }
  static void storeu(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec set1(float x) { return _mm512_set1_ps(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
};

}  // namespace

bool avx512_usable() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

void packed_gemm_avx512(const float* a, int64_t lda, int64_t rows, int64_t k, const float* panels, int64_t n_total,
                        int64_t panel_begin, int64_t panel_end, const float* bias, float* c, int64_t ldc) {
  packed_gemm<Avx512Ops>(a, lda, rows, k, panels, n_total, panel_begin, panel_end, bias, c, ldc);
}

}  // namespace wmk::linear::cpu

#else

namespace wmk::linear::cpu {
bool avx512_usable() { return false; }
void packed_gemm_avx512(const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                        const float*, float*, int64_t) {}
}  // namespace wmk::linear::cpu

#endif
