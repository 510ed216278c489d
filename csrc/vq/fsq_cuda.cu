// FSQ kernels on CUDA: bounded rounding with codes + indices, its straight-through backward, and decode.
// The levels travel by value (struct Levels), so no kernel reads host memory.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "vq/fsq.h"

namespace wmk::fsq {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535));
}

template <typename scalar_t, typename acc_t>
__global__ void quantize_kernel(const scalar_t* __restrict__ z, scalar_t* __restrict__ codes,
                                int64_t* __restrict__ indices, int64_t n, const Levels l) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    indices[i] = quantize_vector<scalar_t, acc_t>(z + i * l.dims, l, codes + i * l.dims);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void quantize_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ z,
                                         scalar_t* __restrict__ out, int64_t numel, const Levels l) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < numel;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t slope = quantize_grad(static_cast<acc_t>(z[k]), level_constants<acc_t>(l.levels[k % l.dims]));
    out[k] = static_cast<scalar_t>(static_cast<acc_t>(grad[k]) * slope);
  }
}

// Bad indices are reported through `first_bad` (lowest flat index), never with a device-side assert.
template <typename I, typename scalar_t>
__global__ void decode_kernel(const I* __restrict__ indices, scalar_t* __restrict__ out, int64_t n, const Levels l,
                              unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!decode_vector(static_cast<int64_t>(indices[i]), l, out + i * l.dims)) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> fsq_quantize_cuda(const at::Tensor& z, at::IntArrayRef levels) {
  const Levels l = levels_of(levels, "fsq_quantize");
  check_z(z, l, "fsq_quantize");
  const at::Tensor in = z.contiguous();
  at::Tensor codes = at::empty(in.sizes(), in.options());
  at::Tensor indices = indices_output(in);
  const int64_t n = indices.numel();
  if (n == 0) return {codes, indices};
  const c10::cuda::CUDAGuard guard(in.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fsq_quantize_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    quantize_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), codes.data_ptr<scalar_t>(), indices.data_ptr<int64_t>(), n, l);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {codes, indices};
}

at::Tensor fsq_quantize_backward_cuda(const at::Tensor& grad_codes, const at::Tensor& z, at::IntArrayRef levels) {
  const Levels l = levels_of(levels, "fsq_quantize_backward");
  check_z(z, l, "fsq_quantize_backward");
  TORCH_CHECK_VALUE(grad_codes.sizes() == z.sizes(), "fsq_quantize_backward: grad_codes must have z's shape ",
                    z.sizes(), ", got ", grad_codes.sizes());
  const at::Tensor in = z.contiguous();
  const at::Tensor grad = grad_codes.to(z.scalar_type()).contiguous();
  at::Tensor out = at::empty(in.sizes(), in.options());
  const int64_t numel = in.numel();
  if (numel == 0) return out;
  const c10::cuda::CUDAGuard guard(in.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fsq_quantize_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    quantize_backward_kernel<scalar_t, acc_t><<<blocks_for(numel), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), numel, l);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor fsq_decode_cuda(const at::Tensor& indices, at::IntArrayRef levels, std::optional<at::ScalarType> dtype) {
  const Levels l = levels_of(levels, "fsq_decode");
  at::Tensor out = decode_output(indices, l, dtype);
  const at::Tensor in = indices.contiguous();
  const int64_t n = in.numel();
  if (n == 0) return out;
  const c10::cuda::CUDAGuard guard(in.device());
  at::Tensor first_bad = at::full({1}, n, in.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INDEX_TYPES(in.scalar_type(), "fsq_decode_cuda", [&] {
    using I = index_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fsq_decode_cuda_out", [&] {
      decode_kernel<I, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          in.const_data_ptr<I>(), out.data_ptr<scalar_t>(), n, l,
          reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = first_bad.item<int64_t>();
  TORCH_CHECK_INDEX(bad == n, "fsq_decode: indices must lie in [0, prod(levels) = ", l.size, "), found ",
                    in.reshape(-1)[bad].item<int64_t>(), " at flat index ", bad);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CUDA, m) {
  m.impl("fsq_quantize", &fsq_quantize_cuda);
  m.impl("fsq_quantize_backward", &fsq_quantize_backward_cuda);
  m.impl("fsq_decode", &fsq_decode_cuda);
}

}  // namespace wmk::fsq
