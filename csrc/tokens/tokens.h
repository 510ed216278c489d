#pragma once
// Argument checks and output allocation for factorize_tokens / unfactorize_tokens, shared by the
// CPU and CUDA kernels so both reject the same inputs with the same messages.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace wmk::tokens {

// base ** num_factors, checked for int64 overflow.
inline int64_t vocab_size(int64_t base, int64_t num_factors) {
  TORCH_CHECK_VALUE(base >= 2, "factored_vocab_size must be at least 2, got ", base);
  TORCH_CHECK_VALUE(num_factors >= 1, "num_factors must be at least 1, got ", num_factors);
  int64_t vocab = 1;
  for (int64_t j = 0; j < num_factors; ++j) {
    TORCH_CHECK_VALUE(vocab <= std::numeric_limits<int64_t>::max() / base, "factored_vocab_size ** num_factors = ",
                      base, " ** ", num_factors, " overflows int64");
    vocab *= base;
  }
  return vocab;
}

inline void check_integer_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, name,
                   " must be an int32 or int64 tensor, got ", t.scalar_type());
}

inline at::Tensor factorize_output(const at::Tensor& tokens, int64_t base, int64_t num_factors) {
  check_integer_dtype(tokens, "tokens");
  vocab_size(base, num_factors);
  auto sizes = tokens.sizes().vec();
  sizes.push_back(num_factors);
  return at::empty(sizes, tokens.options());
}

inline at::Tensor unfactorize_output(const at::Tensor& factors, int64_t base) {
  check_integer_dtype(factors, "factors");
  TORCH_CHECK_VALUE(factors.dim() >= 1, "factors must have a last dimension holding the factors, got a 0-d tensor");
  const int64_t vocab = vocab_size(base, factors.size(-1));
  TORCH_CHECK_VALUE(factors.scalar_type() == at::kLong || vocab - 1 <= std::numeric_limits<int32_t>::max(),
                    "unfactorize_tokens: a vocabulary of ", vocab, " tokens does not fit int32 factors; pass int64");
  auto sizes = factors.sizes().vec();
  sizes.pop_back();
  return at::empty(sizes, factors.options());
}

}  // namespace wmk::tokens
