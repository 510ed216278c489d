// LFQ kernels on CUDA: encode/decode, and the exact entropy loss streamed through an O(2^bits) table.
// Per-row work (bit probabilities, half-tables, gradients) runs in these kernels; the outer products that
// fill the (2^hi x 2^lo) table, and the contractions of the backward, are cuBLAS GEMMs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/xlogy.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/lfq.h"
#include "vq/lfq.h"

namespace wmk::lfq {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535));
}

template <typename T>
__global__ void encode_kernel(const T* __restrict__ x, int64_t* __restrict__ out, int64_t n, int64_t bits, bool msb) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = encode_one(x + i * bits, bits, msb);
  }
}

// Bad indices are reported through `first_bad` (lowest flat index), never with a device-side assert.
template <typename I, typename T>
__global__ void decode_kernel(const I* __restrict__ indices, T* __restrict__ out, int64_t n, int64_t bits, bool msb,
                              unsigned long long* first_bad) {
  const int64_t size = int64_t{1} << bits;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t index = static_cast<int64_t>(indices[i]);
    if (index < 0 || index >= size) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
      continue;
    }
    decode_one(index, bits, msb, out + i * bits);
  }
}

// One thread per sample: its bit probabilities, its two half-tables and (optionally) its entropy.
template <typename scalar_t, typename acc_t>
__global__ void expand_kernel(const scalar_t* __restrict__ x, int64_t row0, int64_t rows, int64_t bits,
                              int64_t lo_bits, acc_t scale, acc_t* __restrict__ lo_table, acc_t* __restrict__ hi_table,
                              double* __restrict__ entropy) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  acc_t q0[kMaxEntropyBits], q1[kMaxEntropyBits];
  const scalar_t* xr = x + (row0 + r) * bits;
  double h = 0;
  for (int64_t j = 0; j < bits; ++j) {
    const acc_t z = scale * static_cast<acc_t>(xr[j]);
    bit_probs(z, q0 + j, q1 + j);
    h += static_cast<double>(binary_entropy(z));
  }
  if (entropy != nullptr) entropy[r] = h;
  const int64_t hi_bits = bits - lo_bits;
  expand(q0, q1, lo_bits, lo_table + r * (int64_t{1} << lo_bits));
  expand(q0 + lo_bits, q1 + lo_bits, hi_bits, hi_table + r * (int64_t{1} << hi_bits));
}

template <typename scalar_t, typename acc_t>
__global__ void grad_kernel(const scalar_t* __restrict__ x, int64_t row0, int64_t rows, int64_t bits, int64_t lo_bits,
                            acc_t scale, acc_t gamma, acc_t outer, const acc_t* __restrict__ lo_weight,
                            const acc_t* __restrict__ hi_weight, acc_t* __restrict__ grad) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  acc_t q0[kMaxEntropyBits], q1[kMaxEntropyBits], d[kMaxEntropyBits];
  const int64_t row = row0 + r;
  for (int64_t j = 0; j < bits; ++j) bit_probs(scale * static_cast<acc_t>(x[row * bits + j]), q0 + j, q1 + j);
  const int64_t hi_bits = bits - lo_bits;
  table_grad(lo_weight + r * (int64_t{1} << lo_bits), q0, q1, lo_bits, d);
  table_grad(hi_weight + r * (int64_t{1} << hi_bits), q0 + lo_bits, q1 + lo_bits, hi_bits, d + lo_bits);
  for (int64_t j = 0; j < bits; ++j) {
    const acc_t z = scale * static_cast<acc_t>(x[row * bits + j]);
    grad[row * bits + j] = outer * (binary_entropy_grad(z, q0[j], q1[j]) - gamma * d[j] * q0[j] * q1[j]);
  }
}

