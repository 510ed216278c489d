// CUDA kernels of spatial / temporal / frame-decode attention (schemas in csrc/registration.cpp).
//
// A simple, exact design (compile-verified here; no GPU on the build machine): one warp per query row (forward,
// dq) or per key row (dk/dv), lane l holding head-dim entries l, l + 32, ... (head dims up to 256), dot products
// by warp shuffles, an online softmax in fp32 (fp64 for float64), and the log-sum-exp saved so the backward
// recomputes the probabilities. Warps of one block take consecutive rows, so the short temporal sequences
// (T = 16) of neighbouring positions share a block and their K/V rows in L1. The qk LayerNorm is recomputed
// per row inside the warps. Not tuned for speed: the Triton path (backend="triton") is the tensor-core one.
#include <ATen/Dispatch.h>
#include <ATen/TensorIndexing.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "attention/attention.h"
#include "attention/attention_kernels.cuh"

namespace wmk::attention {
namespace {

using cuda::Args;
using cuda::delta_kernel;
using cuda::dkdv_kernel;
using cuda::dq_kernel;
using cuda::forward_kernel;
using cuda::kWarps;

template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

#define WMK_CASE_CHUNKS(n, ...) \
  case n: {                     \
    constexpr int C = n;        \
    __VA_ARGS__;                \
    break;                      \
  }
// Runs the body with C = ceil(dim / 32) rounded up to a power of two (1, 2, 4, 8: head dims up to 256) as a
// compile-time constant; lanes past the head dim hold zeros. Four variants keep the build time reasonable.
#define WMK_DISPATCH_CHUNKS(dim, ...)                                                                           \
  switch ((dim) <= 32 ? 1 : (dim) <= 64 ? 2 : (dim) <= 128 ? 4 : (dim) <= 256 ? 8 : 0) {                        \
    WMK_CASE_CHUNKS(1, __VA_ARGS__)                                                                             \
    WMK_CASE_CHUNKS(2, __VA_ARGS__)                                                                             \
    WMK_CASE_CHUNKS(4, __VA_ARGS__)                                                                             \
    WMK_CASE_CHUNKS(8, __VA_ARGS__)                                                                             \
    default:                                                                                                    \
      TORCH_CHECK_VALUE(false, "the CUDA attention kernels take head dims up to 256, got ", dim,                \
                        " (wmkernels.spatial_attention / temporal_attention fall back to the reference for it)"); \
  }

unsigned blocks_for(int64_t rows) { return static_cast<unsigned>((rows + kWarps - 1) / kWarps); }

// The qk LayerNorm parameters as acc_t device tensors (kept alive by the caller).
std::pair<at::Tensor, at::Tensor> norm_params(const c10::optional<at::Tensor>& weight,
                                              const c10::optional<at::Tensor>& bias, at::ScalarType acc) {
  if (!weight.has_value()) return {};
  at::Tensor w = weight->to(acc).contiguous();
  at::Tensor b = bias.has_value() ? bias->to(acc).contiguous() : at::zeros_like(w);
  return {w, b};
}

template <typename scalar_t, typename acc_t>
Args<scalar_t, acc_t> make_args(const Problem& p, Axis axis, const at::Tensor& q, const at::Tensor& k,
                                const at::Tensor& v, const std::pair<at::Tensor, at::Tensor>& norm) {
  Args<scalar_t, acc_t> a{};
  a.q = q.data_ptr<scalar_t>();
  a.k = k.data_ptr<scalar_t>();
  a.v = v.data_ptr<scalar_t>();
  a.qs = roles_of(q, axis);
  a.ks = roles_of(k, axis);
  a.vs = roles_of(v, axis);
  a.groups = num_groups(p);
  a.other = p.other;
  a.heads = p.heads;
  a.lq = p.lq;
  a.lk = p.lk;
  a.dim = p.dim;
  a.causal = p.causal;
  a.scale = static_cast<acc_t>(p.scale);
  a.eps = static_cast<acc_t>(p.eps);
  if (norm.first.defined()) {
    a.w = norm.first.data_ptr<acc_t>();
    a.b = norm.second.data_ptr<acc_t>();
  }
  return a;
}

std::tuple<at::Tensor, at::Tensor> forward(const char* op, Axis axis, const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, bool causal, double scale,
                                           const c10::optional<at::Tensor>& weight,
                                           const c10::optional<at::Tensor>& bias, double eps) {
  const Problem p = check_attention(op, axis, q, k, v, causal, scale, weight, bias, eps);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = lse_output(q);
  if (out.numel() == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto norm = norm_params(weight, bias, lse.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "wmk_attention_cuda", [&] {
    using acc_t = acc_type_t<scalar_t>;
    auto a = make_args<scalar_t, acc_t>(p, axis, q, k, v, norm);
    a.o = out.data_ptr<scalar_t>();
    a.os = roles_of(out, axis);
    a.lse = lse.data_ptr<acc_t>();
    a.lss = roles_of(lse, axis);
    WMK_DISPATCH_CHUNKS(p.dim, forward_kernel<scalar_t, acc_t, C><<<blocks_for(a.groups * a.lq), kWarps * 32, 0,
                                                                     stream>>>(a));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

NormGrads backward(const char* op, Axis axis, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, bool causal, double scale,
                   const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
                   const QkvGrads& grads) {
  const Problem p = check_attention(op, axis, q, k, v, causal, scale, weight, bias, eps);
  check_backward(op, q, grad_out, out, lse);
  at::Tensor dq = grads.dq, dk = grads.dk, dv = grads.dv;  // zeroed (kZeroGrads below)
  at::Tensor dw = at::empty({0}, q.options());
  at::Tensor db = at::empty({0}, q.options());
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto acc = lse.scalar_type();
  const auto norm = norm_params(weight, bias, acc);
  at::Tensor dnorm = at::zeros({2, p.dim}, q.options().dtype(acc));
  if (q.numel() > 0 && k.numel() > 0) {
    const at::Tensor lse_c = lse.contiguous();
    at::Tensor delta = at::empty_like(lse_c);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "wmk_attention_backward_cuda", [&] {
      using acc_t = acc_type_t<scalar_t>;
      auto a = make_args<scalar_t, acc_t>(p, axis, q, k, v, norm);
      a.out = out.data_ptr<scalar_t>();
      a.os = roles_of(out, axis);
      a.dout = grad_out.data_ptr<scalar_t>();
      a.dos = roles_of(grad_out, axis);
      a.lse = lse_c.data_ptr<acc_t>();
      a.delta = delta.data_ptr<acc_t>();
      a.lss = roles_of(lse_c, axis);
      a.dq = dq.data_ptr<scalar_t>();
      a.dqs = roles_of(dq, axis);
      a.dk = dk.data_ptr<scalar_t>();
      a.dv = dv.data_ptr<scalar_t>();
      a.dks = roles_of(dk, axis);
      a.dnorm = dnorm.data_ptr<acc_t>();
      const unsigned threads = kWarps * 32;
      WMK_DISPATCH_CHUNKS(p.dim, {
        delta_kernel<scalar_t, acc_t, C><<<blocks_for(a.groups * a.lq), threads, 0, stream>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        dq_kernel<scalar_t, acc_t, C><<<blocks_for(a.groups * a.lq), threads, 0, stream>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        dkdv_kernel<scalar_t, acc_t, C><<<blocks_for(a.groups * a.lk), threads, 0, stream>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  if (weight.has_value()) {
    dw = dnorm[0].to(weight->scalar_type(), false, true);
    db = dnorm[1].to(bias.has_value() ? bias->scalar_type() : weight->scalar_type(), false, true);
  }
  return {dw, db};
}

using Entry = EntryPoints<&forward, &backward, /*kZeroGrads=*/true>;

// num_frames is read by the kernel and clamped to [1, T_max] there: no host sync, graph-capturable.
at::Tensor frame_decode_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                       const at::Tensor& num_frames, double scale) {
  check_frame_decode(q, k_cache, v_cache, num_frames, scale);
  at::Tensor out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor frames = num_frames.to(at::kLong).reshape({-1});  // device-side cast, no sync
  const at::Tensor q5 = q.unsqueeze(1);
  at::Tensor out5 = out.unsqueeze(1);
  const Problem p{q.size(0), q.size(1), q.size(2), 1, k_cache.size(1), q.size(3), false, scale, false, 0.0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "frame_decode_attention_cuda", [&] {
    using acc_t = acc_type_t<scalar_t>;
    auto a = make_args<scalar_t, acc_t>(p, Axis::kTemporal, q5, k_cache, v_cache, {});
    a.o = out5.data_ptr<scalar_t>();
    a.os = roles_of(out5, Axis::kTemporal);
    a.nf = frames.data_ptr<int64_t>();
    a.nf_stride = frames.numel() > 1 ? 1 : 0;
    WMK_DISPATCH_CHUNKS(p.dim, forward_kernel<scalar_t, acc_t, C><<<blocks_for(a.groups), kWarps * 32, 0,
                                                                     stream>>>(a));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// The decoding step as device ops around the decode kernel: the qk LayerNorm of the new keys and queries
// (at::layer_norm), the write into slot num_frames[b] - 1 (index_put_ with device indices: no host sync, so the
// step stays graph-capturable; counts are clamped to [1, T_max] as in frame_decode_attention_cuda). A run of n
// frames (B, n, S, H, D) is n such steps, frame i at count num_frames + i.
at::Tensor frame_decode_step_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                                  at::Tensor& v_cache, const at::Tensor& num_frames, double scale,
                                  const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                                  double eps, bool /*store_last: every frame is stored here*/) {
  const int64_t n = check_frame_decode_step(q, k, v, k_cache, v_cache, num_frames, scale, weight, bias, eps);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t batch = q.size(0), t_max = k_cache.size(1), d = q.size(-1);
  const auto step = [&](const at::Tensor& qi, const at::Tensor& ki, const at::Tensor& vi, const at::Tensor& count) {
    const at::Tensor slot = count.to(at::kLong).reshape({-1}).sub(1).clamp(0, t_max - 1).expand({batch});
    const at::Tensor rows = at::arange(batch, slot.options());
    const at::Tensor kn = weight.has_value() ? at::layer_norm(ki, {d}, weight, bias, eps) : ki;
    using at::indexing::TensorIndex;
    k_cache.index_put_({TensorIndex(rows), TensorIndex(slot)}, kn);
    v_cache.index_put_({TensorIndex(rows), TensorIndex(slot)}, vi);
    const at::Tensor qn = weight.has_value() ? at::layer_norm(qi, {d}, weight, bias, eps) : qi;
    return frame_decode_attention_cuda(qn, k_cache, v_cache, count, scale);
  };
  if (q.dim() == 4) return step(q, k, v, num_frames);
  at::Tensor out = at::empty(q.sizes(), q.options());
  for (int64_t i = 0; i < n; ++i)
    out.select(1, i).copy_(step(q.select(1, i), k.select(1, i), v.select(1, i), num_frames.add(i)));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CUDA, m) {
  m.impl("spatial_attention", &Entry::spatial);
  m.impl("spatial_attention_backward", &Entry::spatial_backward);
  m.impl("temporal_attention", &Entry::temporal);
  m.impl("temporal_attention_backward", &Entry::temporal_backward);
  m.impl("spatial_attention_qkv", &Entry::spatial_qkv);
  m.impl("spatial_attention_qkv_backward", &Entry::spatial_qkv_backward);
  m.impl("temporal_attention_qkv", &Entry::temporal_qkv);
  m.impl("temporal_attention_qkv_backward", &Entry::temporal_qkv_backward);
  m.impl("frame_decode_attention", &frame_decode_attention_cuda);
  m.impl("frame_decode_step", &frame_decode_step_cuda);
}

}  // namespace wmk::attention
