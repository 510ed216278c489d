// CPU kernels of vq_encode (fused distance + argmin, never forming the N x K matrix) and vq_decode.
// The search itself lives in the torch-free per-ISA files (vq_argmin_*_cpu.cpp); this file checks the
// arguments, converts and packs the inputs, picks the instruction set at run time and runs the row
// blocks in parallel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_isa.h"
#include "common/vq.h"
#include "vq/vq.h"
#include "vq/vq_argmin.h"

namespace wmk::vq {
namespace {

// The widest micro-kernel this CPU runs, or the one $WMK_VQ_ISA (scalar, avx2, avx512) names (common/cpu_isa.h).
cpu::Isa choose_isa() {
  cpu::Isa avx512{}, avx2{}, scalar{};
  cpu::scalar_isa(&scalar);
  bool has_avx512 = false, has_avx2 = false;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  has_avx512 = __builtin_cpu_supports("avx512f") && cpu::avx512_isa(&avx512);
  has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu::avx2_isa(&avx2);
#endif
  switch (choose_cpu_isa("WMK_VQ_ISA", "scalar", has_avx2, has_avx512, "kernel")) {
    case CpuIsa::kAvx512: return avx512;
    case CpuIsa::kAvx2: return avx2;
    case CpuIsa::kFallback: break;
  }
  return scalar;
}

// Rows [0, rows) of `src` (row-major, D = dim) into fp32 `dst`, scaled to unit length for cosine.
template <typename scalar_t>
void rows_to_float(const scalar_t* src, int64_t rows, int64_t dim, Metric metric, float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    float* out = dst + r * dim;
    const scalar_t* in = src + r * dim;
    for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<float>(in[d]);
    if (metric == Metric::kCosine) {
      const float inv = inverse_norm(out, dim);
      for (int64_t d = 0; d < dim; ++d) out[d] *= inv;
    }
  }
}

// Packs the codebook [K][D] (any float dtype; unit rows for cosine) into fp32 panels of `nr` codes
// holding -2 c (see vq_argmin.h). The panels are the only copy of the codebook the search keeps.
template <typename scalar_t>
void pack_codebook(const scalar_t* cb, int64_t k, int64_t dim, int nr, Metric metric, std::vector<float>& panels,
                   std::vector<float>& bias) {
  const int64_t num_panels = (k + nr - 1) / nr;
  panels.assign(num_panels * dim * nr, 0.f);
  bias.assign(num_panels * nr, std::numeric_limits<float>::infinity());
  at::parallel_for(0, num_panels, 16, [&](int64_t p0, int64_t p1) {
    std::vector<float> code(dim);
    for (int64_t p = p0; p < p1; ++p) {
      for (int j = 0; j < nr && p * nr + j < k; ++j) {
        rows_to_float(cb + (p * nr + j) * dim, 1, dim, metric, code.data());
        float norm2 = 0.f;
        for (int64_t d = 0; d < dim; ++d) {
          panels[(p * dim + d) * nr + j] = -2.f * code[d];  // exact: a power-of-two scale
          norm2 += code[d] * code[d];
        }
        bias[p * nr + j] = metric == Metric::kL2 ? norm2 : 0.f;
      }
    }
  });
}

// Code `code` back out of the panels, in fp32: -0.5 * (-2 c) is exact.
void unpack_code(const cpu::PackedCodebook& cb, int64_t code, float* out) {
  const float* src = cb.panels + (code / cb.nr) * cb.dim * cb.nr + code % cb.nr;
  for (int64_t d = 0; d < cb.dim; ++d) out[d] = -0.5f * src[d * cb.nr];
}

std::tuple<at::Tensor, at::Tensor> vq_encode_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                 c10::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  auto [indices, distances] = encode_outputs(x, codebook);
  const int64_t n = indices.numel();
  if (n == 0) return {indices, distances};
  const int64_t k = codebook.size(0), dim = codebook.size(1);

