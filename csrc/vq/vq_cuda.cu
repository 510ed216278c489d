// CUDA kernels of vq_encode (fused distance + argmin, never forming the N x K matrix) and vq_decode.
// Verified by compiling on machines without a GPU; the math they share with the CPU kernels (scoring
// rule, tie-breaking, distances) lives in common/vq.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/vq.h"
#include "vq/vq.h"

namespace wmk::vq {
namespace {

constexpr int kRows = 128;  // threads per block, one row of x each
constexpr int kCodes = 32;  // codes per shared-memory tile (accumulators per thread)
constexpr int kDims = 32;   // dimensions per shared-memory tile

// x: [n][dim] fp32 (unit rows for cosine); codebook: [k][dim] fp32 (unit rows for cosine);
// bias: [k] (|c|^2 for l2, 0 for cosine). Each thread keeps a running (best score, index) for its row;
// scores start at the bias and accumulate fma(x_d, -2 c_d), as on the CPU.
__global__ void vq_search_kernel(const float* __restrict__ x, const float* __restrict__ codebook,
                                 const float* __restrict__ bias, int64_t n, int64_t k, int64_t dim, int metric,
                                 int64_t* __restrict__ index_out, float* __restrict__ distance_out) {
  __shared__ float xs[kDims][kRows + 1];
  __shared__ float cs[kDims][kCodes];
  __shared__ float bs[kCodes];
  const int tid = threadIdx.x;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t row = first_row + tid;
  float best = INFINITY;
  int64_t best_code = 0;
  for (int64_t k0 = 0; k0 < k; k0 += kCodes) {
    if (tid < kCodes) bs[tid] = (k0 + tid < k) ? bias[k0 + tid] : INFINITY;  // padding codes never win
    __syncthreads();
    float acc[kCodes];
#pragma unroll
    for (int j = 0; j < kCodes; ++j) acc[j] = bs[j];
    for (int64_t d0 = 0; d0 < dim; d0 += kDims) {
      __syncthreads();  // the previous tile has been read by every thread
      for (int e = tid; e < kDims * kRows; e += blockDim.x) {
        const int r = e / kDims, dd = e % kDims;
        const int64_t gr = first_row + r, gd = d0 + dd;
        xs[dd][r] = (gr < n && gd < dim) ? x[gr * dim + gd] : 0.f;
      }
      for (int e = tid; e < kDims * kCodes; e += blockDim.x) {
        const int j = e / kDims, dd = e % kDims;
        const int64_t gk = k0 + j, gd = d0 + dd;
        cs[dd][j] = (gk < k && gd < dim) ? -2.f * codebook[gk * dim + gd] : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int dd = 0; dd < kDims; ++dd) {
        const float xv = xs[dd][tid];
#pragma unroll
        for (int j = 0; j < kCodes; ++j) acc[j] = fmaf(xv, cs[dd][j], acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kCodes; ++j) {
      if (is_better(acc[j], best)) {
        best = acc[j];
        best_code = k0 + j;
      }
    }
    __syncthreads();  // bs is rewritten by the next tile
  }
  if (row < n) {
    const float* xr = x + row * dim;
    const float* c = codebook + best_code * dim;
    index_out[row] = best_code;
    distance_out[row] = metric == static_cast<int>(Metric::kL2) ? squared_l2(xr, c, dim)
                                                                 : cosine_distance_unit(xr, c, dim);
  }
}

at::Tensor unit_rows(const at::Tensor& t) { return t / t.norm(2, {1}, true).clamp_min(kNormEps); }

std::tuple<at::Tensor, at::Tensor> vq_encode_cuda(const at::Tensor& x, const at::Tensor& codebook,
                                                  c10::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  auto [indices, distances] = encode_outputs(x, codebook);
  const int64_t n = indices.numel();
  if (n == 0) return {indices, distances};
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t k = codebook.size(0), dim = codebook.size(1);
  // fp32 copies (N x D and K x D), unit rows for cosine: small next to the N x K matrix we avoid.
  at::Tensor xf = x.reshape({n, dim}).to(at::kFloat).contiguous();
  at::Tensor cf = codebook.to(at::kFloat).contiguous();
  at::Tensor bias;
  if (metric == Metric::kCosine) {
    xf = unit_rows(xf).contiguous();
    cf = unit_rows(cf).contiguous();
    bias = at::zeros({k}, cf.options());
  } else {
    bias = cf.square().sum(1).contiguous();
  }
  const int64_t blocks = (n + kRows - 1) / kRows;
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int32_t>::max(), "vq_encode: too many rows: ", n);
  auto stream = c10::cuda::getCurrentCUDAStream();
  vq_search_kernel<<<static_cast<unsigned>(blocks), kRows, 0, stream>>>(
      xf.data_ptr<float>(), cf.data_ptr<float>(), bias.data_ptr<float>(), n, k, dim, static_cast<int>(metric),
      indices.data_ptr<int64_t>(), distances.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {indices, distances};
}

constexpr int kGatherThreads = 256;

// out[i, d] = codebook[indices[i], d]. An index outside [0, k) lowers `first_bad` (the lowest bad flat
// index), never a device-side assert, so the host raises IndexError and the CUDA context stays usable.
template <typename scalar_t, typename index_t>
__global__ void vq_gather_kernel(const index_t* __restrict__ indices, const scalar_t* __restrict__ codebook,
                                 scalar_t* __restrict__ out, int64_t n, int64_t k, int64_t dim,
                                 unsigned long long* first_bad) {
  const int64_t total = n * dim;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / dim, d = e % dim;
    const int64_t code = static_cast<int64_t>(indices[i]);
    if (code < 0 || code >= k) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
      continue;
    }
    out[e] = codebook[code * dim + d];
  }
}

at::Tensor vq_decode_cuda(const at::Tensor& indices, const at::Tensor& codebook) {
  at::Tensor out = decode_output(indices, codebook);
  const int64_t n = indices.numel();
  if (n == 0) return out;
  const c10::cuda::CUDAGuard guard(codebook.device());
  const at::Tensor idx = indices.contiguous();
  const at::Tensor cb = codebook.contiguous();
  const int64_t k = cb.size(0), dim = cb.size(1);
  at::Tensor first_bad = at::full({1}, n, idx.options().dtype(at::kLong));
  const int64_t blocks = std::min<int64_t>((n * dim + kGatherThreads - 1) / kGatherThreads, 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cb.scalar_type(), "vq_decode_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "vq_decode_cuda", [&] {
      vq_gather_kernel<scalar_t, index_t><<<static_cast<unsigned>(blocks), kGatherThreads, 0, stream>>>(
          idx.data_ptr<index_t>(), cb.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, k, dim,
          reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = first_bad.item<int64_t>();
  TORCH_CHECK_INDEX(bad == n, "vq_decode: indices must lie in [0, ", k, ") (the codebook size), found ",
                    idx.reshape(-1)[bad].item<int64_t>(), " at flat index ", bad);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CUDA, m) {
  m.impl("vq_encode", &vq_encode_cuda);
  m.impl("vq_decode", &vq_decode_cuda);
}

}  // namespace wmk::vq
