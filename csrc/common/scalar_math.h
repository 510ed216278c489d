#pragma once
#include <math.h>

#include "common/macros.h"

// float and double overloads of the C math functions, callable on host and device alike, so templated
// kernels compute in the precision of their accumulator type (never silently in double on the host).
namespace wmk::math {

WMK_HOST_DEVICE WMK_INLINE float exp_(float x) { return expf(x); }
WMK_HOST_DEVICE WMK_INLINE double exp_(double x) { return exp(x); }
WMK_HOST_DEVICE WMK_INLINE float log_(float x) { return logf(x); }
WMK_HOST_DEVICE WMK_INLINE double log_(double x) { return log(x); }
WMK_HOST_DEVICE WMK_INLINE float log1p_(float x) { return log1pf(x); }
WMK_HOST_DEVICE WMK_INLINE double log1p_(double x) { return log1p(x); }
WMK_HOST_DEVICE WMK_INLINE float abs_(float x) { return fabsf(x); }
WMK_HOST_DEVICE WMK_INLINE double abs_(double x) { return fabs(x); }
WMK_HOST_DEVICE WMK_INLINE float tanh_(float x) { return tanhf(x); }
WMK_HOST_DEVICE WMK_INLINE double tanh_(double x) { return tanh(x); }
WMK_HOST_DEVICE WMK_INLINE float atanh_(float x) { return atanhf(x); }
WMK_HOST_DEVICE WMK_INLINE double atanh_(double x) { return atanh(x); }
WMK_HOST_DEVICE WMK_INLINE float floor_(float x) { return floorf(x); }
WMK_HOST_DEVICE WMK_INLINE double floor_(double x) { return floor(x); }

// Round half to even, as torch.round does (and independent of the floating-point rounding mode).
template <typename T>
WMK_HOST_DEVICE WMK_INLINE T round_half_even(T x) {
  const T r = floor_(x);
  const T diff = x - r;
  if (diff > T(0.5)) return r + T(1);
  if (diff < T(0.5)) return r;
  const T half = r * T(0.5);
  return floor_(half) == half ? r : r + T(1);
}

}  // namespace wmk::math
