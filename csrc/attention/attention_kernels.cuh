#pragma once
// Device code of the CUDA attention kernels (see attention_cuda.cu for the design and the launches).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "attention/attention.h"
#include "common/attention.h"

namespace wmk::attention::cuda {

constexpr int kWarps = 8;
constexpr unsigned kFull = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float rsqrt_acc(float x) { return rsqrtf(x); }
__device__ __forceinline__ double rsqrt_acc(double x) { return rsqrt(x); }

// Everything a kernel needs about one call, passed by value.
template <typename scalar_t, typename acc_t>
struct Args {
  const scalar_t *q, *k, *v, *out, *dout;
  scalar_t *o, *dq, *dk, *dv;
  acc_t *lse, *delta, *dnorm;
  const acc_t *w, *b;
  const int64_t* nf;
  int64_t nf_stride;
  Roles qs, ks, vs, os, dos, dqs, dks, lss;
  int64_t groups, other, heads, lq, lk, dim;
  bool causal;
  acc_t scale, eps;
};

__device__ __forceinline__ int64_t group_offset(const Roles& r, int64_t g, int64_t heads, int64_t other,
                                                int64_t* batch = nullptr) {
  const int64_t h = g % heads, x = (g / heads) % other, b = g / (heads * other);
  if (batch != nullptr) *batch = b;
  return b * r.b + x * r.x + h * r.h;
}

// One row of C (<= 8 x 32) head-dim values held by a warp: lane l owns d = l + 32 c.
template <typename scalar_t, typename acc_t, int C>
__device__ __forceinline__ void load_row(const scalar_t* p, int64_t sd, int64_t dim, int lane, acc_t (&x)[C]) {
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t d = lane + 32 * c;
    x[c] = d < dim ? static_cast<acc_t>(p[d * sd]) : acc_t(0);
  }
}

template <typename acc_t, int C>
__device__ __forceinline__ acc_t dot_row(const acc_t (&a)[C], const acc_t (&b)[C]) {
  acc_t s = 0;
#pragma unroll
  for (int c = 0; c < C; ++c) s += a[c] * b[c];
  return warp_sum(s);
}

// LayerNorm over the head dim, in place; keeps xhat and returns rstd.
template <typename acc_t, int C>
__device__ __forceinline__ acc_t norm_row(acc_t (&x)[C], acc_t (&xhat)[C], const acc_t* w, const acc_t* b,
                                          int64_t dim, acc_t eps, int lane) {
  acc_t s = 0;
#pragma unroll
  for (int c = 0; c < C; ++c) s += x[c];
  acc_t mean = warp_sum(s) / static_cast<acc_t>(dim);
  // One correction pass, as layer_norm_row (common/attention.h) has: the rounded sum can leave mean a few ulps
  // off, and for a (near-)constant row that offset is all of x - mean, which rstd then amplifies up to
  // 1/sqrt(eps) times.
  acc_t corr = 0;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t d = lane + 32 * c;
    corr += d < dim ? x[c] - mean : acc_t(0);
  }
  mean += warp_sum(corr) / static_cast<acc_t>(dim);
  acc_t v = 0;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t d = lane + 32 * c;
    const acc_t xc = d < dim ? x[c] - mean : acc_t(0);
    v += xc * xc;
  }
  const acc_t rstd = rsqrt_acc(warp_sum(v) / static_cast<acc_t>(dim) + eps);
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t d = lane + 32 * c;
    xhat[c] = d < dim ? (x[c] - mean) * rstd : acc_t(0);
    x[c] = d < dim ? xhat[c] * w[d] + b[d] : acc_t(0);
  }
  return rstd;
}

// Backward of norm_row for gradient dy (in place -> dx); dw/db summed into dnorm[0:dim], dnorm[dim:2 dim].
template <typename acc_t, int C>
__device__ __forceinline__ void norm_row_backward(acc_t (&dy)[C], const acc_t (&xhat)[C], acc_t rstd, const acc_t* w,
                                                  acc_t* dnorm, int64_t dim, int lane) {
  acc_t sg = 0, sgx = 0;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t d = lane + 32 * c;
    if (d < dim) {
      const acc_t g = dy[c] * w[d];
      sg += g;
      sgx += g * xhat[c];
      atomicAdd(dnorm + d, dy[c] * xhat[c]);
      atomicAdd(dnorm + dim + d, dy[c]);
    }
  }
  const acc_t mean_g = warp_sum(sg) / static_cast<acc_t>(dim), mean_gx = warp_sum(sgx) / static_cast<acc_t>(dim);
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t d = lane + 32 * c;
    dy[c] = d < dim ? rstd * (dy[c] * w[d] - mean_g - xhat[c] * mean_gx) : acc_t(0);
  }
}

