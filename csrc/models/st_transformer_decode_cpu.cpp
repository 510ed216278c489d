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
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

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

  const auto param = [&](int64_t layer, Slot slot) -> OptTensor { return params.get(layer * kSlots + slot); };
  const auto required = [&](int64_t layer, Slot slot, const char* name) -> at::Tensor {
    const OptTensor t = param(layer, slot);
    TORCH_CHECK_VALUE(t.has_value(), op, ": layer ", layer, " has no ", name);
    return *t;
  };
  const auto norm = [&](const at::Tensor& t, int64_t layer, Slot w, Slot bias, int64_t eps_slot) {
    return at::layer_norm(t, {t.size(-1)}, param(layer, w), param(layer, bias), eps[layer * kEpsSlots + eps_slot]);
  };
  // Every Linear goes through wmk::linear_prepacked, as the module path's (python/wmkernels/nn/packed_linear.py):
  // without a packed weight the op is at::linear itself.
  const auto linear = [&](const at::Tensor& h, int64_t layer, Slot w, Slot bias, PackedSlot p, const char* name) {
    const OptTensor packed_w = packed.empty() ? OptTensor() : packed.get(layer * kPackedSlots + p);
    return linear_prepacked(h, required(layer, w, name), param(layer, bias), packed_w);
  };
  const auto has_norm = [&](int64_t layer, int64_t eps_slot) { return eps[layer * kEpsSlots + eps_slot] >= 0; };
  // The fused projection as three (B, n, S, H, D) views.
  const auto qkv_of = [&](const at::Tensor& h, int64_t layer, Slot w, Slot bias, PackedSlot p, const char* name) {
    return linear(h, layer, w, bias, p, name).view({b, h.size(1), s, 3, num_heads, d});
  };

  const at::Tensor num_frames = (position + 1).reshape({});
  at::Tensor x = x_in;
  for (int64_t layer = 0; layer < layers; ++layer) {
    const bool last = layer == layers - 1;
    const double spatial_scale = scales[2 * layer], temporal_scale = scales[2 * layer + 1];
    at::Tensor k_layer = k_cache.select(0, layer), v_layer = v_cache.select(0, layer);

    // x += spatial_attn(norm1(x)). Each intermediate is released as soon as it is used, not at the end of the layer,
    // so that the allocator can reuse its memory for the next: kept to the layer's end, the first pass's 2,304-row
    // intermediates stacked up to ~33 MB, and glibc grew the heap for them and gave it back in every sampler run
    // (8,800-11,300 page faults, the first pass 543-545 against 526-529 ms, 2-core Xeon).
    at::Tensor spatial;
    {
      const at::Tensor h = has_norm(layer, kEpsNorm1) ? norm(x, layer, kNorm1W, kNorm1B, kEpsNorm1) : x;
      const at::Tensor spatial_qkv = qkv_of(h, layer, kSpatialQkvW, kSpatialQkvB, kPackedSpatialQkv,
                                            "spatial_attn.qkv.weight");
      spatial = std::get<0>(spatial_attention_qkv(spatial_qkv, spatial_scale, param(layer, kSpatialNormW),
                                                  param(layer, kSpatialNormB), eps[layer * kEpsSlots + kEpsSpatial]));
    }
    // Each residual sum goes in place into the projection's fresh output: the module path's x + out, bitwise (IEEE
    // addition commutes), without a new (rows, C) buffer per sum. A fresh buffer per sum cost ~1% of a pass on the
    // 2-core Xeon: the allocator's mmap/munmap (page faults, system time) and writes into memory not in cache.
    x = linear(spatial.reshape({b, x.size(1), s, c}), layer, kSpatialProjW, kSpatialProjB, kPackedSpatialProj,
               "spatial_attn.proj.weight").add_(x);
    spatial.reset();

    at::Tensor temporal;
    {
      const auto qkv =
          qkv_of(x, layer, kTemporalQkvW, kTemporalQkvB, kPackedTemporalQkv, "temporal_attn.qkv.weight").unbind(3);
      if (last && !need_output) {  // the last layer of a commit: only its K/V are kept
        at::Tensor k = qkv[1];
        if (param(layer, kTemporalNormW).has_value()) k = norm(k, layer, kTemporalNormW, kTemporalNormB, kEpsTemporal);
        const at::Tensor slots = n > 1 ? position + at::arange(n, position.options()) : position;
        k_layer.index_copy_(1, slots, k);
        v_layer.index_copy_(1, slots, qkv[2]);
        return at::empty({0}, x.options());
      }
      // x += temporal_attn(x): the frames' K/V go into their slots (the last frame's only with store_last), each
      // frame attends over the slots up to its own
      temporal = frame_decode_step(qkv[0], qkv[1], qkv[2], k_layer, v_layer, num_frames, temporal_scale,
                                   param(layer, kTemporalNormW), param(layer, kTemporalNormB),
                                   eps[layer * kEpsSlots + kEpsTemporal], store_last);
    }
    if (last && last_only) {  // only the last frame's rows leave the stack
      // Contiguous, as SelfAttention.forward_decode makes it: a strided input would send aten::matmul to bmm or
      // to mm depending on whether the weights require grad, and the two round differently.
      temporal = temporal.narrow(1, n - 1, 1).contiguous();
      x = x.narrow(1, n - 1, 1);
    }
    x = linear(temporal.reshape({b, x.size(1), s, c}), layer, kTemporalProjW, kTemporalProjB, kPackedTemporalProj,
               "temporal_attn.proj.weight").add_(x);
    temporal.reset();

    // x += mlp(norm2(x)), GELU in place on fc1's fresh output (as Mlp.forward does without autograd)
    at::Tensor hidden = linear(has_norm(layer, kEpsNorm2) ? norm(x, layer, kNorm2W, kNorm2B, kEpsNorm2) : x, layer,
                               kFc1W, kFc1B, kPackedFc1, "mlp.fc1.weight");
    at::gelu_(hidden, gelu_approximate);
    x = linear(hidden, layer, kFc2W, kFc2B, kPackedFc2, "mlp.fc2.weight").add_(x);
  }
  return x;
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CPU, m) { m.impl("st_transformer_decode", &st_transformer_decode); }
#ifdef WMK_WITH_CUDA
TORCH_LIBRARY_IMPL(wmk, CUDA, m) { m.impl("st_transformer_decode", &st_transformer_decode); }
#endif

}  // namespace wmk::models
