// Portable micro-kernel of the CPU nearest-code search: the fallback where neither AVX2+FMA nor AVX-512
// is available, and the bit-exact model of the vector kernels (same fma order) that the tests compare
// them with.
#include <cmath>

#include "vq/vq_argmin.h"
#include "vq/vq_argmin_impl.h"

namespace wmk::vq::cpu {
namespace {

struct ScalarKernel {
  static constexpr int kMr = 4;
  static constexpr int kNr = 4;

  static void run(const float* xt, const float* panels, const float* bias, int64_t num_panels, int64_t dim,
                  int32_t first_code, float* best, int32_t* index) {
    for (int64_t p = 0; p < num_panels; ++p) {
      const float* pan = panels + p * dim * kNr;
      float acc[kMr][kNr];
      for (int i = 0; i < kMr; ++i)
        for (int j = 0; j < kNr; ++j) acc[i][j] = bias[p * kNr + j];
      for (int64_t d = 0; d < dim; ++d)
        for (int i = 0; i < kMr; ++i)
          for (int j = 0; j < kNr; ++j) acc[i][j] = std::fma(xt[d * kMr + i], pan[d * kNr + j], acc[i][j]);
      const int32_t k = first_code + static_cast<int32_t>(p * kNr);
      for (int j = 0; j < kNr; ++j)
        for (int i = 0; i < kMr; ++i)
          if (acc[i][j] < best[i]) best[i] = acc[i][j], index[i] = k + j;
    }
  }
};

void search_scalar(const float* x, int64_t x_stride, int64_t num_rows, const PackedCodebook& cb, float* scratch,
                   int32_t* best_index, float* best_score) {
  search_rows<ScalarKernel>(x, x_stride, num_rows, cb, scratch, best_index, best_score);
}

}  // namespace

void scalar_isa(Isa* out) { *out = Isa{"scalar", ScalarKernel::kNr, ScalarKernel::kMr, &search_scalar}; }

}  // namespace wmk::vq::cpu
