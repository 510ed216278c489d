#pragma once
// Argument checks, output allocation and the layout description shared by the CPU and CUDA attention
// kernels, so both devices reject the same inputs with the same messages.
//
// Every op works on the video layout (B, T, S, H, D) in place, through strides. A "sequence" is the set of
// tokens one query attends over: for spatial attention the S tokens of frame (b, t) and head h, for temporal
// attention the T frames at position (b, s) and head h. `Roles` names each stride by its role.
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>
#include <tuple>

namespace wmk::attention {

enum class Axis { kSpatial, kTemporal };

// Strides in elements: batch, the other token axis (t for spatial, s for temporal), the sequence axis
// attended over (s for spatial, t for temporal), head, head dim.
struct Roles {
  int64_t b, x, l, h, d;
};

// Sizes of a call: groups are (b, x, h) with h fastest, each a sequence of lq queries over lk keys.
struct Problem {
  int64_t batch, other, heads, lq, lk, dim;
  bool causal;
  double scale;
  bool qk_norm;
  double eps;
};

inline Roles roles_of(const at::Tensor& t, Axis axis) {
  // t: (B, T, S, H, D) or, for the log-sum-exp, (B, T, S, H) (head dim stride 0).
  const int64_t d = t.dim() == 5 ? t.stride(4) : 0;
  if (axis == Axis::kSpatial) return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), d};
  return {t.stride(0), t.stride(2), t.stride(1), t.stride(3), d};
}

inline int64_t num_groups(const Problem& p) { return p.batch * p.other * p.heads; }

inline at::ScalarType lse_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, op, ": ", name,
                   " must be float32, float16, bfloat16 or float64, got ", st);
}

inline void check_5d(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 5, op, ": ", name, " must be a 5-D (B, T, S, H, D) tensor, got shape ", t.sizes());
}

inline void check_same(const at::Tensor& q, const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                   " but q has ", q.scalar_type(), "; q, k and v must share a dtype");
  TORCH_CHECK_VALUE(t.device() == q.device(), op, ": ", name, " is on ", t.device(), " but q is on ", q.device());
}

// Checks q, k, v (and the optional qk LayerNorm weights) and returns the problem sizes.
inline Problem check_attention(const char* op, Axis axis, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               bool causal, double scale, const c10::optional<at::Tensor>& weight,
                               const c10::optional<at::Tensor>& bias, double eps) {
  check_5d(q, op, "q");
  check_5d(k, op, "k");
  check_5d(v, op, "v");
  check_float(q, op, "q");
  check_same(q, k, op, "k");
  check_same(q, v, op, "v");
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), op, ": k and v must have the same shape, got ", k.sizes(), " and ",
                    v.sizes());
  if (axis == Axis::kSpatial) {
    TORCH_CHECK_VALUE(k.sizes() == q.sizes(), op, ": k and v must have q's shape (B, T, S, H, D) = ", q.sizes(),
                      ", got ", k.sizes());
  } else {
    TORCH_CHECK_VALUE(k.size(0) == q.size(0) && k.size(2) == q.size(2) && k.size(3) == q.size(3) &&
                          k.size(4) == q.size(4),
                      op, ": k and v must be (B, Tk, S, H, D) with q's B, S, H, D; q is ", q.sizes(), ", k is ",
                      k.sizes());
    TORCH_CHECK_VALUE(!causal || k.size(1) >= q.size(1), op, ": causal attention needs at least as many key frames ",
                      "as query frames (the mask is aligned to the end), got Tk = ", k.size(1), " < Tq = ", q.size(1));
    TORCH_CHECK_VALUE(k.size(1) >= 1 || q.size(1) == 0 || q.numel() == 0, op,
                      ": k and v have no frames to attend over (Tk = 0)");
  }
  TORCH_CHECK_VALUE(q.size(4) >= 1, op, ": the head dim must be at least 1, got q of shape ", q.sizes());
  TORCH_CHECK_VALUE(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  TORCH_CHECK_VALUE(!bias.has_value() || weight.has_value(), op,
                    ": qk_norm_bias was given without qk_norm_weight (the qk LayerNorm needs its weight)");
  if (weight.has_value()) {
    for (const auto* t : {&*weight, bias.has_value() ? &*bias : nullptr}) {
      if (t == nullptr) continue;
      const char* name = t == &*weight ? "qk_norm_weight" : "qk_norm_bias";
      check_float(*t, op, name);
      TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == q.size(4), op, ": ", name, " must have shape (D,) = (",
                        q.size(4), ",), got ", t->sizes());
      TORCH_CHECK_VALUE(t->device() == q.device(), op, ": ", name, " is on ", t->device(), " but q is on ",
                        q.device());
    }
    TORCH_CHECK_VALUE(eps >= 0 && std::isfinite(eps), op, ": qk_norm_eps must be finite and >= 0, got ", eps);
  }
  const bool spatial = axis == Axis::kSpatial;
  return Problem{q.size(0),
                 spatial ? q.size(1) : q.size(2),
                 q.size(3),
                 spatial ? q.size(2) : q.size(1),
                 spatial ? k.size(2) : k.size(1),
                 q.size(4),
                 causal,
                 scale,
                 weight.has_value(),
                 eps};
}

