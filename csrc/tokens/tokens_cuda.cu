#include <ATen/Dispatch.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/factorize.h"
#include "tokens/tokens.h"

namespace wmk::tokens {
namespace {

constexpr int kThreads = 256;

// Bad input is reported through `first_bad` (lowest flat index), never with a device-side assert,
// so the host can raise a Python exception and the CUDA context stays usable.
template <typename T>
__global__ void factorize_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t n, int64_t base,
                                 int64_t num_factors, int64_t vocab, unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t token = static_cast<int64_t>(src[i]);
    if (token < 0 || token >= vocab) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
      continue;
    }
    factorize_one(token, base, num_factors, dst + i * num_factors);
  }
}

template <typename T>
__global__ void unfactorize_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t n, int64_t base,
                                   int64_t num_factors, unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t token = unfactorize_one(src + i * num_factors, base, num_factors);
    if (token < 0) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
      continue;
    }
    dst[i] = static_cast<T>(token);
  }
}

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535));
}

at::Tensor factorize_tokens_cuda(const at::Tensor& tokens, int64_t base, int64_t num_factors) {
  at::Tensor out = factorize_output(tokens, base, num_factors);
  const int64_t vocab = vocab_size(base, num_factors);
  const at::Tensor in = tokens.contiguous();
  const int64_t n = in.numel();
  if (n == 0) return out;
  const c10::cuda::CUDAGuard guard(in.device());
  at::Tensor first_bad = at::full({1}, n, in.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INDEX_TYPES(in.scalar_type(), "factorize_tokens_cuda", [&] {
    factorize_kernel<index_t><<<blocks_for(n), kThreads, 0, stream>>>(
        in.data_ptr<index_t>(), out.data_ptr<index_t>(), n, base, num_factors, vocab,
        reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = first_bad.item<int64_t>();
  TORCH_CHECK_VALUE(bad == n, "factorize_tokens: tokens must lie in [0, ", vocab, "), found ",
                    in.reshape(-1)[bad].item<int64_t>(), " at flat index ", bad);
  return out;
}

at::Tensor unfactorize_tokens_cuda(const at::Tensor& factors, int64_t base) {
  at::Tensor out = unfactorize_output(factors, base);
  const at::Tensor in = factors.contiguous();
  const int64_t n = out.numel();
  if (n == 0) return out;
  const c10::cuda::CUDAGuard guard(in.device());
  at::Tensor first_bad = at::full({1}, n, in.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INDEX_TYPES(in.scalar_type(), "unfactorize_tokens_cuda", [&] {
    unfactorize_kernel<index_t><<<blocks_for(n), kThreads, 0, stream>>>(
        in.data_ptr<index_t>(), out.data_ptr<index_t>(), n, base, in.size(-1),
        reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = first_bad.item<int64_t>();
  TORCH_CHECK_VALUE(bad == n, "unfactorize_tokens: factors must lie in [0, ", base,
                    "), found one outside that range in token ", bad);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CUDA, m) {
  m.impl("factorize_tokens", &factorize_tokens_cuda);
  m.impl("unfactorize_tokens", &unfactorize_tokens_cuda);
}

}  // namespace wmk::tokens