// scale * LayerNorm(q) or scale * q for query row i of group g.
template <typename scalar_t, typename acc_t, int C>
__device__ __forceinline__ acc_t query_row(const Args<scalar_t, acc_t>& a, int64_t g, int64_t i, int lane,
                                           acc_t (&q)[C], acc_t (&qhat)[C]) {
  load_row<scalar_t, acc_t, C>(a.q + group_offset(a.qs, g, a.heads, a.other) + i * a.qs.l, a.qs.d, a.dim, lane, q);
  acc_t rstd = 0;
  if (a.w != nullptr) rstd = norm_row<acc_t, C>(q, qhat, a.w, a.b, a.dim, a.eps, lane);
#pragma unroll
  for (int c = 0; c < C; ++c) q[c] *= a.scale;
  return rstd;
}

template <typename scalar_t, typename acc_t, int C>
__device__ __forceinline__ acc_t key_row(const Args<scalar_t, acc_t>& a, int64_t g, int64_t j, int lane,
                                         acc_t (&k)[C], acc_t (&khat)[C]) {
  load_row<scalar_t, acc_t, C>(a.k + group_offset(a.ks, g, a.heads, a.other) + j * a.ks.l, a.ks.d, a.dim, lane, k);
  return a.w != nullptr ? norm_row<acc_t, C>(k, khat, a.w, a.b, a.dim, a.eps, lane) : acc_t(0);
}

template <typename scalar_t, typename acc_t, int C>
__global__ void __launch_bounds__(kWarps * 32) forward_kernel(Args<scalar_t, acc_t> a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= a.groups * a.lq) return;  // uniform per warp
  const int64_t g = row / a.lq, i = row % a.lq;
  int64_t batch = 0;
  group_offset(a.qs, g, a.heads, a.other, &batch);
  acc_t q[C], qhat[C], k[C], khat[C], v[C], o[C];
  query_row<scalar_t, acc_t, C>(a, g, i, lane, q, qhat);
  const int64_t lk = a.nf != nullptr ? clamp_frames(a.nf[batch * a.nf_stride], a.lk) : a.lk;
  const int64_t nvis = visible_keys(i, a.lq, lk, a.causal);
  acc_t m = -INFINITY, l = 0;
#pragma unroll
  for (int c = 0; c < C; ++c) o[c] = 0;
  const scalar_t* vg = a.v + group_offset(a.vs, g, a.heads, a.other);
  for (int64_t j = 0; j < nvis; ++j) {
    key_row<scalar_t, acc_t, C>(a, g, j, lane, k, khat);
    load_row<scalar_t, acc_t, C>(vg + j * a.vs.l, a.vs.d, a.dim, lane, v);
    const acc_t s = dot_row<acc_t, C>(q, k);
    const acc_t m_new = s > m ? s : m;
    const acc_t alpha = exp_acc(m - m_new), p = exp_acc(s - m_new);
    l = l * alpha + p;
#pragma unroll
    for (int c = 0; c < C; ++c) o[c] = o[c] * alpha + p * v[c];
    m = m_new;
  }
  const acc_t inv = l > 0 ? acc_t(1) / l : acc_t(0);
  scalar_t* og = a.o + group_offset(a.os, g, a.heads, a.other) + i * a.os.l;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t d = lane + 32 * c;
    if (d < a.dim) og[d * a.os.d] = static_cast<scalar_t>(o[c] * inv);
  }
  if (a.lse != nullptr && lane == 0) a.lse[group_offset(a.lss, g, a.heads, a.other) + i * a.lss.l] = m + log_acc(l);
}

// delta = rowsum(dO * O) per query row, the softmax backward's correction.
template <typename scalar_t, typename acc_t, int C>
__global__ void __launch_bounds__(kWarps * 32) delta_kernel(Args<scalar_t, acc_t> a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= a.groups * a.lq) return;
  const int64_t g = row / a.lq, i = row % a.lq;
  acc_t o[C], d_o[C];
  load_row<scalar_t, acc_t, C>(a.out + group_offset(a.os, g, a.heads, a.other) + i * a.os.l, a.os.d, a.dim, lane, o);
  load_row<scalar_t, acc_t, C>(a.dout + group_offset(a.dos, g, a.heads, a.other) + i * a.dos.l, a.dos.d, a.dim, lane,
                               d_o);
  const acc_t s = dot_row<acc_t, C>(o, d_o);
  if (lane == 0) a.delta[group_offset(a.lss, g, a.heads, a.other) + i * a.lss.l] = s;
}

