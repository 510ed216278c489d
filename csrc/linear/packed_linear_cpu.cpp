// wmk::pack_linear_weight and wmk::linear_prepacked: nn.Linear's x @ W^T + bias with W packed once into the panels
// of packed_linear.h. The GENIE layers call it at inference (python/wmkernels/nn/packed_linear.py, and
// wmk::st_transformer_decode for the whole stack), one rule for all.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "common/cpu_isa.h"
#include "linear/mkl_pack.h"
#include "linear/packed_linear.h"

namespace wmk::linear {
namespace {

using OptTensor = std::optional<at::Tensor>;

int64_t num_panels(int64_t n) { return (n + cpu::kPanelWidth - 1) / cpu::kPanelWidth; }

using Gemm = void (*)(const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, const float*,
                      float*, int64_t);

// The widest kernel this CPU runs (null: none, linear_prepacked is at::linear), or the one $WMK_LINEAR_ISA (avx2,
// avx512) names (common/cpu_isa.h). Both give bitwise the same results.
Gemm choose_gemm() {
  static const bool has_avx512 = cpu::avx512_usable(), has_avx2 = cpu::avx2_usable();
  switch (choose_cpu_isa("WMK_LINEAR_ISA", nullptr, has_avx2, has_avx512, "packed kernel")) {
    case CpuIsa::kAvx512: return &cpu::packed_gemm_avx512;
    case CpuIsa::kAvx2: return &cpu::packed_gemm_avx2;
    case CpuIsa::kFallback: break;
  }
  return nullptr;
}

at::Tensor pack_linear_weight(const at::Tensor& weight) {
  TORCH_CHECK_VALUE(weight.dim() == 2, "pack_linear_weight: weight must be (out_features, in_features), got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == at::kFloat, "pack_linear_weight: weight must be float32, got ",
                    weight.scalar_type());
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t panels = num_panels(n);
  // (P, 16, K) holds the padded weight row by row; its transpose to (P, K, 16) made contiguous is the packing.
  at::Tensor padded = at::zeros({panels * cpu::kPanelWidth, k}, weight.options());
  padded.narrow(0, 0, n).copy_(weight);
  return padded.view({panels, cpu::kPanelWidth, k}).transpose(1, 2).contiguous();
}

// The packed kernel linear_prepacked runs, or null where it runs at::linear: the one rule every caller shares.
Gemm packed_kernel(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias, const OptTensor& packed) {
  if (!packed.has_value() || !x.device().is_cpu() || x.scalar_type() != at::kFloat ||
      weight.scalar_type() != at::kFloat || (bias.has_value() && bias->scalar_type() != at::kFloat)) {
    return nullptr;
  }
  const int64_t rows = x.size(-1) == 0 ? 0 : x.numel() / x.size(-1);
  if (rows < 1 || x.size(-1) < 1 || weight.size(0) < 1) return nullptr;
  return choose_gemm();
}

at::Tensor linear_prepacked(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                            const OptTensor& packed) {
  const char* op = "linear_prepacked";
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be (out_features, in_features), got shape ",
                    weight.sizes());
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == k, op, ": x must end in in_features = ", k, ", got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == n), op, ": bias must be (", n,
                    ",), got shape ", bias.has_value() ? bias->sizes() : at::IntArrayRef{});
  if (packed.has_value() && mkl::is_mkl_pack(*packed)) {  // MKL's packed weight (pack_linear_weight_mkl)
    TORCH_CHECK_VALUE(weight.device() == x.device() && (!bias.has_value() || bias->device() == x.device()), op,
                      ": x, weight and bias must be on one device");
    if (std::optional<at::Tensor> out = mkl::linear(op, x, n, k, bias, *packed)) return *out;
    return at::linear(x, weight, bias);
  }
  if (packed.has_value()) {
    TORCH_CHECK_VALUE(packed->dim() == 3 && packed->size(0) == num_panels(n) && packed->size(1) == k &&
                          packed->size(2) == cpu::kPanelWidth,
                      op, ": packed must be pack_linear_weight(weight), of shape (", num_panels(n), ", ", k, ", ",
                      cpu::kPanelWidth, "), got ", packed->sizes());
    TORCH_CHECK_VALUE(packed->scalar_type() == weight.scalar_type() && packed->device() == weight.device(), op,
                      ": packed must have weight's dtype and device (", weight.scalar_type(), ", ",
                      weight.device(), "), got ", packed->scalar_type(), ", ", packed->device());
  }
  const Gemm gemm = packed_kernel(x, weight, bias, packed);
  if (gemm == nullptr) return at::linear(x, weight, bias);
  TORCH_CHECK_VALUE(weight.device() == x.device() && (!bias.has_value() || bias->device() == x.device()), op,
                    ": x, weight and bias must be on one device");

