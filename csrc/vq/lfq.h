#pragma once
// Argument checks, output allocation and the chunking plan of the LFQ ops, shared by the CPU and CUDA
// kernels so both reject the same inputs with the same messages.
#include <ATen/core/Tensor.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/log.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "common/lfq.h"

namespace wmk::lfq {

inline bool msb_first_of(const std::string& bit_order) {
  TORCH_CHECK_VALUE(bit_order == "lsb" || bit_order == "msb", "bit_order must be 'lsb' or 'msb', got '", bit_order,
                    "'");
  return bit_order == "msb";
}

inline void check_float(const at::Tensor& x, const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating-point tensor (float16, bfloat16, ",
                   "float32 or float64), got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have a last dimension holding the bits, got a 0-d tensor");
}

inline void check_bits(int64_t bits, int64_t max_bits, const char* op) {
  TORCH_CHECK_VALUE(bits >= 1 && bits <= max_bits, op, ": the number of bits must lie in [1, ", max_bits, "], got ",
                    bits);
}

inline at::Tensor encode_output(const at::Tensor& x, const std::string& bit_order) {
  check_float(x, "lfq_encode");
  check_bits(x.size(-1), kMaxBits, "lfq_encode");
  msb_first_of(bit_order);
  auto sizes = x.sizes().vec();
  sizes.pop_back();
  return at::empty(sizes, x.options().dtype(at::kLong));
}

inline at::Tensor decode_output(const at::Tensor& indices, int64_t bits, const std::string& bit_order,
                                std::optional<at::ScalarType> dtype) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
                   "lfq_decode: indices must be an int32 or int64 tensor, got ", indices.scalar_type());
  check_bits(bits, kMaxBits, "lfq_decode");
  msb_first_of(bit_order);
  const at::ScalarType out_type = dtype.value_or(at::kFloat);
  TORCH_CHECK_TYPE(at::isFloatingType(out_type), "lfq_decode: dtype must be a floating-point type, got ", out_type);
  auto sizes = indices.sizes().vec();
  sizes.push_back(bits);
  return at::empty(sizes, indices.options().dtype(out_type));
}

inline void check_entropy_args(const at::Tensor& x, double inv_temperature, double diversity_gamma) {
  check_float(x, "lfq_entropy_loss");
  check_bits(x.size(-1), kMaxEntropyBits, "lfq_entropy_loss");
  TORCH_CHECK_VALUE(std::isfinite(inv_temperature) && inv_temperature > 0,
                    "lfq_entropy_loss: inv_temperature must be a finite number > 0, got ", inv_temperature);
  TORCH_CHECK_VALUE(std::isfinite(diversity_gamma), "lfq_entropy_loss: diversity_gamma must be finite, got ",
                    diversity_gamma);
}

// The accumulation type: float64 inputs keep float64, everything else accumulates in float32.
inline at::ScalarType acc_type_of(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The probability table is (2^hi_bits x 2^lo_bits); samples stream through it in chunks whose two
// half-tables (rows x (2^lo + 2^hi)) hold about 4x as many numbers as the table itself (longer GEMMs run
// faster; 1024 rows at 18 bits), so the whole op needs O(2^bits) memory for any number of samples.
struct Plan {
  int64_t bits, lo_bits, hi_bits, lo_size, hi_size, rows, chunk;
};

inline Plan plan_of(const at::Tensor& x) {
  Plan p;
  p.bits = x.size(-1);
  p.lo_bits = lo_bits_of(p.bits);
  p.hi_bits = p.bits - p.lo_bits;
  p.lo_size = int64_t{1} << p.lo_bits;
  p.hi_size = int64_t{1} << p.hi_bits;
  p.rows = x.numel() / p.bits;
  const int64_t balanced = 4 * ((int64_t{1} << p.bits) / (p.lo_size + p.hi_size));
  p.chunk = balanced > 256 ? balanced : 256;
  return p;
}

// The backward's weight of every table entry: d(codebook entropy)/d(avg_prob) = -(log a + 1), without the
// +1, which sums to zero against a probability table. Clamping a at the smallest normal keeps codes whose
// probability underflowed to 0 finite. Returns (2^hi x 2^lo) in the accumulation type.
inline at::Tensor codebook_weight(const at::Tensor& avg_prob, const at::Tensor& x, const Plan& p) {
  const at::ScalarType acc = acc_type_of(x);
  TORCH_CHECK_VALUE(avg_prob.numel() == p.hi_size * p.lo_size && avg_prob.scalar_type() == acc,
                    "lfq_entropy_loss_backward: avg_prob must hold 2^", p.bits, " ", acc, " probabilities, got ",
                    avg_prob.numel(), " of ", avg_prob.scalar_type());
  const double tiny = acc == at::kDouble ? std::numeric_limits<double>::min()
                                         : static_cast<double>(std::numeric_limits<float>::min());
  return at::log(at::clamp_min(avg_prob.reshape({p.hi_size, p.lo_size}), tiny)).neg_();
}

}  // namespace wmk::lfq
