// wmk::st_transformer_decode: the cached sampler's pass through a whole GENIE STTransformer in one call.
//
// It runs, layer by layer, exactly the ops that python/wmkernels/nn/st_block.py's STTransformer.forward_decode
// issues (the same ATen ops in the same order, and wmk::spatial_attention_qkv / wmk::frame_decode_step through the
// dispatcher; only the residual sums go in place, see below), so its output is bitwise the module path's. What it
// removes is the Python between those ops: for GENIE-35M's 32 layers that is ~600 ops per pass, and for a one-frame
// pass on a 2-core CPU the interpreter and the Python wrappers cost ~15 ms of ~170 ms (measured against a
// TorchScript trace of the same pass).
//
// Only glue lives here, no arithmetic, so the same function is the kernel on every device the ops it calls support
// (registered for CPU, and for CUDA in a CUDA build). It has no autograd: the decode ops are inference-only.
// On CPU, a batch-1 pass on 2 threads runs as two tasks, one per thread, each on half of the rows (split_pass
// below): the same ops on the same rows, so bitwise the same output.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <tuple>

#include "attention/attention.h"
#include "linear/mkl_pack.h"

namespace wmk::models {
namespace {

using OptTensor = std::optional<at::Tensor>;

// Per layer, in this order (None where a module has no such tensor: Identity norms, biases switched off, no
// qk_norm). python/wmkernels/nn/st_block.py (STTransformer._decode_op_args) builds the same list.
enum Slot : int64_t {
  kNorm1W, kNorm1B,
  kSpatialQkvW, kSpatialQkvB, kSpatialNormW, kSpatialNormB, kSpatialProjW, kSpatialProjB,
  kTemporalQkvW, kTemporalQkvB, kTemporalNormW, kTemporalNormB, kTemporalProjW, kTemporalProjB,
  kNorm2W, kNorm2B,
  kFc1W, kFc1B, kFc2W, kFc2B,
  kSlots
};
// Per layer: norm1, spatial qk_norm, temporal qk_norm, norm2. A negative eps for norm1 / norm2 means the block has
// no LayerNorm there (nn.Identity, GENIE's choice with qk_norm).
// The Linears of a layer, in the order of the `packed` list (pack_linear_weight of each, or None).
enum PackedSlot : int64_t {
  kPackedSpatialQkv, kPackedSpatialProj, kPackedTemporalQkv, kPackedTemporalProj, kPackedFc1, kPackedFc2,
  kPackedSlots
};
enum EpsSlot : int64_t { kEpsNorm1, kEpsSpatial, kEpsTemporal, kEpsNorm2, kEpsSlots };

std::tuple<at::Tensor, at::Tensor> spatial_attention_qkv(const at::Tensor& qkv, double scale, const OptTensor& w,
                                                         const OptTensor& b, double eps) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("wmk::spatial_attention_qkv", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double, const OptTensor&,
                                                                       const OptTensor&, double)>();
  return op.call(qkv, scale, w, b, eps);
}

at::Tensor frame_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                             at::Tensor& v_cache, const at::Tensor& num_frames, double scale, const OptTensor& w,
                             const OptTensor& b, double eps, bool store_last) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("wmk::frame_decode_step", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&,
                                               at::Tensor&, const at::Tensor&, double, const OptTensor&,
                                               const OptTensor&, double, bool)>();
  return op.call(q, k, v, k_cache, v_cache, num_frames, scale, w, b, eps, store_last);
}

at::Tensor linear_prepacked(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                            const OptTensor& packed) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("wmk::linear_prepacked", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                               const OptTensor&)>();
  return op.call(x, weight, bias, packed);
}