  at::Tensor a = x.reshape({-1, k});
  if (a.stride(1) != 1 || a.stride(0) < k) a = a.contiguous();
  at::Tensor panels = packed->contiguous();
  if (reinterpret_cast<std::uintptr_t>(panels.data_ptr()) % 64 != 0) {  // the kernels load whole aligned vectors
    panels = panels.clone();  // a fresh allocation: torch's CPU allocator aligns to 64 bytes
  }
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t rows = a.size(0);
  at::Tensor out = at::empty({rows, n}, x.options());
  const float* a_ptr = a.data_ptr<float>();
  const float* p_ptr = panels.data_ptr<float>();
  const float* b_ptr = bias_c.defined() ? bias_c.data_ptr<float>() : nullptr;
  float* c_ptr = out.data_ptr<float>();
  const int64_t lda = a.stride(0);
  // Work items: (panel, chunk of rows), panel-major so a thread keeps its panels in cache. The rows are split only
  // when there are too few panels for the threads.
  const int64_t np = num_panels(n);
  const int64_t threads = at::get_num_threads();
  int64_t chunks = std::max<int64_t>(1, std::min<int64_t>((rows + 47) / 48, (2 * threads + np - 1) / np));
  const int64_t chunk_rows = ((rows + chunks - 1) / chunks + 5) / 6 * 6;
  chunks = (rows + chunk_rows - 1) / chunk_rows;
  if (chunks == 1) {  // each thread its range of panels, in one call
    at::parallel_for(0, np, 1, [&](int64_t begin, int64_t end) {
      gemm(a_ptr, lda, rows, k, p_ptr, n, begin, end, b_ptr, c_ptr, n);
    });
  } else {
    at::parallel_for(0, np * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t p = item / chunks, r0 = (item % chunks) * chunk_rows;
        const int64_t r1 = std::min(rows, r0 + chunk_rows);
        gemm(a_ptr + r0 * lda, lda, r1 - r0, k, p_ptr, n, p, p + 1, b_ptr, c_ptr + r0 * n, n);
      }
    });
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return out.view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CPU, m) {
  m.impl("pack_linear_weight", &pack_linear_weight);
  m.impl("linear_prepacked", &linear_prepacked);
}
// pack_linear_weight is made of differentiable ATen ops (zeros, copy_ into a slice, transpose, contiguous): with
// autograd falling through to them, a backward pass through the packing gives the weight its gradient, instead of
// autograd's not-implemented fallback (which warns, and gives none).
TORCH_LIBRARY_IMPL(wmk, Autograd, m) { m.impl("pack_linear_weight", torch::CppFunction::makeFallthrough()); }
#ifdef WMK_WITH_CUDA
// On a GPU there is no packed kernel: linear_prepacked is at::linear, and the packing is device-agnostic ATen.
TORCH_LIBRARY_IMPL(wmk, CUDA, m) {
  m.impl("pack_linear_weight", &pack_linear_weight);
  m.impl("linear_prepacked", &linear_prepacked);
}
#endif

}  // namespace wmk::linear
