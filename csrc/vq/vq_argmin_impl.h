#pragma once
// The blocked nearest-code search, generic over a micro-kernel. Included by each per-ISA file; all of it
// has internal linkage so that each file keeps its own copy compiled for its own instruction set.
#include <cstdint>

#include "vq/vq_argmin.h"

namespace wmk::vq::cpu {
namespace {

// Codebook panels per cache block: about 256 KB of packed codes, so a block stays in L2 while every
// row tile of the row block streams over it (the rows themselves, one micro-tile at a time, stay in L1).
constexpr int64_t kCodebookBlockFloats = 64 * 1024;

inline float* align64(float* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<float*>((a + 63) & ~static_cast<uintptr_t>(63));
}

// Kernel provides kMr (rows per micro-tile), kNr (codes per panel) and
//   run(xt, panels, bias, num_panels, dim, first_code, best, index)
// which folds `num_panels` panels into the running (best, index) of one micro-tile of rows, xt being
// that tile transposed: xt[d * kMr + i] = x[row i][d].
template <class Kernel>
void search_rows(const float* x, int64_t x_stride, int64_t num_rows, const PackedCodebook& cb, float* scratch,
                 int32_t* best_index, float* best_score) {
  constexpr int kMr = Kernel::kMr;
  constexpr int kNr = Kernel::kNr;
  const int64_t dim = cb.dim;
  const int64_t tiles = (num_rows + kMr - 1) / kMr;
  float* xt = align64(scratch);
  float* best = xt + tiles * kMr * dim;
  int32_t* index = reinterpret_cast<int32_t*>(best + tiles * kMr);

  for (int64_t t = 0; t < tiles; ++t) {
    float* tile = xt + t * kMr * dim;
    for (int i = 0; i < kMr; ++i) {
      const int64_t r = t * kMr + i;
      if (r < num_rows) {
        const float* row = x + r * x_stride;
        for (int64_t d = 0; d < dim; ++d) tile[d * kMr + i] = row[d];
      } else {
        for (int64_t d = 0; d < dim; ++d) tile[d * kMr + i] = 0.f;  // padding rows: computed, never read
      }
    }
  }
  for (int64_t i = 0; i < tiles * kMr; ++i) {
    best[i] = __builtin_inff();
    index[i] = 0;
  }

  const int64_t panel_floats = dim * kNr;
  int64_t block = kCodebookBlockFloats / panel_floats;
  if (block < 1) block = 1;
  for (int64_t p0 = 0; p0 < cb.num_panels; p0 += block) {
    const int64_t np = (cb.num_panels - p0 < block) ? cb.num_panels - p0 : block;
    for (int64_t t = 0; t < tiles; ++t) {
      Kernel::run(xt + t * kMr * dim, cb.panels + p0 * panel_floats, cb.bias + p0 * kNr, np, dim,
                  static_cast<int32_t>(p0 * kNr), best + t * kMr, index + t * kMr);
    }
  }
  for (int64_t r = 0; r < num_rows; ++r) {
    best_index[r] = index[r];
    best_score[r] = best[r];
  }
}

}  // namespace
}  // namespace wmk::vq::cpu