  // The packed fp32 codebook is K x D floats: small next to the N x K matrix we avoid.
  const cpu::Isa isa = choose_isa();
  std::vector<float> panels, bias;
  const at::Tensor cb_in = codebook.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cb_in.scalar_type(), "vq_encode_cpu", [&] {
    pack_codebook(cb_in.data_ptr<scalar_t>(), k, dim, isa.nr, metric, panels, bias);
  });
  const cpu::PackedCodebook packed{panels.data(), bias.data(), (k + isa.nr - 1) / isa.nr, dim, isa.nr};

  const at::Tensor xs = x.reshape({n, dim}).contiguous();
  // Rows per block: about 128 KB of fp32 rows, a whole number of micro-tiles.
  int64_t block_rows = std::clamp<int64_t>(32768 / dim, isa.mr, 512);
  block_rows = std::max<int64_t>(isa.mr, block_rows / isa.mr * isa.mr);
  const int64_t num_blocks = (n + block_rows - 1) / block_rows;
  int64_t* idx_out = indices.data_ptr<int64_t>();
  float* dist_out = distances.data_ptr<float>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs.scalar_type(), "vq_encode_cpu", [&] {
    const scalar_t* xsrc = xs.data_ptr<scalar_t>();
    // fp32 rows can be searched in place; others (and cosine, which rescales) go through a buffer.
    const bool in_place = std::is_same_v<scalar_t, float> && metric == Metric::kL2;
    at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> rows(in_place ? 0 : block_rows * dim);
      std::vector<float> scratch(cpu::scratch_floats(block_rows, dim, isa.mr));
      std::vector<int32_t> best_index(block_rows);
      std::vector<float> best_score(block_rows);
      std::vector<float> chosen(dim);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * block_rows, count = std::min(block_rows, n - r0);
        // Only read as float when in_place, that is when scalar_t is float.
        const float* xf = reinterpret_cast<const float*>(xsrc + r0 * dim);
        if (!in_place) {
          rows_to_float(xsrc + r0 * dim, count, dim, metric, rows.data());
          xf = rows.data();
        }
        isa.search(xf, dim, count, packed, scratch.data(), best_index.data(), best_score.data());
        for (int64_t i = 0; i < count; ++i) {
          const int64_t code = best_index[i];
          unpack_code(packed, code, chosen.data());
          idx_out[r0 + i] = code;
          dist_out[r0 + i] = metric == Metric::kL2 ? squared_l2(xf + i * dim, chosen.data(), dim)
                                                   : cosine_distance_unit(xf + i * dim, chosen.data(), dim);
        }
      }
    });
  });
  return {indices, distances};
}

// Lowers `first` to `candidate` atomically, so the reported bad index is the first in memory order.
void lower_to(std::atomic<int64_t>& first, int64_t candidate) {
  int64_t seen = first.load();
  while (candidate < seen && !first.compare_exchange_weak(seen, candidate)) {
  }
}

at::Tensor vq_decode_cpu(const at::Tensor& indices, const at::Tensor& codebook) {
  at::Tensor out = decode_output(indices, codebook);
  const int64_t n = indices.numel();
  if (n == 0) return out;
  const at::Tensor idx = indices.contiguous();
  const at::Tensor cb = codebook.contiguous();
  const int64_t k = cb.size(0);
  const int64_t row_bytes = cb.size(1) * cb.element_size();
  const char* src = static_cast<const char*>(cb.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  std::atomic<int64_t> first_bad{n};
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vq_decode_cpu", [&] {
    const index_t* ip = idx.data_ptr<index_t>();
    at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t code = static_cast<int64_t>(ip[i]);
        if (code < 0 || code >= k) {
          lower_to(first_bad, i);
          return;
        }
        std::memcpy(dst + i * row_bytes, src + code * row_bytes, row_bytes);
      }
    });
    const int64_t bad = first_bad.load();
    TORCH_CHECK_INDEX(bad == n, "vq_decode: indices must lie in [0, ", k, ") (the codebook size), found ",
                      static_cast<int64_t>(ip[bad]), " at flat index ", bad);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CPU, m) {
  m.impl("vq_encode", &vq_encode_cpu);
  m.impl("vq_decode", &vq_decode_cpu);
}

}  // namespace wmk::vq
