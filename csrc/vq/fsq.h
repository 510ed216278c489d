#pragma once
// Argument checks and output allocation of the FSQ ops, shared by the CPU and CUDA kernels.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "common/fsq.h"

namespace wmk::fsq {

// The levels travel by value into the kernels (host and device alike).
constexpr int64_t kMaxDims = 32;
constexpr int64_t kMaxCodebook = int64_t{1} << 62;

struct Levels {
  int64_t dims;
  int64_t size;  // prod(levels): the implicit codebook size
  int64_t levels[kMaxDims];
  int64_t basis[kMaxDims];  // prod(levels[:j]): the first dimension is the least significant digit
};

inline Levels levels_of(at::IntArrayRef levels, const char* op) {
  TORCH_CHECK_VALUE(!levels.empty() && static_cast<int64_t>(levels.size()) <= kMaxDims, op,
                    ": levels must hold between 1 and ", kMaxDims, " entries, got ", levels.size());
  Levels l{};
  l.dims = static_cast<int64_t>(levels.size());
  int64_t size = 1;
  for (int64_t j = 0; j < l.dims; ++j) {
    TORCH_CHECK_VALUE(levels[j] >= 2, op, ": every level must be at least 2, got levels[", j, "] = ", levels[j]);
    TORCH_CHECK_VALUE(size <= kMaxCodebook / levels[j], op, ": the codebook size prod(levels) exceeds 2^62 at levels[",
                      j, "]");
    l.levels[j] = levels[j];
    l.basis[j] = size;
    size *= levels[j];
  }
  l.size = size;
  return l;
}

inline void check_z(const at::Tensor& z, const Levels& l, const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(z.scalar_type()), op, ": z must be a floating-point tensor (float16, bfloat16, ",
                   "float32 or float64), got ", z.scalar_type());
  TORCH_CHECK_VALUE(z.dim() >= 1 && z.size(-1) == l.dims, op, ": z must have a last dimension of len(levels) = ",
                    l.dims, ", got shape ", z.sizes());
}

inline at::Tensor indices_output(const at::Tensor& z) {
  auto sizes = z.sizes().vec();
  sizes.pop_back();
  return at::empty(sizes, z.options().dtype(at::kLong));
}

inline at::Tensor decode_output(const at::Tensor& indices, const Levels& l, std::optional<at::ScalarType> dtype) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
                   "fsq_decode: indices must be an int32 or int64 tensor, got ", indices.scalar_type());
  const at::ScalarType out_type = dtype.value_or(at::kFloat);
  TORCH_CHECK_TYPE(at::isFloatingType(out_type), "fsq_decode: dtype must be a floating-point type, got ", out_type);
  auto sizes = indices.sizes().vec();
  sizes.push_back(l.dims);
  return at::empty(sizes, indices.options().dtype(out_type));
}

// One vector of `dims` components: codes and the index (-1 when a component is NaN).
template <typename scalar_t, typename acc_t>
WMK_HOST_DEVICE WMK_INLINE int64_t quantize_vector(const scalar_t* z, const Levels& l, scalar_t* codes) {
  int64_t index = 0;
  bool nan = false;
  for (int64_t j = 0; j < l.dims; ++j) {
    const Level<acc_t> c = level_constants<acc_t>(l.levels[j]);
    acc_t code;
    const int64_t digit = quantize_one(static_cast<acc_t>(z[j]), c, &code);
    codes[j] = static_cast<scalar_t>(code);
    nan = nan || digit < 0;
    index += digit * l.basis[j];
  }
  return nan ? -1 : index;
}

// Returns false (and writes nothing) when index lies outside [0, prod(levels)).
template <typename scalar_t>
WMK_HOST_DEVICE WMK_INLINE bool decode_vector(int64_t index, const Levels& l, scalar_t* codes) {
  if (index < 0 || index >= l.size) return false;
  for (int64_t j = 0; j < l.dims; ++j) {
    const int64_t digit = (index / l.basis[j]) % l.levels[j];
    codes[j] = static_cast<scalar_t>(digit_to_code<double>(digit, l.levels[j] / 2));
  }
  return true;
}

}  // namespace wmk::fsq