// Two tasks that meet at barriers. Each waits spinning: the pass's tasks run on the 2 cores of torch's own threads,
// a few microseconds apart. A task that fails marks the pair failed, so the other leaves its barrier instead of
// waiting forever (it throws Abandoned, which the caller drops in favour of the first task's error).
class PairBarrier {
 public:
  struct Abandoned {};
  void wait() {
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    while (generation_.load(std::memory_order_acquire) == gen) {
      if (failed_.load(std::memory_order_relaxed)) throw Abandoned{};
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
  }
  void fail() { failed_.store(true, std::memory_order_relaxed); }

 private:
  std::atomic<int> arrived_{0}, generation_{0};
  std::atomic<bool> failed_{false};
};

// Whether the pass is split into two tasks (below, in st_transformer_decode): $WMK_DECODE_SPLIT = 0 never, 1
// wherever it applies, unset (or anything else) where the Linears run MKL's packed product on exactly 2 threads,
// the case it was measured in.
enum class SplitMode { kNever, kAlways, kAuto };
SplitMode split_mode() {
  const char* env = std::getenv("WMK_DECODE_SPLIT");
  if (env != nullptr && std::strcmp(env, "0") == 0) return SplitMode::kNever;
  if (env != nullptr && std::strcmp(env, "1") == 0) return SplitMode::kAlways;
  return SplitMode::kAuto;
}

// The layers' parameters and the helpers both paths below share.
struct Stack {
  const c10::List<OptTensor>& params;
  const c10::List<OptTensor>& packed;
  at::ArrayRef<double> scales, eps;
  int64_t num_heads, d;