// The backward's extra inputs must be exactly what the forward returned.
inline void check_backward(const char* op, const at::Tensor& q, const at::Tensor& grad_out, const at::Tensor& out,
                           const at::Tensor& lse) {
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), op,
                    ": grad_out and out must have q's shape ", q.sizes(), ", got ", grad_out.sizes(), " and ",
                    out.sizes());
  check_same(q, grad_out, op, "grad_out");
  check_same(q, out, op, "out");
  TORCH_CHECK_VALUE(lse.sizes() == q.sizes().slice(0, 4), op, ": lse must have shape (B, T, S, H) = ",
                    q.sizes().slice(0, 4), ", got ", lse.sizes());
  TORCH_CHECK_TYPE(lse.scalar_type() == lse_dtype(q.scalar_type()), op, ": lse must be ",
                   lse_dtype(q.scalar_type()), ", got ", lse.scalar_type());
  TORCH_CHECK_VALUE(lse.device() == q.device(), op, ": lse is on ", lse.device(), " but q is on ", q.device());
}

inline at::Tensor lse_output(const at::Tensor& q) {
  return at::empty(q.sizes().slice(0, 4), q.options().dtype(lse_dtype(q.scalar_type())));
}

// frame_decode_attention: q (B, S, H, D), caches (B, T_max, S, H, D), num_frames () or (B,) integer.
inline void check_frame_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const at::Tensor& num_frames, double scale, const char* op = "frame_decode_attention") {
  TORCH_CHECK_VALUE(q.dim() == 4, op, ": q must be a 4-D (B, S, H, D) tensor, got shape ", q.sizes());
  check_5d(k_cache, op, "k_cache");
  check_5d(v_cache, op, "v_cache");
  check_float(q, op, "q");
  check_same(q, k_cache, op, "k_cache");
  check_same(q, v_cache, op, "v_cache");
  TORCH_CHECK_VALUE(k_cache.sizes() == v_cache.sizes(), op, ": k_cache and v_cache must have the same shape, got ",
                    k_cache.sizes(), " and ", v_cache.sizes());
  TORCH_CHECK_VALUE(k_cache.size(0) == q.size(0) && k_cache.size(2) == q.size(1) && k_cache.size(3) == q.size(2) &&
                        k_cache.size(4) == q.size(3),
                    op, ": the caches must be (B, T_max, S, H, D) with q's B, S, H, D; q is ", q.sizes(),
                    ", k_cache is ", k_cache.sizes());
  TORCH_CHECK_VALUE(k_cache.size(1) >= 1, op, ": the caches hold no frame (T_max = 0)");
  TORCH_CHECK_VALUE(q.size(3) >= 1, op, ": the head dim must be at least 1");
  TORCH_CHECK_TYPE(num_frames.scalar_type() == at::kLong || num_frames.scalar_type() == at::kInt, op,
                   ": num_frames must be an int32 or int64 tensor, got ", num_frames.scalar_type());
  TORCH_CHECK_VALUE(num_frames.dim() == 0 || (num_frames.dim() == 1 && num_frames.size(0) == q.size(0)), op,
                    ": num_frames must have shape () or (B,) = (", q.size(0), ",), got ", num_frames.sizes());
  TORCH_CHECK_VALUE(num_frames.device() == q.device(), op, ": num_frames is on ", num_frames.device(),
                    " but q is on ", q.device(), " (keep it on the device: it is read there, without a sync)");
  TORCH_CHECK_VALUE(std::isfinite(scale), op, ": scale must be finite, got ", scale);
}

