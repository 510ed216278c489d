// The op registry: every schema of the `wmk` library is declared here, once. Kernels register per
// dispatch key next to their code (csrc/<family>/<op>_cpu.cpp, <op>_cuda.cu); Python adds the fake
// (meta) kernels and autograd formulas in python/wmkernels/ops/.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <string>

#include "common/inference_only.h"
#include "linear/mkl_pack.h"
#include "linear/packed_linear.h"

TORCH_LIBRARY(wmk, m) {
  // Tokens: the base**num_factors factorization of the 1X tokens (2^18 = 512 x 512).
  m.def("factorize_tokens(Tensor tokens, int factored_vocab_size=512, int num_factors=2) -> Tensor");
  m.def("unfactorize_tokens(Tensor factors, int factored_vocab_size=512) -> Tensor");

  // LFQ and FSQ (lookup-free and finite scalar quantization; csrc/vq/lfq_*, csrc/vq/fsq_*).
  m.def("lfq_encode(Tensor x, str bit_order=\"lsb\") -> Tensor");
  m.def("lfq_decode(Tensor indices, int bits, str bit_order=\"lsb\", ScalarType? dtype=None) -> Tensor");
  m.def("lfq_entropy_loss(Tensor x, float inv_temperature=100., float diversity_gamma=1.) -> (Tensor, Tensor)");
  m.def("lfq_entropy_loss_backward(Tensor grad, Tensor x, Tensor avg_prob, float inv_temperature, "
        "float diversity_gamma) -> Tensor");
  m.def("fsq_quantize(Tensor z, int[] levels) -> (Tensor, Tensor)");
  m.def("fsq_quantize_backward(Tensor grad_codes, Tensor z, int[] levels) -> Tensor");
  m.def("fsq_decode(Tensor indices, int[] levels, ScalarType? dtype=None) -> Tensor");

  // VQ (nearest-code vector quantization): fused distance + argmin over a codebook, and the code gather.
  m.def("vq_encode(Tensor x, Tensor codebook, str metric=\"l2\") -> (Tensor indices, Tensor distances)");
  m.def("vq_decode(Tensor indices, Tensor codebook) -> Tensor");

  // Attention (factorized spatiotemporal, on the video layout (B, T, S, H, D); see python/wmkernels/ops/attention.py).
  // The forwards return (out, lse): lse (B, T, S, H) is the log-sum-exp per query (float32; float64 for float64
  // inputs), saved for the backward. Backwards return (dq, dk, dv, d_qk_norm_weight, d_qk_norm_bias); the last two
  // are empty without qk_norm.
  m.def("spatial_attention(Tensor q, Tensor k, Tensor v, float scale, Tensor? qk_norm_weight=None, "
        "Tensor? qk_norm_bias=None, float qk_norm_eps=1e-05) -> (Tensor, Tensor)");
  m.def("spatial_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "float scale, Tensor? qk_norm_weight, Tensor? qk_norm_bias, float qk_norm_eps) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("temporal_attention(Tensor q, Tensor k, Tensor v, bool causal, float scale, Tensor? qk_norm_weight=None, "
        "Tensor? qk_norm_bias=None, float qk_norm_eps=1e-05) -> (Tensor, Tensor)");
  m.def("temporal_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "bool causal, float scale, Tensor? qk_norm_weight, Tensor? qk_norm_bias, float qk_norm_eps) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same on a fused projection qkv (B, T, S, 3, H, D) (q, k, v along dim 3): the backward returns one
  // (B, T, S, 3, H, D) gradient, (dqkv, d_qk_norm_weight, d_qk_norm_bias), so autograd never stacks three.
  m.def("spatial_attention_qkv(Tensor qkv, float scale, Tensor? qk_norm_weight=None, Tensor? qk_norm_bias=None, "
        "float qk_norm_eps=1e-05) -> (Tensor, Tensor)");
  m.def("spatial_attention_qkv_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, float scale, "
        "Tensor? qk_norm_weight, Tensor? qk_norm_bias, float qk_norm_eps) -> (Tensor, Tensor, Tensor)");
  m.def("temporal_attention_qkv(Tensor qkv, bool causal, float scale, Tensor? qk_norm_weight=None, "
        "Tensor? qk_norm_bias=None, float qk_norm_eps=1e-05) -> (Tensor, Tensor)");
  m.def("temporal_attention_qkv_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, bool causal, "
        "float scale, Tensor? qk_norm_weight, Tensor? qk_norm_bias, float qk_norm_eps) -> (Tensor, Tensor, Tensor)");
  m.def("frame_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor num_frames, float scale) -> Tensor");
  // One cached decoding step of temporal attention: the current frame's keys (through the qk LayerNorm) and
  // values are written into slot num_frames - 1 of the caches, then its queries (through the same LayerNorm)
  // attend over slots 0 .. num_frames - 1, as frame_decode_attention. store_last=False allows (does not require) a
  // kernel to leave the last frame's slot unwritten: its contents are then unspecified.
  m.def("frame_decode_step(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor num_frames, "
        "float scale, Tensor? qk_norm_weight=None, Tensor? qk_norm_bias=None, float qk_norm_eps=1e-05, "
        "bool store_last=True) -> Tensor");

  // Linear (csrc/linear/): nn.Linear's x @ W^T + bias with W packed once (pack_linear_weight, or
  // pack_linear_weight_mkl below); linear_prepacked is at::linear itself off the CPU, for non-float32 tensors, on CPUs
  // without AVX2+FMA (for pack_linear_weight's panels), or without `packed`.
  m.def("pack_linear_weight(Tensor weight) -> Tensor");
  m.def("linear_prepacked(Tensor x, Tensor weight, Tensor? bias, Tensor? packed) -> Tensor");
  // The weight in MKL's packed-sgemm layout (CPU, torch built with MKL; csrc/linear/mkl_pack.h), a 1-D uint8 tensor
  // that linear_prepacked also takes as `packed`: MKL's packed product for 64 .. 1,024 rows, at::linear otherwise.
  m.def("pack_linear_weight_mkl(Tensor weight) -> Tensor");

  // Models (csrc/models/): the cached sampler's pass through a whole GENIE STTransformer in one call, frames
  // x (B, n, S, C) at slots position .. position + n - 1 of the per-layer caches (num_layers, B, T_max, S, H, D);
  // params: 20 per layer, None where a module has none (order in csrc/models/st_transformer_decode_cpu.cpp).
  // packed: empty, or 6 per layer, pack_linear_weight of each Linear (or None), for wmk::linear_prepacked.
  m.def("st_transformer_decode(Tensor x, Tensor?[] params, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor position, "
        "int num_heads, float[] scales, float[] eps, Tensor?[] packed, str gelu_approximate=\"none\", "
        "bool need_output=True, bool last_only=False, bool store_last=True) -> Tensor");
}

