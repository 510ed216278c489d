// CPU kernels of spatial / temporal / frame-decode attention (schemas in csrc/registration.cpp).
// The engine lives in flash_cpu.h / flash_backward_cpu.h; this file checks arguments, picks the dtype and
// the instruction set (AVX2+FMA intrinsics for float where the CPU has them, portable loops otherwise and
// for float64), and allocates outputs.
#include <ATen/Dispatch.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <utility>
#include <string>
#include <tuple>

#include "attention/attention.h"
#include "common/cpu_isa.h"
#include "attention/cpu_microkernels.h"
#include "attention/cpu_microkernels_avx512.h"
#include "attention/flash_backward_cpu.h"
#include "attention/flash_cpu.h"

namespace wmk::attention {
namespace {

using cpu::MutOperand;
using cpu::Norm;
using cpu::Operand;

template <typename acc_t>
Norm<acc_t> make_norm(const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
                      int64_t d) {
  Norm<acc_t> norm;
  if (!weight.has_value()) return norm;
  const auto acc_type = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  norm.on = true;
  norm.eps = static_cast<acc_t>(eps);
  const at::Tensor w = weight->to(acc_type).contiguous();
  norm.w.assign(w.data_ptr<acc_t>(), w.data_ptr<acc_t>() + d);
  if (bias.has_value()) {
    const at::Tensor b = bias->to(acc_type).contiguous();
    norm.b.assign(b.data_ptr<acc_t>(), b.data_ptr<acc_t>() + d);
  } else {
    norm.b.assign(d, acc_t(0));
  }
  return norm;
}

// The instruction set of the float kernels: the widest this CPU runs, or the one $WMK_ATTN_ISA names
// (portable, avx2, avx512), for tests and benchmarks (common/cpu_isa.h).
CpuIsa float_isa() {
#if WMK_HAVE_AVX2_PATH
  static const bool has_avx512 = cpu::Avx512Kernels::usable();
  static const bool has_avx2 = cpu::Avx2Kernels::usable();
#else
  constexpr bool has_avx512 = false, has_avx2 = false;
#endif
  return choose_cpu_isa("WMK_ATTN_ISA", "portable", has_avx2, has_avx512, "kernels");
}

// Calls f(Kernels) with the kernel set chosen for acc_t (float64 always runs the portable loops).
template <typename acc_t, typename F>
void with_kernels(F&& f) {
#if WMK_HAVE_AVX2_PATH
  if constexpr (std::is_same_v<acc_t, float>) {
    switch (float_isa()) {
      case CpuIsa::kAvx512:
        return f(cpu::Avx512Kernels{});
      case CpuIsa::kAvx2:
        return f(cpu::Avx2Kernels{});
      case CpuIsa::kFallback:
        break;
    }
  }
#endif
  f(cpu::PortableKernels<acc_t>{});
}

template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename T>
Operand<T> operand(const at::Tensor& t, Axis axis) {
  return {t.data_ptr<T>(), roles_of(t, axis)};
}
template <typename T>
MutOperand<T> mut_operand(at::Tensor& t, Axis axis) {
  return {t.data_ptr<T>(), roles_of(t, axis)};
}

// `into`: the output's place, given (then no log-sum-exp is kept), or null for new tensors.
std::tuple<at::Tensor, at::Tensor> forward_impl(const char* op, Axis axis, const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, bool causal, double scale,
                                                const c10::optional<at::Tensor>& weight,
                                                const c10::optional<at::Tensor>& bias, double eps, at::Tensor* into) {
  const Problem p = check_attention(op, axis, q, k, v, causal, scale, weight, bias, eps);
  at::Tensor out = into != nullptr ? *into : at::empty(q.sizes(), q.options());
  at::Tensor lse = into != nullptr ? at::Tensor() : lse_output(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "wmk_attention_cpu", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const Norm<acc_t> norm = make_norm<acc_t>(weight, bias, eps, p.dim);
    with_kernels<acc_t>([&](auto kern) {
      cpu::flash_forward<scalar_t, acc_t, decltype(kern)>(
          p, operand<scalar_t>(q, axis), operand<scalar_t>(k, axis), operand<scalar_t>(v, axis),
          mut_operand<scalar_t>(out, axis), lse.defined() ? lse.data_ptr<acc_t>() : nullptr,
          lse.defined() ? roles_of(lse, axis) : Roles{0, 0, 0, 0, 0}, norm, [&](int64_t) { return p.lk; });
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> forward(const char* op, Axis axis, const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, bool causal, double scale,
                                           const c10::optional<at::Tensor>& weight,
                                           const c10::optional<at::Tensor>& bias, double eps) {
  return forward_impl(op, axis, q, k, v, causal, scale, weight, bias, eps, nullptr);
}

NormGrads backward(const char* op, Axis axis, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, bool causal, double scale,
                   const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
                   const QkvGrads& grads) {
  const Problem p = check_attention(op, axis, q, k, v, causal, scale, weight, bias, eps);
  check_backward(op, q, grad_out, out, lse);
  at::Tensor dq = grads.dq, dk = grads.dk, dv = grads.dv;
  at::Tensor dw = at::empty({0}, q.options());
  at::Tensor db = at::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "wmk_attention_cpu", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const Norm<acc_t> norm = make_norm<acc_t>(weight, bias, eps, p.dim);
    const auto acc_opts = q.options().dtype(std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat);
    // One slot per group (not per thread): the qk_norm gradients are then summed in group order, so they are
    // bitwise the same for any thread count.
    at::Tensor dnorm = at::zeros({norm.on ? num_groups(p) : 0, 2, p.dim}, acc_opts);
    const at::Tensor lse_c = lse.contiguous();
    with_kernels<acc_t>([&](auto kern) {
      const cpu::BackwardArgs<scalar_t, acc_t> args{
          operand<scalar_t>(q, axis),         operand<scalar_t>(k, axis),         operand<scalar_t>(v, axis),
          operand<scalar_t>(out, axis),       operand<scalar_t>(grad_out, axis),  lse_c.data_ptr<acc_t>(),
          roles_of(lse_c, axis),              mut_operand<scalar_t>(dq, axis),    mut_operand<scalar_t>(dk, axis),
          mut_operand<scalar_t>(dv, axis),    &norm,                              dnorm.data_ptr<acc_t>()};
      cpu::flash_backward<scalar_t, acc_t, decltype(kern)>(p, args);
    });
    if (norm.on) {
      at::Tensor total = at::zeros({2, p.dim}, acc_opts);
      acc_t* sum = total.data_ptr<acc_t>();
      const acc_t* slot = dnorm.const_data_ptr<acc_t>();
      for (int64_t g = 0; g < num_groups(p); ++g)  // sequential: the order never depends on the threads
        for (int64_t i = 0; i < 2 * p.dim; ++i) sum[i] += slot[g * 2 * p.dim + i];
      dw = total[0].to(weight->scalar_type(), /*non_blocking=*/false, /*copy=*/true);
      db = total[1].to(bias.has_value() ? bias->scalar_type() : weight->scalar_type(), false, true);
    }
  });
  return {dw, db};
}

using Entry = EntryPoints<&forward, &backward, /*kZeroGrads=*/false>;

// The frame counts as a contiguous int64 tensor, each checked against [1, T_max - n + 1] (on CPU the values are read
// directly: there is no device to sync with, so out-of-range values raise). n is the number of consecutive frames
// a step writes and decodes (the last of them lands at slot num_frames + n - 2).
at::Tensor checked_frames(const char* op, const at::Tensor& num_frames, int64_t t_max, int64_t n = 1) {
  const at::Tensor frames = num_frames.to(at::kLong).reshape({-1}).contiguous();
  const int64_t* nf = frames.data_ptr<int64_t>();
  const int64_t top = t_max - n + 1;
  for (int64_t i = 0; i < frames.numel(); ++i) {
    TORCH_CHECK_VALUE(nf[i] >= 1 && nf[i] <= top, op, ": num_frames must lie in [1, ",
                      n == 1 ? "T_max = " : "T_max - n + 1 = ", top, "]",
                      n == 1 ? "" : " (n = " + std::to_string(n) + " frames, T_max = " + std::to_string(t_max) + ")",
                      ", got ", nf[i], frames.numel() > 1 ? " for batch " + std::to_string(i) : "");
  }
  return frames;
}

// Writes one frame's keys (through the qk LayerNorm) and values into slot num_frames[b] - 1 + offset of the
// caches, one position at a time (the general path of frame_decode_step; the AVX2 and AVX-512 float paths write
// inside the decode loop instead).
template <typename scalar_t, typename acc_t, typename Kern>
void write_frame(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
                 const int64_t* nf, bool per_batch, int64_t offset, const Norm<acc_t>& norm) {
  const int64_t s_len = k.size(1), heads = k.size(2), d = k.size(3);
  at::parallel_for(0, k.size(0) * s_len, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(d);
    // Row (b, s, h) of src into the slot of dst; the keys through the LayerNorm.
    auto copy_row = [&](const at::Tensor& src, at::Tensor& dst, int64_t b, int64_t s, int64_t h, int64_t slot,
                        bool normalize) {
      const scalar_t* from = src.const_data_ptr<scalar_t>() + b * src.stride(0) + s * src.stride(1) + h * src.stride(2);
      cpu::load_row(from, src.stride(3), d, d, row.data());
      if (normalize) Kern::layer_norm(row.data(), d, norm.w.data(), norm.b.data(), norm.eps, (acc_t*)nullptr);
      scalar_t* to = dst.mutable_data_ptr<scalar_t>() + b * dst.stride(0) + slot * dst.stride(1) + s * dst.stride(2) +
                     h * dst.stride(3);
      cpu::store_row<Kern>(row.data(), d, acc_t(1), to, dst.stride(4));
    };
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t b = pos / s_len, s = pos % s_len, slot = nf[per_batch ? b : 0] - 1 + offset;
      for (int64_t h = 0; h < heads; ++h) {
        copy_row(k, k_cache, b, s, h, slot, norm.on);
        copy_row(v, v_cache, b, s, h, slot, false);
      }
    }
  });
}

// Temporal attention of n consecutive query frames q (B, n, S, H, D) over the cache, frame i over the first
// num_frames[b] + i cached frames, the qk LayerNorm (if given) applied to q only: the cache holds keys already
// normalized. With `fresh` (k, v of the same frames, (B, n, S, H, D)), frame i's are first written into slot
// num_frames[b] - 1 + i (frame_decode_step); with store_last false, the float AVX2 / AVX-512 path leaves the last
// frame's slot unwritten (its queries read its K/V from a local copy). Returns (B, n, S, H, D).
at::Tensor decode_cpu(const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& frames,
                      double scale, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                      double eps, const std::pair<at::Tensor, at::Tensor>* fresh, bool store_last = true,
                      at::Tensor* into = nullptr) {
  const int64_t t_max = k_cache.size(1), n = q.size(1);
  const int64_t* nf = frames.data_ptr<int64_t>();
  const bool per_batch = frames.numel() > 1;
  auto lk_of = [&](int64_t b) { return nf[per_batch ? b : 0]; };
  at::Tensor out = into != nullptr ? *into : at::empty(q.sizes(), q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "frame_decode_attention", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const Norm<acc_t> norm = make_norm<acc_t>(weight, bias, eps, q.size(4));
    with_kernels<acc_t>([&](auto kern) {
      using Kern = decltype(kern);
      if constexpr (Kern::kHasDecodeRow && std::is_same_v<scalar_t, float>) {
        if (t_max <= 16 && k_cache.stride(4) == 1 && v_cache.stride(4) == 1) {
          // All n frames in one sweep over the positions: the cached rows are read from memory once, not n times.
          const auto t = Axis::kTemporal;
          const Problem p{q.size(0), q.size(2), q.size(3), n, t_max, q.size(4), false, scale, false, 0.0};
          std::optional<cpu::FrameWrite> write;
          if (fresh != nullptr)
            write = cpu::FrameWrite{operand<float>(fresh->first, t), operand<float>(fresh->second, t),
                                    mut_operand<float>(k_cache, t), mut_operand<float>(v_cache, t), &norm,
                                    store_last};
          return cpu::decode_forward<Kern>(p, operand<float>(q, t), operand<float>(k_cache, t),
                                           operand<float>(v_cache, t), mut_operand<float>(out, t), norm, lk_of,
                                           write ? &*write : nullptr);
        }
      }
      // The general engine, frame by frame (each after the frames before it are written).
      const Problem p{q.size(0), q.size(2), q.size(3), 1, t_max, q.size(4), false, scale, false, 0.0};
      for (int64_t i = 0; i < n; ++i) {
        if (fresh != nullptr)
          write_frame<scalar_t, acc_t, Kern>(fresh->first.select(1, i), fresh->second.select(1, i), k_cache, v_cache,
                                             nf, per_batch, i, norm);
        // The general engine would normalize the cached keys as well: normalize q on its own first.
        const at::Tensor qi = q.narrow(1, i, 1);
        const at::Tensor qn = weight.has_value() ? at::layer_norm(qi, {q.size(4)}, weight, bias, eps) : qi;
        at::Tensor oi = out.narrow(1, i, 1);
        cpu::flash_forward<scalar_t, acc_t, Kern>(
            p, operand<scalar_t>(qn, Axis::kTemporal), operand<scalar_t>(k_cache, Axis::kTemporal),
            operand<scalar_t>(v_cache, Axis::kTemporal), mut_operand<scalar_t>(oi, Axis::kTemporal),
            static_cast<acc_t*>(nullptr), Roles{0, 0, 0, 0, 0}, Norm<acc_t>{}, [&](int64_t b) { return lk_of(b) + i; });
      }
    });
  });
  return out;
}

at::Tensor frame_decode_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                      const at::Tensor& num_frames, double scale) {
  check_frame_decode(q, k_cache, v_cache, num_frames, scale);
  const at::Tensor frames = checked_frames("frame_decode_attention", num_frames, k_cache.size(1));
  at::Tensor kc = k_cache, vc = v_cache;  // read only: no frame is written
  return decode_cpu(q.unsqueeze(1), kc, vc, frames, scale, c10::nullopt, c10::nullopt, 0.0, nullptr).squeeze(1);
}

