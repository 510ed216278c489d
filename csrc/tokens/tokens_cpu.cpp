#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "common/factorize.h"
#include "tokens/tokens.h"

namespace wmk::tokens {
namespace {

// Lowers `first` to `candidate` atomically, so the reported bad element is the first in memory order.
void lower_to(std::atomic<int64_t>& first, int64_t candidate) {
  int64_t seen = first.load();
  while (candidate < seen && !first.compare_exchange_weak(seen, candidate)) {
  }
}

constexpr int64_t kGrain = 1 << 14;

at::Tensor factorize_tokens_cpu(const at::Tensor& tokens, int64_t base, int64_t num_factors) {
  at::Tensor out = factorize_output(tokens, base, num_factors);
  const int64_t vocab = vocab_size(base, num_factors);
  const at::Tensor in = tokens.contiguous();
  const int64_t n = in.numel();
  std::atomic<int64_t> first_bad{n};
  AT_DISPATCH_INDEX_TYPES(in.scalar_type(), "factorize_tokens_cpu", [&] {
    const index_t* src = in.data_ptr<index_t>();
    index_t* dst = out.data_ptr<index_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t token = static_cast<int64_t>(src[i]);
        if (token < 0 || token >= vocab) {
          lower_to(first_bad, i);
          return;
        }
        factorize_one(token, base, num_factors, dst + i * num_factors);
      }
    });
    const int64_t bad = first_bad.load();
    TORCH_CHECK_VALUE(bad == n, "factorize_tokens: tokens must lie in [0, ", vocab, "), found ",
                      static_cast<int64_t>(src[bad]), " at flat index ", bad);
  });
  return out;
}

at::Tensor unfactorize_tokens_cpu(const at::Tensor& factors, int64_t base) {
  at::Tensor out = unfactorize_output(factors, base);
  const at::Tensor in = factors.contiguous();
  const int64_t num_factors = in.size(-1);
  const int64_t n = out.numel();
  std::atomic<int64_t> first_bad{n};
  AT_DISPATCH_INDEX_TYPES(in.scalar_type(), "unfactorize_tokens_cpu", [&] {
    const index_t* src = in.data_ptr<index_t>();
    index_t* dst = out.data_ptr<index_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t token = unfactorize_one(src + i * num_factors, base, num_factors);
        if (token < 0) {
          lower_to(first_bad, i);
          return;
        }
        dst[i] = static_cast<index_t>(token);
      }
    });
    const int64_t bad = first_bad.load();
    TORCH_CHECK_VALUE(bad == n, "unfactorize_tokens: factors must lie in [0, ", base,
                      "), found one outside that range in token ", bad);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CPU, m) {
  m.impl("factorize_tokens", &factorize_tokens_cpu);
  m.impl("unfactorize_tokens", &unfactorize_tokens_cpu);
}

}  // namespace wmk::tokens