// The inference-only ops: a backward pass through them raises, naming the op (common/inference_only.h), instead of
// autograd's not-implemented fallback warning and leaving the inputs without a gradient.
TORCH_LIBRARY_IMPL(wmk, Autograd, m) {
  for (const char* name : {"frame_decode_attention", "frame_decode_step", "linear_prepacked", "st_transformer_decode"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&wmk::inference_only_autograd>());
}

namespace {

namespace py = pybind11;

py::list cpu_features() {
  py::list features;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) features.append("sse4.2");
  if (__builtin_cpu_supports("avx")) features.append("avx");
  if (__builtin_cpu_supports("avx2")) features.append("avx2");
  if (__builtin_cpu_supports("fma")) features.append("fma");
  if (__builtin_cpu_supports("avx512f")) features.append("avx512f");
  if (__builtin_cpu_supports("avx512bw")) features.append("avx512bw");
  if (__builtin_cpu_supports("avx512vl")) features.append("avx512vl");
#elif defined(__aarch64__)
  features.append("neon");
#endif
  return features;
}

// "intel", "amd" or "other" (x86 CPUs by their CPUID vendor; "other" elsewhere).
std::string cpu_vendor() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_is("intel")) return "intel";
  if (__builtin_cpu_is("amd")) return "amd";
#endif
  return "other";
}

py::dict build_info() {
  py::dict info;
  info["torch_version"] = WMK_TORCH_VERSION;
#ifdef WMK_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_version"] = WMK_CUDA_COMPILER_VERSION;
  info["cuda_archs"] = WMK_CUDA_ARCHS;
#else
  info["with_cuda"] = false;
  info["cuda_version"] = py::none();
  info["cuda_archs"] = py::none();
#endif
  info["cxx_compiler"] = std::string(__VERSION__);
  info["cxx_standard"] = static_cast<long>(__cplusplus);
  info["native_build"] = WMK_NATIVE == 1;
  info["cpu_features"] = cpu_features();
  info["cpu_vendor"] = cpu_vendor();
  info["openmp_max_threads"] = omp_get_max_threads();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "wmkernels compiled kernels; the ops live in torch.ops.wmk";
  m.def("build_info", &build_info, "How this extension was built: torch, CUDA, CPU features, OpenMP");
  m.def("packed_linear_available", &wmk::linear::cpu::avx2_usable,
        "Whether wmk::linear_prepacked has a packed kernel for this CPU (AVX2+FMA)");
  m.def("mkl_packed_linear_exported", &wmk::linear::mkl::exported,
        "Whether this torch exports MKL's packed sgemm (checks symbols only; runs nothing)");
  m.def("mkl_packed_linear_available", &wmk::linear::mkl::available,
        "Whether this torch has MKL's packed sgemm and it passed the extension's check (pack_linear_weight_mkl)");
  m.def("mkl_packed_bytes", &wmk::linear::mkl::packed_bytes,
        "pack_linear_weight_mkl's byte count for an (out_features, in_features) weight (0 without MKL)");
}