// frame_decode_step's checks and kernel, into `into` where given (a (B, n, S, H, D) view).
at::Tensor decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                       at::Tensor& v_cache, const at::Tensor& num_frames, double scale,
                       const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
                       bool store_last, at::Tensor* into) {
  const char* op = "frame_decode_step";
  const int64_t n = check_frame_decode_step(q, k, v, k_cache, v_cache, num_frames, scale, weight, bias, eps);
  if (into != nullptr) check_into(op, q, *into);
  const at::Tensor frames = checked_frames(op, num_frames, k_cache.size(1), n);
  const bool run = q.dim() == 5;  // (B, n, S, H, D); else one (B, S, H, D) frame
  const auto as_run = [&](const at::Tensor& t) { return run ? t : t.unsqueeze(1); };
  const std::pair<at::Tensor, at::Tensor> fresh{as_run(k), as_run(v)};
  at::Tensor out = decode_cpu(as_run(q), k_cache, v_cache, frames, scale, weight, bias, eps, &fresh, store_last, into);
  return run ? out : out.squeeze(1);
}

at::Tensor frame_decode_step_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                                 at::Tensor& v_cache, const at::Tensor& num_frames, double scale,
                                 const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                                 double eps, bool store_last) {
  return decode_step(q, k, v, k_cache, v_cache, num_frames, scale, weight, bias, eps, store_last, nullptr);
}

}  // namespace

