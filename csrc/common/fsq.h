#pragma once
#include <cstdint>

#include "common/macros.h"
#include "common/scalar_math.h"

// Finite scalar quantization (FSQ) math shared by the CPU and CUDA kernels, with the conventions of
// vector-quantize-pytorch's FSQ (the paper's Appendix A.1):
//   half_l = (L - 1) * (1 + 1e-3) / 2,  offset = 0.5 for even L else 0,  shift = atanh(offset / half_l)
//   bounded = tanh(z + shift) * half_l - offset,  r = round(bounded),  code = r / (L / 2)
//   digit = r + L / 2 in [0, L),  index = sum_j digit_j * prod_{i<j} L_i  (first dimension least significant).
// The gradient is straight through the rounding only: d code / dz = half_l (1 - tanh^2(z + shift)) / (L / 2).
namespace wmk::fsq {

template <typename acc_t>
struct Level {
  int64_t levels;
  int64_t half_width;  // L / 2 (integer division)
  acc_t half_l;
  acc_t offset;
  acc_t shift;
};

template <typename acc_t>
WMK_HOST_DEVICE WMK_INLINE Level<acc_t> level_constants(int64_t levels) {
  Level<acc_t> c;
  c.levels = levels;
  c.half_width = levels / 2;
  c.half_l = static_cast<acc_t>(levels - 1) * static_cast<acc_t>(1.001) / acc_t(2);
  c.offset = (levels % 2 == 0) ? acc_t(0.5) : acc_t(0);
  c.shift = math::atanh_(c.offset / c.half_l);
  return c;
}

// One component: writes the rounded level r (as acc_t) and returns the digit in [0, L), or -1 for NaN.
// r is clamped to the L levels: for L > 1000 the 1e-3 margin of half_l would otherwise reach one level past
// the end (vector-quantize-pytorch then yields an out-of-range index; here the last level is kept).
template <typename acc_t>
WMK_HOST_DEVICE WMK_INLINE int64_t quantize_one(acc_t z, const Level<acc_t>& c, acc_t* code) {
  const acc_t bounded = math::tanh_(z + c.shift) * c.half_l - c.offset;
  acc_t r = math::round_half_even(bounded);
  if (!(r == r)) {  // NaN in, NaN out
    *code = r;
    return -1;
  }
  const acc_t lowest = -static_cast<acc_t>(c.half_width);
  const acc_t highest = static_cast<acc_t>(c.levels - 1 - c.half_width);
  r = r < lowest ? lowest : (r > highest ? highest : r);
  *code = r / static_cast<acc_t>(c.half_width);
  return static_cast<int64_t>(r) + c.half_width;
}

template <typename acc_t>
WMK_HOST_DEVICE WMK_INLINE acc_t quantize_grad(acc_t z, const Level<acc_t>& c) {
  const acc_t t = math::tanh_(z + c.shift);
  return c.half_l * (acc_t(1) - t * t) / static_cast<acc_t>(c.half_width);
}

template <typename acc_t>
WMK_HOST_DEVICE WMK_INLINE acc_t digit_to_code(int64_t digit, int64_t half_width) {
  return static_cast<acc_t>(digit - half_width) / static_cast<acc_t>(half_width);
}

}  // namespace wmk::fsq
