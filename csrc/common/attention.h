#pragma once
// Attention math shared by the CPU (.cpp) and CUDA (.cu) kernels, so the CPU tests exercise it:
// the end-aligned causal mask, the num_frames clamp of frame decoding, and the qk LayerNorm over the
// head dim (forward and backward) of GENIE's `qk_norm`.
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace wmk::attention {

// Keys visible to query i of lq when k/v hold lk positions. The causal mask is aligned to the end:
// query i sees keys j <= i + (lk - lq), so one query frame sees every cached frame and itself.
WMK_HOST_DEVICE WMK_INLINE int64_t visible_keys(int64_t i, int64_t lq, int64_t lk, bool causal) {
  if (!causal) return lk;
  const int64_t n = i + (lk - lq) + 1;
  return n < 0 ? 0 : (n > lk ? lk : n);
}

// GPU frame decoding cannot raise on a device value without a host sync, so it clamps num_frames to
// [1, t_max]; the CPU kernel checks the value instead (reading it there costs nothing).
WMK_HOST_DEVICE WMK_INLINE int64_t clamp_frames(int64_t n, int64_t t_max) {
  return n < 1 ? 1 : (n > t_max ? t_max : n);
}

// In place: x <- (x - mean) * rstd * w + b over n values (b may be null). Two-pass statistics in T.
// If xhat is given, the pre-affine (x - mean) * rstd is written there; returns rstd (needed by the backward).
template <typename T>
WMK_HOST_DEVICE T layer_norm_row(T* x, int64_t n, const T* w, const T* b, T eps, T* xhat) {
  T mean = 0;
  for (int64_t d = 0; d < n; ++d) mean += x[d];
  mean /= static_cast<T>(n);
  // One correction pass: the rounded sum can leave mean a few ulps off, and for a (near-)constant row that
  // offset is all of x - mean, which the 1/sqrt(var + eps) below then amplifies up to 1/sqrt(eps) times.
  T correction = 0;
  for (int64_t d = 0; d < n; ++d) correction += x[d] - mean;
  mean += correction / static_cast<T>(n);
  T var = 0;
  for (int64_t d = 0; d < n; ++d) var += (x[d] - mean) * (x[d] - mean);
  var /= static_cast<T>(n);
  const T rstd = static_cast<T>(1) / std::sqrt(var + eps);
  for (int64_t d = 0; d < n; ++d) {
    const T h = (x[d] - mean) * rstd;
    if (xhat != nullptr) xhat[d] = h;
    x[d] = h * w[d] + (b != nullptr ? b[d] : static_cast<T>(0));
  }
  return rstd;
}

// Backward of layer_norm_row: dy is the gradient of its output. Writes dx, adds into dw and db.
template <typename T>
WMK_HOST_DEVICE void layer_norm_row_backward(const T* dy, const T* xhat, int64_t n, const T* w, T rstd, T* dx, T* dw,
                                             T* db) {
  T mean_g = 0, mean_gx = 0;
  for (int64_t d = 0; d < n; ++d) {
    const T g = dy[d] * w[d];
    mean_g += g;
    mean_gx += g * xhat[d];
    dw[d] += dy[d] * xhat[d];
    db[d] += dy[d];
  }
  mean_g /= static_cast<T>(n);
  mean_gx /= static_cast<T>(n);
  for (int64_t d = 0; d < n; ++d) dx[d] = rstd * (dy[d] * w[d] - mean_g - xhat[d] * mean_gx);
}

}  // namespace wmk::attention