void spatial_attention_qkv_into_cpu(const at::Tensor& qkv, double scale, const c10::optional<at::Tensor>& weight,
                                    const c10::optional<at::Tensor>& bias, double eps, at::Tensor& out) {
  const char* op = "spatial_attention_qkv";
  const auto [q, k, v] = split_qkv(op, qkv);
  check_into(op, q, out);
  forward_impl(op, Axis::kSpatial, q, k, v, false, scale, weight, bias, eps, &out);
}

void frame_decode_step_into_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                                at::Tensor& v_cache, const at::Tensor& num_frames, double scale,
                                const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                                double eps, bool store_last, at::Tensor& out) {
  TORCH_CHECK_VALUE(q.dim() == 5, "frame_decode_step: the output-taking form needs (B, n, S, H, D) frames, got shape ",
                    q.sizes());
  decode_step(q, k, v, k_cache, v_cache, num_frames, scale, weight, bias, eps, store_last, &out);
}

TORCH_LIBRARY_IMPL(wmk, CPU, m) {
  m.impl("spatial_attention", &Entry::spatial);
  m.impl("spatial_attention_backward", &Entry::spatial_backward);
  m.impl("temporal_attention", &Entry::temporal);
  m.impl("temporal_attention_backward", &Entry::temporal_backward);
  m.impl("spatial_attention_qkv", &Entry::spatial_qkv);
  m.impl("spatial_attention_qkv_backward", &Entry::spatial_qkv_backward);
  m.impl("temporal_attention_qkv", &Entry::temporal_qkv);
  m.impl("temporal_attention_qkv_backward", &Entry::temporal_qkv_backward);
  m.impl("frame_decode_attention", &frame_decode_attention_cpu);
  m.impl("frame_decode_step", &frame_decode_step_cpu);
}

}  // namespace wmk::attention