at::Tensor lfq_encode_cuda(const at::Tensor& x, c10::string_view bit_order_view) {
  const std::string bit_order(bit_order_view);
  at::Tensor out = encode_output(x, bit_order);
  const bool msb = msb_first_of(bit_order);
  const at::Tensor in = x.contiguous();
  const int64_t n = out.numel();
  if (n == 0) return out;
  const c10::cuda::CUDAGuard guard(in.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "lfq_encode_cuda", [&] {
    encode_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(in.const_data_ptr<scalar_t>(),
                                                                     out.data_ptr<int64_t>(), n, in.size(-1), msb);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor lfq_decode_cuda(const at::Tensor& indices, int64_t bits, c10::string_view bit_order_view,
                           std::optional<at::ScalarType> dtype) {
  const std::string bit_order(bit_order_view);
  at::Tensor out = decode_output(indices, bits, bit_order, dtype);
  const bool msb = msb_first_of(bit_order);
  const at::Tensor in = indices.contiguous();
  const int64_t n = in.numel();
  if (n == 0) return out;
  const c10::cuda::CUDAGuard guard(in.device());
  at::Tensor first_bad = at::full({1}, n, in.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INDEX_TYPES(in.scalar_type(), "lfq_decode_cuda", [&] {
    using I = index_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "lfq_decode_cuda_out", [&] {
      decode_kernel<I, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          in.const_data_ptr<I>(), out.data_ptr<scalar_t>(), n, bits, msb,
          reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = first_bad.item<int64_t>();
  TORCH_CHECK_INDEX(bad == n, "lfq_decode: indices must lie in [0, 2^", bits, " = ", int64_t{1} << bits, "), found ",
                    in.reshape(-1)[bad].item<int64_t>(), " at flat index ", bad);
  return out;
}

std::tuple<at::Tensor, at::Tensor> lfq_entropy_loss_cuda(const at::Tensor& x, double inv_temperature,
                                                         double diversity_gamma) {
  check_entropy_args(x, inv_temperature, diversity_gamma);
  const at::Tensor in = x.contiguous();
  const Plan p = plan_of(in);
  const c10::cuda::CUDAGuard guard(in.device());
  const auto acc = in.options().dtype(acc_type_of(in));
  at::Tensor table = at::zeros({p.hi_size, p.lo_size}, acc);
  at::Tensor lo_table = at::empty({p.chunk, p.lo_size}, acc);
  at::Tensor hi_table = at::empty({p.chunk, p.hi_size}, acc);
  at::Tensor entropy = at::zeros({p.rows > 0 ? p.rows : 1}, in.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "lfq_entropy_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(4 * inv_temperature);
    for (int64_t row0 = 0; row0 < p.rows; row0 += p.chunk) {
      const int64_t rows = std::min(p.chunk, p.rows - row0);
      expand_kernel<scalar_t, acc_t><<<blocks_for(rows, 128), 128, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), row0, rows, p.bits, p.lo_bits, scale, lo_table.data_ptr<acc_t>(),
          hi_table.data_ptr<acc_t>(), entropy.data_ptr<double>() + row0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      table.addmm_(hi_table.narrow(0, 0, rows).t(), lo_table.narrow(0, 0, rows));
    }
  });
  // An empty batch has nothing to penalize: its loss is 0. No host synchronization: the loss stays on device.
  const double denom = p.rows > 0 ? static_cast<double>(p.rows) : 1.0;
  table.div_(denom);
  const at::Tensor codebook_entropy = at::xlogy(table, table).sum(at::kDouble).neg();
  const at::Tensor loss = entropy.sum().div(denom).sub(codebook_entropy.mul(diversity_gamma));
  return {loss.to(x.scalar_type()), table.view({-1})};
}

at::Tensor lfq_entropy_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& avg_prob,
                                          double inv_temperature, double diversity_gamma) {
  check_entropy_args(x, inv_temperature, diversity_gamma);
  const at::Tensor in = x.contiguous();
  const Plan p = plan_of(in);
  const auto acc = in.options().dtype(acc_type_of(in));
  const c10::cuda::CUDAGuard guard(in.device());
  at::Tensor grad_x = at::empty(in.sizes(), acc);
  const at::Tensor weight = codebook_weight(avg_prob, in, p);
  at::Tensor lo_table = at::empty({p.chunk, p.lo_size}, acc);
  at::Tensor hi_table = at::empty({p.chunk, p.hi_size}, acc);
  const double denom = p.rows > 0 ? static_cast<double>(p.rows) : 1.0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "lfq_entropy_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(4 * inv_temperature);
    for (int64_t row0 = 0; row0 < p.rows; row0 += p.chunk) {
      const int64_t rows = std::min(p.chunk, p.rows - row0);
      expand_kernel<scalar_t, acc_t><<<blocks_for(rows, 128), 128, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), row0, rows, p.bits, p.lo_bits, scale, lo_table.data_ptr<acc_t>(),
          hi_table.data_ptr<acc_t>(), nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor lo_weight = at::mm(hi_table.narrow(0, 0, rows), weight);
      const at::Tensor hi_weight = at::mm(lo_table.narrow(0, 0, rows), weight.t());
      grad_kernel<scalar_t, acc_t><<<blocks_for(rows, 128), 128, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), row0, rows, p.bits, p.lo_bits, scale, static_cast<acc_t>(diversity_gamma),
          static_cast<acc_t>(4 * inv_temperature / denom), lo_weight.const_data_ptr<acc_t>(),
          hi_weight.const_data_ptr<acc_t>(), grad_x.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grad_x.mul_(grad.to(acc_type_of(in))).to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CUDA, m) {
  m.impl("lfq_encode", &lfq_encode_cuda);
  m.impl("lfq_decode", &lfq_decode_cuda);
  m.impl("lfq_entropy_loss", &lfq_entropy_loss_cuda);
  m.impl("lfq_entropy_loss_backward", &lfq_entropy_loss_backward_cuda);
}

}  // namespace wmk::lfq
