// FSQ kernels on CPU: bounded rounding with codes + indices, its straight-through backward, and decode.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <tuple>

#include "vq/fsq.h"

namespace wmk::fsq {
namespace {

constexpr int64_t kGrain = 1 << 11;

std::tuple<at::Tensor, at::Tensor> fsq_quantize_cpu(const at::Tensor& z, at::IntArrayRef levels) {
  const Levels l = levels_of(levels, "fsq_quantize");
  check_z(z, l, "fsq_quantize");
  const at::Tensor in = z.contiguous();
  at::Tensor codes = at::empty(in.sizes(), in.options());
  at::Tensor indices = indices_output(in);
  const int64_t n = indices.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fsq_quantize_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    scalar_t* dst = codes.data_ptr<scalar_t>();
    int64_t* idx = indices.data_ptr<int64_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        idx[i] = quantize_vector<scalar_t, acc_t>(src + i * l.dims, l, dst + i * l.dims);
      }
    });
  });
  return {codes, indices};
}

at::Tensor fsq_quantize_backward_cpu(const at::Tensor& grad_codes, const at::Tensor& z, at::IntArrayRef levels) {
  const Levels l = levels_of(levels, "fsq_quantize_backward");
  check_z(z, l, "fsq_quantize_backward");
  TORCH_CHECK_VALUE(grad_codes.sizes() == z.sizes(), "fsq_quantize_backward: grad_codes must have z's shape ",
                    z.sizes(), ", got ", grad_codes.sizes());
  const at::Tensor in = z.contiguous();
  const at::Tensor grad = grad_codes.to(z.scalar_type()).contiguous();
  at::Tensor out = at::empty(in.sizes(), in.options());
  const int64_t n = in.numel() / l.dims;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fsq_quantize_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < l.dims; ++j) {
          const int64_t k = i * l.dims + j;
          const acc_t slope = quantize_grad(static_cast<acc_t>(src[k]), level_constants<acc_t>(l.levels[j]));
          dst[k] = static_cast<scalar_t>(static_cast<acc_t>(g[k]) * slope);
        }
      }
    });
  });
  return out;
}

void lower_to(std::atomic<int64_t>& first, int64_t candidate) {
  int64_t seen = first.load();
  while (candidate < seen && !first.compare_exchange_weak(seen, candidate)) {
  }
}

at::Tensor fsq_decode_cpu(const at::Tensor& indices, at::IntArrayRef levels, std::optional<at::ScalarType> dtype) {
  const Levels l = levels_of(levels, "fsq_decode");
  at::Tensor out = decode_output(indices, l, dtype);
  const at::Tensor in = indices.contiguous();
  const int64_t n = in.numel();
  std::atomic<int64_t> first_bad{n};
  AT_DISPATCH_INDEX_TYPES(in.scalar_type(), "fsq_decode_cpu", [&] {
    const index_t* src = in.const_data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fsq_decode_cpu_out", [&] {
      scalar_t* dst = out.data_ptr<scalar_t>();
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          if (!decode_vector(static_cast<int64_t>(src[i]), l, dst + i * l.dims)) {
            lower_to(first_bad, i);
            return;
          }
        }
      });
    });
    const int64_t bad = first_bad.load();
    TORCH_CHECK_INDEX(bad == n, "fsq_decode: indices must lie in [0, prod(levels) = ", l.size, "), found ",
                      static_cast<int64_t>(src[bad]), " at flat index ", bad);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CPU, m) {
  m.impl("fsq_quantize", &fsq_quantize_cpu);
  m.impl("fsq_quantize_backward", &fsq_quantize_backward_cpu);
  m.impl("fsq_decode", &fsq_decode_cpu);
}

}  // namespace wmk::fsq
