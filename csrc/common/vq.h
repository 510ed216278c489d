#pragma once
// Nearest-code math shared by the CPU (.cpp) and CUDA (.cu) VQ kernels, so the CPU tests exercise the
// same definitions the GPU kernels use.
//
// Conventions (the documented contract of wmk::vq_encode):
//  * The search minimises a *score* per code k: score_k = |c_k|^2 - 2 x.c_k for metric "l2" (|x|^2 is
//    the same for every code and left out) and score_k = -2 x^.c^_k for "cosine" (x^, c^ unit vectors).
//  * A code wins only with a score strictly below the best so far, visiting codes in increasing index:
//    exact ties go to the lowest index, and a NaN score never wins. A row whose scores are all NaN
//    (for example a row of x holding a NaN) keeps index 0.
//  * `distances` is recomputed directly for the chosen code, in fp32: sum_d (x_d - c_d)^2 for "l2"
//    (the squared L2 distance, not the expanded form, so it carries no cancellation error), and
//    1 - x^.c^ for "cosine". A NaN anywhere in the row or the chosen code gives a NaN distance.
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace wmk::vq {

enum class Metric : int { kL2 = 0, kCosine = 1 };

// Rows whose norm is below this are scaled as if their norm were kNormEps (F.normalize's rule), so a
// zero vector stays zero instead of becoming NaN.
constexpr float kNormEps = 1e-12f;

// True when `score` should replace `best`: strictly smaller; false whenever either is NaN.
WMK_HOST_DEVICE WMK_INLINE bool is_better(float score, float best) { return score < best; }

// 1 / max(|v|, kNormEps) for a vector of n fp32 values.
WMK_HOST_DEVICE WMK_INLINE float inverse_norm(const float* v, int64_t n) {
  float sq = 0.f;
  for (int64_t i = 0; i < n; ++i) sq += v[i] * v[i];
  const float norm = sqrtf(sq);
  return 1.f / (norm > kNormEps ? norm : kNormEps);
}

// Squared L2 distance sum_d (x_d - c_d)^2, accumulated in fp32.
WMK_HOST_DEVICE WMK_INLINE float squared_l2(const float* x, const float* c, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float diff = x[i] - c[i];
    acc += diff * diff;
  }
  return acc;
}

// 1 - cos(x, c) given unit (already normalised) x and c.
WMK_HOST_DEVICE WMK_INLINE float cosine_distance_unit(const float* x, const float* c, int64_t n) {
  float dot = 0.f;
  for (int64_t i = 0; i < n; ++i) dot += x[i] * c[i];
  return 1.f - dot;
}

}  // namespace wmk::vq