  OptTensor param(int64_t layer, Slot slot) const { return params.get(layer * kSlots + slot); }
  at::Tensor required(int64_t layer, Slot slot, const char* name) const {
    const OptTensor t = param(layer, slot);
    TORCH_CHECK_VALUE(t.has_value(), "st_transformer_decode: layer ", layer, " has no ", name);
    return *t;
  }
  bool has_norm(int64_t layer, int64_t eps_slot) const { return eps[layer * kEpsSlots + eps_slot] >= 0; }
  at::Tensor norm(const at::Tensor& t, int64_t layer, Slot w, Slot bias, int64_t eps_slot) const {
    return at::layer_norm(t, {t.size(-1)}, param(layer, w), param(layer, bias), eps[layer * kEpsSlots + eps_slot]);
  }
  // norm1 (or norm2) of x, or x where the block has none
  at::Tensor pre_norm(const at::Tensor& x, int64_t layer, bool second) const {
    const int64_t slot = second ? kEpsNorm2 : kEpsNorm1;
    if (!has_norm(layer, slot)) return x;
    return second ? norm(x, layer, kNorm2W, kNorm2B, slot) : norm(x, layer, kNorm1W, kNorm1B, slot);
  }
  OptTensor packed_weight(int64_t layer, PackedSlot p) const {
    return packed.empty() ? OptTensor() : packed.get(layer * kPackedSlots + p);
  }
  // Every Linear goes through wmk::linear_prepacked, as the module path's (python/wmkernels/nn/packed_linear.py):
  // without a packed weight the op is at::linear itself.
  at::Tensor linear(const at::Tensor& h, int64_t layer, Slot w, Slot bias, PackedSlot p, const char* name) const {
    return linear_prepacked(h, required(layer, w, name), param(layer, bias), packed_weight(layer, p));
  }
  // The same product written into `out` (rows, out_features), rows of a buffer the two tasks share: MKL's packed
  // product writes there directly; any other kernel's result is copied in.
  void linear_into(const at::Tensor& h, int64_t layer, Slot w, Slot bias, PackedSlot p, const char* name,
                   at::Tensor out) const {
    const at::Tensor weight = required(layer, w, name);
    const OptTensor packed_w = packed_weight(layer, p);
    if (packed_w.has_value() && linear::mkl::is_mkl_pack(*packed_w) && weight.dim() == 2 &&
        weight.device() == h.device() &&
        linear::mkl::linear_into("st_transformer_decode", h, weight.size(0), weight.size(1), param(layer, bias),
                                 *packed_w, out)) {
      return;
    }
    out.copy_(linear_prepacked(h, weight, param(layer, bias), packed_w).reshape(out.sizes()));
  }
  // A layer's attention arguments after q/k/v: scale, the qk LayerNorm's weight and bias, its eps.
  struct Attn {
    double scale;
    OptTensor w, b;
    double eps;
  };
  Attn spatial_args(int64_t layer) const {
    return {scales[2 * layer], param(layer, kSpatialNormW), param(layer, kSpatialNormB),
            eps[layer * kEpsSlots + kEpsSpatial]};
  }
  Attn temporal_args(int64_t layer) const {
    return {scales[2 * layer + 1], param(layer, kTemporalNormW), param(layer, kTemporalNormB),
            eps[layer * kEpsSlots + kEpsTemporal]};
  }
  // Spatial attention over a fused projection qkv (B, n, S, 3, H, D), or over some of its heads (a view)
  at::Tensor spatial(const at::Tensor& qkv, int64_t layer) const {
    const Attn a = spatial_args(layer);
    return std::get<0>(spatial_attention_qkv(qkv, a.scale, a.w, a.b, a.eps));
  }
  void spatial_into(const at::Tensor& qkv, int64_t layer, at::Tensor& out) const {
    const Attn a = spatial_args(layer);
    attention::spatial_attention_qkv_into_cpu(qkv, a.scale, a.w, a.b, a.eps, out);
  }
  at::Tensor decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor k_layer,
                    at::Tensor v_layer, const at::Tensor& num_frames, int64_t layer, bool store_last) const {
    const Attn a = temporal_args(layer);
    return frame_decode_step(q, k, v, k_layer, v_layer, num_frames, a.scale, a.w, a.b, a.eps, store_last);
  }
  void decode_into(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor k_layer,
                   at::Tensor v_layer, const at::Tensor& num_frames, int64_t layer, bool store_last,
                   at::Tensor& out) const {
    const Attn a = temporal_args(layer);
    attention::frame_decode_step_into_cpu(q, k, v, k_layer, v_layer, num_frames, a.scale, a.w, a.b, a.eps,
                                          store_last, out);
  }
  // x + mlp(norm2(x)), GELU in place on fc1's fresh output (as Mlp.forward does without autograd)
  at::Tensor mlp(const at::Tensor& x, int64_t layer, c10::string_view gelu_approximate) const {
    at::Tensor hidden = linear(pre_norm(x, layer, true), layer, kFc1W, kFc1B, kPackedFc1, "mlp.fc1.weight");
    at::gelu_(hidden, gelu_approximate);
    return linear(hidden, layer, kFc2W, kFc2B, kPackedFc2, "mlp.fc2.weight").add_(x);
  }
};

