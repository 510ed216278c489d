#pragma once
#include <cstdint>

#include "common/macros.h"

// Token factorization of the 1X data: token = sum_j factor_j * base^j, factor_j = (token / base^j) % base.
namespace wmk {

template <typename T>
WMK_HOST_DEVICE WMK_INLINE void factorize_one(int64_t token, int64_t base, int64_t num_factors, T* out) {
  for (int64_t j = 0; j < num_factors; ++j) {
    out[j] = static_cast<T>(token % base);
    token /= base;
  }
}

// Returns -1 when a factor lies outside [0, base).
template <typename T>
WMK_HOST_DEVICE WMK_INLINE int64_t unfactorize_one(const T* factors, int64_t base, int64_t num_factors) {
  int64_t token = 0;
  for (int64_t j = num_factors - 1; j >= 0; --j) {
    const int64_t f = static_cast<int64_t>(factors[j]);
    if (f < 0 || f >= base) return -1;
    token = token * base + f;
  }
  return token;
}

}  // namespace wmk