// frame_decode_step: q, k, v (B, S, H, D), the current frame, or (B, n, S, H, D), n consecutive frames; the caches
// and counts as frame_decode_attention. Returns n (1 for the 4-D form).
inline int64_t check_frame_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& k_cache, const at::Tensor& v_cache,
                                       const at::Tensor& num_frames, double scale,
                                       const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                                       double eps) {
  const char* op = "frame_decode_step";
  TORCH_CHECK_VALUE(q.dim() == 4 || q.dim() == 5, op, ": q must be a 4-D (B, S, H, D) tensor (one frame) or a 5-D "
                    "(B, n, S, H, D) one (n consecutive frames), got shape ", q.sizes());
  TORCH_CHECK_VALUE(q.dim() == 4 || q.size(1) >= 1, op, ": q holds no frame (n = 0), shape ", q.sizes());
  check_frame_decode(q.dim() == 5 ? q.select(1, 0) : q, k_cache, v_cache, num_frames, scale, op);
  TORCH_CHECK_VALUE(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op,
                    ": k and v (the current frames') must have q's shape ", q.sizes(), ", got ", k.sizes(), " and ",
                    v.sizes());
  // The qk LayerNorm's weights, and k's and v's dtype and device: the attention ops' checks on a frame-run view.
  const auto run = [&](const at::Tensor& t) { return t.dim() == 5 ? t : t.unsqueeze(1); };
  check_attention(op, Axis::kTemporal, run(q), run(k), run(v), false, scale, weight, bias, eps);
  for (const auto* t : {&k_cache, &v_cache}) {
    TORCH_CHECK_VALUE(at::has_internal_overlap(*t) != at::MemOverlap::Yes, op, ": ",
                      t == &k_cache ? "k_cache" : "v_cache",
                      " is written in place, so no two of its elements may share memory (an expanded view?), got "
                      "strides ", t->strides());
  }
  return q.dim() == 5 ? q.size(1) : 1;
}

using ForwardResult = std::tuple<at::Tensor, at::Tensor>;  // (out, lse)
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;  // dq dk dv dw db
using FusedBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;                    // dqkv dw db
using OptTensor = c10::optional<at::Tensor>;
using NormGrads = std::tuple<at::Tensor, at::Tensor>;  // dw, db (empty without the qk LayerNorm)

// Where a backward writes dq, dk, dv: three tensors of their own, or the three (B, T, S, H, D) views of one
// (B, T, S, 3, H, D) gradient (`fused`) for attention on a fused qkv projection, so autograd gets that one
// tensor and never stacks three.
struct QkvGrads {
  at::Tensor dq, dk, dv, fused;

  static QkvGrads separate(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool zero) {
    return {like(q, zero), like(k, zero), like(v, zero), at::Tensor()};
  }
  static QkvGrads of_fused(const at::Tensor& qkv, bool zero) {
    at::Tensor g = like(qkv, zero);
    return {g.select(3, 0), g.select(3, 1), g.select(3, 2), g};
  }

 private:
  static at::Tensor like(const at::Tensor& t, bool zero) {
    return zero ? at::zeros(t.sizes(), t.options()) : at::empty(t.sizes(), t.options());
  }
};

// A fused projection qkv (B, T, S, 3, H, D) as its q, k, v views.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> split_qkv(const char* op, const at::Tensor& qkv) {
  TORCH_CHECK_VALUE(qkv.dim() == 6 && qkv.size(3) == 3, op,
                    ": qkv must be a 6-D (B, T, S, 3, H, D) tensor (q, k, v along dim 3), got shape ", qkv.sizes());
  return {qkv.select(3, 0), qkv.select(3, 1), qkv.select(3, 2)};
}

// The CPU kernels of spatial_attention_qkv (the output only) and of frame_decode_step's (B, n, S, H, D) form,
// writing into `out` (a view of a larger buffer, say) instead of a new tensor: for wmk::st_transformer_decode's
// split pass, whose two tasks each fill part of one shared output. The ops' checks, plus out's.
void spatial_attention_qkv_into_cpu(const at::Tensor& qkv, double scale, const c10::optional<at::Tensor>& weight,
                                    const c10::optional<at::Tensor>& bias, double eps, at::Tensor& out);
void frame_decode_step_into_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                                at::Tensor& v_cache, const at::Tensor& num_frames, double scale,
                                const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                                double eps, bool store_last, at::Tensor& out);

// out, to be written in place of a new tensor shaped like q: q's shape, dtype and device, its rows of D unit-strided,
// and no two elements sharing memory.
inline void check_into(const char* op, const at::Tensor& q, const at::Tensor& out) {
  TORCH_CHECK_VALUE(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type() && out.device() == q.device(),
                    op, ": out must have q's shape, dtype and device (", q.sizes(), ", ", q.scalar_type(), ", ",
                    q.device(), "), got ", out.sizes(), ", ", out.scalar_type(), ", ", out.device());
  TORCH_CHECK_VALUE(out.stride(-1) == 1 && at::has_internal_overlap(out) != at::MemOverlap::Yes, op,
                    ": out must have unit stride along D and no overlapping elements, got strides ", out.strides());
}