// The pass as two tasks on torch's two threads, each running the ops single-threaded on its half of the rows (rows
// frame-major: one frame's positions in two halves, one frame each of two, or 4.5 frames each of 9). Against each op
// split over both threads it saves the threads' start and join at every op, keeps each task's rows in its own
// core's cache from one op to the next, and lets MKL multiply each task's rows whole: at 2 threads MKL splits every
// product, and a 512-row one ran ~7% slower than two 256-row ones side by side (2-core Xeon). Bitwise the same as
// the path below: every op computes each row (each position, each head) exactly as there, and the products give
// the same rows whatever the row count (MKL's packed product for 64 to 1,024 rows, at::linear above).
// The tasks meet only where one needs the other's rows, at a pair of barriers:
// - the spatial attention, where the halves split a frame: each task writes its rows of the fused projection into
//   a shared buffer, then attends over half of the (frame, head) groups. Where the halves end at a frame's end, each
//   attends over its own frames, with no barrier.
// - the temporal attention, where the pass has several frames (frame i attends to frames 0 .. i at each position):
//   all frames' projections go into a shared buffer, and each task attends at half of the positions, reading each
//   cached row once, as the path below does. With one frame each task attends at its own positions.
// nullopt where it does not apply: not a CPU float32 pass of batch 1 with an output, torch not on 2 threads (see
// split_mode for $WMK_DECODE_SPLIT), already inside a parallel region, or one thread running both tasks.
std::optional<at::Tensor> split_pass(const Stack& st, const at::Tensor& x_in, at::Tensor& k_cache,
                                     at::Tensor& v_cache, const at::Tensor& num_frames,
                                     c10::string_view gelu_approximate, bool need_output, bool last_only,
                                     bool store_last) {
  const SplitMode mode = split_mode();
  if (mode == SplitMode::kNever) return std::nullopt;
  const int64_t b = x_in.size(0), n = x_in.size(1), s = x_in.size(2), c = x_in.size(3);
  const int64_t heads = st.num_heads, d = st.d, layers = k_cache.size(0);
  const int64_t rows = n * s, mid = rows / 2;
  const bool frame_split = mid % s != 0;  // the halves split a frame: its spatial attention is shared
  if (!x_in.device().is_cpu() || x_in.scalar_type() != at::kFloat || b != 1 || !need_output || s < 2 ||
      (frame_split && heads < 2) || at::in_parallel_region()) {
    return std::nullopt;
  }
  if (mode == SplitMode::kAuto) {
    // As measured: MKL's packed product, exactly 2 threads, the pass's rows and each task's in its packed row
    // range. (Above it, as in the 9-frame first pass of a sampler run, both paths take at::linear, and the split
    // pass ran 0.98x: each task's product packs the whole weight for itself.)
    const OptTensor fc1 = st.packed_weight(0, kPackedFc1);
    if (at::get_num_threads() != 2 || !fc1.has_value() || !linear::mkl::is_mkl_pack(*fc1) ||
        mid < linear::mkl::kMklMinRows || rows > linear::mkl::kMklMaxRows) {
      return std::nullopt;
    }
  } else if (at::get_num_threads() < 2) {
    return std::nullopt;
  }

  const at::Tensor x_rows = x_in.contiguous();  // read as rows (frame-major)
  const auto opts = x_in.options();
  const int64_t mid_frame = mid / s;  // the frame the halves meet in (or start at)
  // The shared buffers: the spatial projection and attention where a frame is split; the temporal projection and
  // attention where there are several frames; the output where all rows leave.
  const at::Tensor spatial_qkv = frame_split ? at::empty({1, n, s, 3, heads, d}, opts) : at::Tensor();
  const at::Tensor spatial_out = frame_split ? at::empty({1, n, s, heads, d}, opts) : at::Tensor();
  const at::Tensor temporal_qkv = n > 1 ? at::empty({1, n, s, 3, heads, d}, opts) : at::Tensor();
  const at::Tensor temporal_out = n > 1 ? at::empty({1, n, s, heads, d}, opts) : at::Tensor();
  const bool all_rows = n == 1 || !last_only;
  at::Tensor result = all_rows ? at::empty({1, n, s, c}, opts) : at::Tensor();
  const auto rows_of = [&](const at::Tensor& t, int64_t r0, int64_t len) {  // rows [r0, r0 + len) as (len, width)
    return t.view({rows, -1}).narrow(0, r0, len);
  };
  PairBarrier barrier;
  std::exception_ptr error;
  std::atomic_flag error_set = ATOMIC_FLAG_INIT;
  std::atomic<bool> one_thread{false};
  const at::ThreadLocalState state;

  const auto task = [&](int64_t t) {
    const int64_t r0 = t == 0 ? 0 : mid, len = t == 0 ? mid : rows - mid;
    const int64_t p0 = t == 0 ? 0 : s / 2, pn = t == 0 ? s / 2 : s - s / 2;  // its positions, with several frames
    const auto view_rows = [&](const at::Tensor& h, int64_t width) { return h.view({1, 1, len, width}); };
    at::Tensor x = view_rows(rows_of(x_rows, r0, len), c);
    for (int64_t layer = 0; layer < layers; ++layer) {
      const bool last = layer == layers - 1;
      // x += spatial_attn(norm1(x))
      at::Tensor spatial;
      if (frame_split) {
        st.linear_into(st.pre_norm(x, layer, false), layer, kSpatialQkvW, kSpatialQkvB, kPackedSpatialQkv,
                       "spatial_attn.qkv.weight", rows_of(spatial_qkv, r0, len));
        barrier.wait();
        // Its whole frames, and half the heads of the frame the halves meet in.
        const int64_t f0 = t == 0 ? 0 : mid_frame + 1, f1 = t == 0 ? mid_frame : n;
        if (f1 > f0) {
          at::Tensor out = spatial_out.narrow(1, f0, f1 - f0);
          st.spatial_into(spatial_qkv.narrow(1, f0, f1 - f0), layer, out);
        }
        const int64_t h0 = t == 0 ? 0 : heads / 2, hn = t == 0 ? heads / 2 : heads - heads / 2;
        at::Tensor out = spatial_out.narrow(1, mid_frame, 1).narrow(3, h0, hn);
        st.spatial_into(spatial_qkv.narrow(1, mid_frame, 1).narrow(4, h0, hn), layer, out);
        barrier.wait();
        spatial = view_rows(rows_of(spatial_out, r0, len), c);
      } else {
        const at::Tensor qkv = st.linear(st.pre_norm(x, layer, false), layer, kSpatialQkvW, kSpatialQkvB,
                                         kPackedSpatialQkv, "spatial_attn.qkv.weight");
        spatial = st.spatial(qkv.view({1, len / s, s, 3, heads, d}), layer).view({1, 1, len, c});
      }
      x = st.linear(spatial, layer, kSpatialProjW, kSpatialProjB, kPackedSpatialProj, "spatial_attn.proj.weight")
              .add_(x);
      spatial.reset();

      // x += temporal_attn(x)
      at::Tensor temporal;
      if (n > 1) {
        st.linear_into(x, layer, kTemporalQkvW, kTemporalQkvB, kPackedTemporalQkv, "temporal_attn.qkv.weight",
                       rows_of(temporal_qkv, r0, len));
        barrier.wait();
        const auto qkv = temporal_qkv.narrow(2, p0, pn).unbind(3);
        at::Tensor out = temporal_out.narrow(2, p0, pn);
        st.decode_into(qkv[0], qkv[1], qkv[2], k_cache.select(0, layer).narrow(2, p0, pn),
                       v_cache.select(0, layer).narrow(2, p0, pn), num_frames, layer, store_last, out);
        barrier.wait();
        if (last && !all_rows) {  // last_only: the last frame's rows (the second task's last s) go on
          if (t == 0) return;
          x = x.narrow(2, len - s, s);
          temporal = temporal_out.narrow(1, n - 1, 1).view({1, 1, s, c});
        } else {
          temporal = view_rows(rows_of(temporal_out, r0, len), c);
        }
      } else {
        const auto qkv = st.linear(x, layer, kTemporalQkvW, kTemporalQkvB, kPackedTemporalQkv,
                                   "temporal_attn.qkv.weight")
                             .view({1, 1, len, 3, heads, d})
                             .unbind(3);
        temporal = st.decode(qkv[0], qkv[1], qkv[2], k_cache.select(0, layer).narrow(2, r0, len),
                             v_cache.select(0, layer).narrow(2, r0, len), num_frames, layer, store_last)
                       .view({1, 1, len, c});
      }
      x = st.linear(temporal, layer, kTemporalProjW, kTemporalProjB, kPackedTemporalProj, "temporal_attn.proj.weight")
              .add_(x);
      temporal.reset();
      x = st.mlp(x, layer, gelu_approximate);
    }
    if (all_rows) {
      rows_of(result, r0, len).copy_(x.view({len, c}));
    } else {
      result = x;
    }
  };

  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    if (end - begin != 1) {  // one thread got both tasks: leave the pass to the path below
      one_thread.store(true);
      return;
    }
    try {
      at::ThreadLocalStateGuard guard(state);
      task(begin);
    } catch (const PairBarrier::Abandoned&) {
    } catch (...) {
      barrier.fail();
      if (!error_set.test_and_set()) error = std::current_exception();
    }
  });
  if (error) std::rethrow_exception(error);
  if (one_thread.load()) return std::nullopt;
  return result;
}

