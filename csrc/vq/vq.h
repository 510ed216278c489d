#pragma once
// Argument checks and output allocation for vq_encode / vq_decode, shared by the CPU and CUDA kernels
// so both reject the same inputs with the same messages.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <limits>
#include <string>
#include <tuple>

#include "common/vq.h"

namespace wmk::vq {

inline Metric parse_metric(c10::string_view metric) {
  if (metric == "l2") return Metric::kL2;
  TORCH_CHECK_VALUE(metric == "cosine", "vq_encode: metric must be 'l2' or 'cosine', got '", std::string(metric),
                    "'");
  return Metric::kCosine;
}

inline void check_codebook(const at::Tensor& codebook, const char* op) {
  TORCH_CHECK_VALUE(codebook.dim() == 2, op, ": codebook must be 2-d (K, D), got shape ", codebook.sizes());
  TORCH_CHECK_VALUE(codebook.size(0) >= 1 && codebook.size(1) >= 1, op,
                    ": codebook must hold at least one code of at least one dimension, got an empty codebook "
                    "of shape ", codebook.sizes());
  // The CPU search keeps code indices in int32, codes padded to whole panels of up to 64: keep them all below 2^31.
  TORCH_CHECK_VALUE(codebook.size(0) <= std::numeric_limits<int32_t>::max() - 64, op,
                    ": codebook holds more than 2^31 - 65 codes: ", codebook.size(0));
}

// Returns (indices int64 (...), distances float32 (...)) for x (..., D).
inline std::tuple<at::Tensor, at::Tensor> encode_outputs(const at::Tensor& x, const at::Tensor& codebook) {
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                   "vq_encode: x must be a float32, float16 or bfloat16 tensor, got ", dt);
  TORCH_CHECK_TYPE(codebook.scalar_type() == dt, "vq_encode: codebook must have the dtype of x (", dt, "), got ",
                   codebook.scalar_type());
  TORCH_CHECK_VALUE(x.device() == codebook.device(), "vq_encode: x and codebook must be on the same device, got ",
                    x.device(), " and ", codebook.device());
  TORCH_CHECK_VALUE(x.dim() >= 1, "vq_encode: x must have a last dimension D, got a 0-d tensor");
  check_codebook(codebook, "vq_encode");
  TORCH_CHECK_VALUE(x.size(-1) == codebook.size(1), "vq_encode: the last dimension of x (", x.size(-1),
                    ") must equal the code dimension D of codebook ", codebook.sizes());
  auto sizes = x.sizes().vec();
  sizes.pop_back();
  return {at::empty(sizes, x.options().dtype(at::kLong)), at::empty(sizes, x.options().dtype(at::kFloat))};
}

// Returns codes (..., D) in the codebook's dtype for indices (...).
inline at::Tensor decode_output(const at::Tensor& indices, const at::Tensor& codebook) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
                   "vq_decode: indices must be an int32 or int64 tensor, got ", indices.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(codebook.scalar_type()),
                   "vq_decode: codebook must be a floating-point tensor, got ", codebook.scalar_type());
  TORCH_CHECK_VALUE(indices.device() == codebook.device(),
                    "vq_decode: indices and codebook must be on the same device, got ", indices.device(), " and ",
                    codebook.device());
  check_codebook(codebook, "vq_decode");
  auto sizes = indices.sizes().vec();
  sizes.push_back(codebook.size(1));
  return at::empty(sizes, codebook.options());
}

}  // namespace wmk::vq