// The ops' entry points for one device, bound to its generic implementations Forward(op, axis, q, k, v, causal,
// scale, w, b, eps) and Backward(op, axis, grad_out, q, k, v, out, lse, causal, scale, w, b, eps, grads) -> (dw,
// db), so the CPU and CUDA files register the same signatures. kZeroGrads: the device's backward accumulates into
// its gradient buffers, which must start at zero.
template <auto Forward, auto Backward, bool kZeroGrads>
struct EntryPoints {
  static ForwardResult spatial(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                               const OptTensor& w, const OptTensor& b, double eps) {
    return Forward("spatial_attention", Axis::kSpatial, q, k, v, false, scale, w, b, eps);
  }
  static ForwardResult temporal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                                double scale, const OptTensor& w, const OptTensor& b, double eps) {
    return Forward("temporal_attention", Axis::kTemporal, q, k, v, causal, scale, w, b, eps);
  }
  static BackwardResult spatial_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                         double scale, const OptTensor& w, const OptTensor& b, double eps) {
    return separate("spatial_attention_backward", Axis::kSpatial, grad_out, q, k, v, out, lse, false, scale, w, b, eps);
  }
  static BackwardResult temporal_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                          bool causal, double scale, const OptTensor& w, const OptTensor& b,
                                          double eps) {
    return separate("temporal_attention_backward", Axis::kTemporal, grad_out, q, k, v, out, lse, causal, scale, w, b,
                    eps);
  }
  static ForwardResult spatial_qkv(const at::Tensor& qkv, double scale, const OptTensor& w, const OptTensor& b,
                                   double eps) {
    const auto [q, k, v] = split_qkv("spatial_attention_qkv", qkv);
    return Forward("spatial_attention_qkv", Axis::kSpatial, q, k, v, false, scale, w, b, eps);
  }
  static ForwardResult temporal_qkv(const at::Tensor& qkv, bool causal, double scale, const OptTensor& w,
                                    const OptTensor& b, double eps) {
    const auto [q, k, v] = split_qkv("temporal_attention_qkv", qkv);
    return Forward("temporal_attention_qkv", Axis::kTemporal, q, k, v, causal, scale, w, b, eps);
  }
  static FusedBackwardResult spatial_qkv_backward(const at::Tensor& grad_out, const at::Tensor& qkv,
                                                  const at::Tensor& out, const at::Tensor& lse, double scale,
                                                  const OptTensor& w, const OptTensor& b, double eps) {
    return fused("spatial_attention_qkv_backward", Axis::kSpatial, grad_out, qkv, out, lse, false, scale, w, b, eps);
  }
  static FusedBackwardResult temporal_qkv_backward(const at::Tensor& grad_out, const at::Tensor& qkv,
                                                   const at::Tensor& out, const at::Tensor& lse, bool causal,
                                                   double scale, const OptTensor& w, const OptTensor& b, double eps) {
    return fused("temporal_attention_qkv_backward", Axis::kTemporal, grad_out, qkv, out, lse, causal, scale, w, b,
                 eps);
  }

 private:
  static BackwardResult separate(const char* op, Axis axis, const at::Tensor& grad_out, const at::Tensor& q,
                                 const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                 bool causal, double scale, const OptTensor& w, const OptTensor& b, double eps) {
    const QkvGrads g = QkvGrads::separate(q, k, v, kZeroGrads);
    auto [dw, db] = Backward(op, axis, grad_out, q, k, v, out, lse, causal, scale, w, b, eps, g);
    return {g.dq, g.dk, g.dv, dw, db};
  }
  static FusedBackwardResult fused(const char* op, Axis axis, const at::Tensor& grad_out, const at::Tensor& qkv,
                                   const at::Tensor& out, const at::Tensor& lse, bool causal, double scale,
                                   const OptTensor& w, const OptTensor& b, double eps) {
    const auto [q, k, v] = split_qkv(op, qkv);
    const QkvGrads g = QkvGrads::of_fused(qkv, kZeroGrads);
    auto [dw, db] = Backward(op, axis, grad_out, q, k, v, out, lse, causal, scale, w, b, eps, g);
    return {g.fused, dw, db};
  }
};

}  // namespace wmk::attention