at::Tensor st_transformer_decode(const at::Tensor& x_in, const c10::List<OptTensor>& params, at::Tensor& k_cache,
                                 at::Tensor& v_cache, const at::Tensor& position, int64_t num_heads,
                                 at::ArrayRef<double> scales, at::ArrayRef<double> eps,
                                 const c10::List<OptTensor>& packed, c10::string_view gelu_approximate,
                                 bool need_output, bool last_only, bool store_last) {
  const char* op = "st_transformer_decode";
  // Nothing here is differentiable: the ops below record no graph, as the module path runs them under no_grad /
  // inference_mode. The op's Autograd kernel (common/inference_only.h) runs it with grad mode off, and inference
  // mode turns it off too. (Grad mode off, not AutoDispatchBelowADInplaceOrView, for the ops called here: under the
  // latter aten::matmul stops folding a (B, n, S, C) input into one mm and takes bmm, which rounds differently from
  // the module path.)
  TORCH_CHECK_VALUE(x_in.dim() == 4, op, ": x must be (B, n, S, C), got shape ", x_in.sizes());
  const int64_t b = x_in.size(0), n = x_in.size(1), s = x_in.size(2), c = x_in.size(3);
  TORCH_CHECK_VALUE(n >= 1, op, ": x holds no frame, shape ", x_in.sizes());
  TORCH_CHECK_VALUE(num_heads >= 1 && c % num_heads == 0, op, ": num_heads must divide C = ", c, ", got ",
                    num_heads);
  const int64_t d = c / num_heads;
  TORCH_CHECK_VALUE(k_cache.dim() == 6 && v_cache.dim() == 6, op,
                    ": k_cache and v_cache must be (num_layers, B, T_max, S, H, D), got shapes ", k_cache.sizes(),
                    " and ", v_cache.sizes());
  const int64_t layers = k_cache.size(0);
  TORCH_CHECK_VALUE(layers >= 1, op, ": the caches hold no layer, shape ", k_cache.sizes());
  TORCH_CHECK_VALUE(static_cast<int64_t>(params.size()) == layers * kSlots, op, ": params must hold ", kSlots,
                    " entries per layer (", layers * kSlots, " for the caches' ", layers, " layers), got ",
                    params.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(scales.size()) == 2 * layers, op, ": scales must hold 2 per layer (",
                    2 * layers, "), got ", scales.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(eps.size()) == kEpsSlots * layers, op, ": eps must hold ", kEpsSlots,
                    " per layer (", kEpsSlots * layers, "), got ", eps.size());
  TORCH_CHECK_VALUE(packed.empty() || static_cast<int64_t>(packed.size()) == layers * kPackedSlots, op,
                    ": packed must be empty or hold ", kPackedSlots, " entries per layer (", layers * kPackedSlots,
                    "), got ", packed.size());
  TORCH_CHECK_VALUE(need_output || store_last, op, ": store_last=False needs need_output=True (a pass without output "
                    "only stores its frames' K/V)");
  TORCH_CHECK_VALUE(position.numel() == 1 && position.scalar_type() == at::kLong, op,
                    ": position must be an int64 tensor of one element, got ", position.scalar_type(), " of shape ",
                    position.sizes());

  const Stack st{params, packed, scales, eps, num_heads, d};
  // The fused projection as three (B, n, S, H, D) views.
  const auto qkv_of = [&](const at::Tensor& h, int64_t layer, Slot w, Slot bias, PackedSlot p, const char* name) {
    return st.linear(h, layer, w, bias, p, name).view({b, h.size(1), s, 3, num_heads, d});
  };

  const at::Tensor num_frames = (position + 1).reshape({});
  if (std::optional<at::Tensor> out =
          split_pass(st, x_in, k_cache, v_cache, num_frames, gelu_approximate, need_output, last_only, store_last)) {
    return *out;
  }
  at::Tensor x = x_in;
  for (int64_t layer = 0; layer < layers; ++layer) {
    const bool last = layer == layers - 1;
    at::Tensor k_layer = k_cache.select(0, layer), v_layer = v_cache.select(0, layer);

    // x += spatial_attn(norm1(x)). Each intermediate is released as soon as it is used, not at the end of the layer,
    // so that the allocator can reuse its memory for the next: kept to the layer's end, the first pass's 2,304-row
    // intermediates stacked up to ~33 MB, and glibc grew the heap for them and gave it back in every sampler run
    // (8,800-11,300 page faults, the first pass 543-545 against 526-529 ms, 2-core Xeon).
    at::Tensor spatial = st.spatial(qkv_of(st.pre_norm(x, layer, false), layer, kSpatialQkvW, kSpatialQkvB,
                                           kPackedSpatialQkv, "spatial_attn.qkv.weight"),
                                    layer);
    // Each residual sum goes in place into the projection's fresh output: the module path's x + out, bitwise (IEEE
    // addition commutes), without a new (rows, C) buffer per sum. A fresh buffer per sum cost ~1% of a pass on the
    // 2-core Xeon: the allocator's mmap/munmap (page faults, system time) and writes into memory not in cache.
    x = st.linear(spatial.reshape({b, x.size(1), s, c}), layer, kSpatialProjW, kSpatialProjB, kPackedSpatialProj,
                  "spatial_attn.proj.weight")
            .add_(x);
    spatial.reset();

    at::Tensor temporal;
    {
      const auto qkv =
          qkv_of(x, layer, kTemporalQkvW, kTemporalQkvB, kPackedTemporalQkv, "temporal_attn.qkv.weight").unbind(3);
      if (last && !need_output) {  // the last layer of a commit: only its K/V are kept
        at::Tensor k = qkv[1];
        if (st.param(layer, kTemporalNormW).has_value())
          k = st.norm(k, layer, kTemporalNormW, kTemporalNormB, kEpsTemporal);
        const at::Tensor slots = n > 1 ? position + at::arange(n, position.options()) : position;
        k_layer.index_copy_(1, slots, k);
        v_layer.index_copy_(1, slots, qkv[2]);
        return at::empty({0}, x.options());
      }
      // x += temporal_attn(x): the frames' K/V go into their slots (the last frame's only with store_last), each
      // frame attends over the slots up to its own
      temporal = st.decode(qkv[0], qkv[1], qkv[2], k_layer, v_layer, num_frames, layer, store_last);
    }
    if (last && last_only) {  // only the last frame's rows leave the stack
      // Contiguous, as SelfAttention.forward_decode makes it: a strided input would send aten::matmul to bmm or
      // to mm depending on whether the weights require grad, and the two round differently.
      temporal = temporal.narrow(1, n - 1, 1).contiguous();
      x = x.narrow(1, n - 1, 1);
    }
    x = st.linear(temporal.reshape({b, x.size(1), s, c}), layer, kTemporalProjW, kTemporalProjB, kPackedTemporalProj,
                  "temporal_attn.proj.weight")
            .add_(x);
    temporal.reset();
    x = st.mlp(x, layer, gelu_approximate);
  }
  return x;
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CPU, m) { m.impl("st_transformer_decode", &st_transformer_decode); }
#ifdef WMK_WITH_CUDA
TORCH_LIBRARY_IMPL(wmk, CUDA, m) { m.impl("st_transformer_decode", &st_transformer_decode); }
#endif

}  // namespace wmk::models