template <typename scalar_t, typename acc_t, int C>
__global__ void __launch_bounds__(kWarps * 32) dq_kernel(Args<scalar_t, acc_t> a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= a.groups * a.lq) return;
  const int64_t g = row / a.lq, i = row % a.lq;
  acc_t q[C], qhat[C], k[C], khat[C], v[C], d_o[C], dq[C];
  const acc_t qrstd = query_row<scalar_t, acc_t, C>(a, g, i, lane, q, qhat);
  load_row<scalar_t, acc_t, C>(a.dout + group_offset(a.dos, g, a.heads, a.other) + i * a.dos.l, a.dos.d, a.dim, lane,
                               d_o);
  const int64_t li = group_offset(a.lss, g, a.heads, a.other) + i * a.lss.l;
  const acc_t lse = a.lse[li], delta = a.delta[li];
#pragma unroll
  for (int c = 0; c < C; ++c) dq[c] = 0;
  const scalar_t* vg = a.v + group_offset(a.vs, g, a.heads, a.other);
  const int64_t nvis = visible_keys(i, a.lq, a.lk, a.causal);
  for (int64_t j = 0; j < nvis; ++j) {
    key_row<scalar_t, acc_t, C>(a, g, j, lane, k, khat);
    load_row<scalar_t, acc_t, C>(vg + j * a.vs.l, a.vs.d, a.dim, lane, v);
    const acc_t p = exp_acc(dot_row<acc_t, C>(q, k) - lse);
    const acc_t ds = p * (dot_row<acc_t, C>(d_o, v) - delta);
#pragma unroll
    for (int c = 0; c < C; ++c) dq[c] += ds * k[c];
  }
#pragma unroll
  for (int c = 0; c < C; ++c) dq[c] *= a.scale;
  if (a.w != nullptr) norm_row_backward<acc_t, C>(dq, qhat, qrstd, a.w, a.dnorm, a.dim, lane);
  scalar_t* dst = a.dq + group_offset(a.dqs, g, a.heads, a.other) + i * a.dqs.l;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t d = lane + 32 * c;
    if (d < a.dim) dst[d * a.dqs.d] = static_cast<scalar_t>(dq[c]);
  }
}

template <typename scalar_t, typename acc_t, int C>
__global__ void __launch_bounds__(kWarps * 32) dkdv_kernel(Args<scalar_t, acc_t> a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= a.groups * a.lk) return;
  const int64_t g = row / a.lk, j = row % a.lk;
  acc_t q[C], qhat[C], k[C], khat[C], v[C], d_o[C], dk[C], dv[C];
  const acc_t krstd = key_row<scalar_t, acc_t, C>(a, g, j, lane, k, khat);
  load_row<scalar_t, acc_t, C>(a.v + group_offset(a.vs, g, a.heads, a.other) + j * a.vs.l, a.vs.d, a.dim, lane, v);
#pragma unroll
  for (int c = 0; c < C; ++c) dk[c] = dv[c] = 0;
  const scalar_t* dog = a.dout + group_offset(a.dos, g, a.heads, a.other);
  const int64_t lg = group_offset(a.lss, g, a.heads, a.other);
  // Query i sees key j iff j < visible_keys(i): under the causal mask, iff i >= j - (lk - lq).
  const int64_t first = a.causal ? (j - (a.lk - a.lq) > 0 ? j - (a.lk - a.lq) : 0) : 0;
  for (int64_t i = first; i < a.lq; ++i) {
    query_row<scalar_t, acc_t, C>(a, g, i, lane, q, qhat);
    load_row<scalar_t, acc_t, C>(dog + i * a.dos.l, a.dos.d, a.dim, lane, d_o);
    const acc_t p = exp_acc(dot_row<acc_t, C>(q, k) - a.lse[lg + i * a.lss.l]);
    const acc_t ds = p * (dot_row<acc_t, C>(d_o, v) - a.delta[lg + i * a.lss.l]);
#pragma unroll
    for (int c = 0; c < C; ++c) {
      dv[c] += p * d_o[c];
      dk[c] += ds * q[c];
    }
  }
  if (a.w != nullptr) norm_row_backward<acc_t, C>(dk, khat, krstd, a.w, a.dnorm, a.dim, lane);
  const int64_t off = group_offset(a.dks, g, a.heads, a.other) + j * a.dks.l;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t d = lane + 32 * c;
    if (d < a.dim) {
      a.dk[off + d * a.dks.d] = static_cast<scalar_t>(dk[c]);
      a.dv[off + d * a.dks.d] = static_cast<scalar_t>(dv[c]);
    }
  }
}

}  // namespace wmk::attention::cuda
