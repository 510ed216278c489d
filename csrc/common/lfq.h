#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"
#include "common/scalar_math.h"

// Lookup-free quantization (LFQ) math shared by the CPU and CUDA kernels.
//
// A latent x of `bits` channels is quantized to the code c = sign(x) in {-1, +1}^bits; channel j is bit j of
// the index ("lsb", the 1X tokens) or bit bits-1-j ("msb", MAGVIT2 / vector-quantize-pytorch).
//
// Entropy loss: with logits 2 * x . c * inv_temperature over all 2^bits codes, the softmax factorizes into
// independent bits: P(code) = prod_j q_j^{b_j} (1 - q_j)^{1 - b_j}, q_j = sigmoid(z_j),
// z_j = 4 * inv_temperature * x_j.
// So the per-sample entropy is a sum of binary entropies, and the probability table of a half of the bits is
// a Kronecker product that `lfq_expand` builds in 2^m steps (the kernels combine two halves with a GEMM).
namespace wmk::lfq {

// Largest bit count lfq_encode / lfq_decode accept: indices stay far from int32/int64 limits and the
// 1X tokens (18 bits) fit with room.
constexpr int64_t kMaxBits = 30;
// Largest bit count of the entropy loss: its table holds 2^bits probabilities (64 MiB of float32 at 24).
constexpr int64_t kMaxEntropyBits = 24;

// Position of channel j inside the index.
WMK_HOST_DEVICE WMK_INLINE int64_t bit_position(int64_t j, int64_t bits, bool msb_first) {
  return msb_first ? bits - 1 - j : j;
}

// x > 0 in the input's own precision (a float64 of 1e-50 is positive); float16/bfloat16 compare as float.
template <typename T>
WMK_HOST_DEVICE WMK_INLINE bool is_positive(const T& v) {
  return static_cast<float>(v) > 0.0f;
}
WMK_HOST_DEVICE WMK_INLINE bool is_positive(const double& v) { return v > 0.0; }

// NaN > 0 is false, so a NaN channel gives bit 0 (code -1), as `x > 0` does in vector-quantize-pytorch.
template <typename T>
WMK_HOST_DEVICE WMK_INLINE int64_t encode_one(const T* x, int64_t bits, bool msb_first) {
  int64_t index = 0;
  for (int64_t j = 0; j < bits; ++j) {
    if (is_positive(x[j])) index |= int64_t{1} << bit_position(j, bits, msb_first);
  }
  return index;
}

template <typename T>
WMK_HOST_DEVICE WMK_INLINE void decode_one(int64_t index, int64_t bits, bool msb_first, T* out) {
  for (int64_t j = 0; j < bits; ++j) {
    out[j] = static_cast<T>(((index >> bit_position(j, bits, msb_first)) & 1) ? 1.0f : -1.0f);
  }
}

// sigmoid(z) and sigmoid(-z), each computed without cancellation (1 - q would lose q's tail).
template <typename acc_t>
WMK_HOST_DEVICE WMK_INLINE void bit_probs(acc_t z, acc_t* q0, acc_t* q1) {
  const acc_t e = math::exp_(-math::abs_(z));  // in (0, 1]
  const acc_t big = acc_t(1) / (acc_t(1) + e);
  const acc_t small = e * big;
  *q1 = z >= acc_t(0) ? big : small;
  *q0 = z >= acc_t(0) ? small : big;
}

// Binary entropy of sigmoid(z) in nats: log1p(e^-|z|) + |z| e^-|z| / (1 + e^-|z|); both terms are positive,
// so it stays accurate where the textbook softplus(z) - z sigmoid(z) cancels.
template <typename acc_t>
WMK_HOST_DEVICE WMK_INLINE acc_t binary_entropy(acc_t z) {
  const acc_t a = math::abs_(z);
  const acc_t e = math::exp_(-a);
  return math::log1p_(e) + a * e / (acc_t(1) + e);
}

// d binary_entropy / dz = -z q (1 - q).
template <typename acc_t>
WMK_HOST_DEVICE WMK_INLINE acc_t binary_entropy_grad(acc_t z, acc_t q0, acc_t q1) {
  return -z * q0 * q1;
}

// The probability table of m bits: out[i] = prod_j (bit j of i ? q1[j] : q0[j]), 2^m entries.
template <typename acc_t, typename out_t>
WMK_HOST_DEVICE WMK_INLINE void expand(const acc_t* q0, const acc_t* q1, int64_t m, out_t* out) {
  out[0] = out_t(1);
  for (int64_t j = 0; j < m; ++j) {
    const int64_t half = int64_t{1} << j;
    for (int64_t i = 0; i < half; ++i) {
      const acc_t p = static_cast<acc_t>(out[i]);
      out[i + half] = static_cast<out_t>(p * q1[j]);
      out[i] = static_cast<out_t>(p * q0[j]);
    }
  }
}

// For a weight vector w over the 2^m codes of the table `expand` builds, the derivative of
// sum_i w[i] * table[i] with respect to q1[j] (q0[j] = 1 - q1[j} moving with it), for every j < m:
//   d[j] = sum_i w[i] * (bit j of i ? +1 : -1) * prod_{k != j} (bit k of i ? q1[k] : q0[k]).
// The leave-one-out products come from prefix and suffix products (no division, so a q that underflowed
// to 0 is harmless). m <= 16 (the kernels split the bits in halves of at most 12).
template <typename acc_t, typename w_t>
WMK_HOST_DEVICE WMK_INLINE void table_grad(const w_t* w, const acc_t* q0, const acc_t* q1, int64_t m, acc_t* d) {
  acc_t prefix[17];
  for (int64_t j = 0; j < m; ++j) d[j] = acc_t(0);
  const int64_t size = int64_t{1} << m;
  for (int64_t i = 0; i < size; ++i) {
    const acc_t wi = static_cast<acc_t>(w[i]);
    prefix[0] = acc_t(1);
    for (int64_t j = 0; j < m; ++j) prefix[j + 1] = prefix[j] * (((i >> j) & 1) ? q1[j] : q0[j]);
    acc_t suffix = acc_t(1);
    for (int64_t j = m - 1; j >= 0; --j) {
      const acc_t others = prefix[j] * suffix;
      d[j] += ((i >> j) & 1) ? wi * others : -wi * others;
      suffix *= ((i >> j) & 1) ? q1[j] : q0[j];
    }
  }
}

// How the entropy-loss kernels split `bits` channels: the low `lo_bits` channels index columns of the
// (2^hi x 2^lo) probability table, the rest index rows.
WMK_HOST_DEVICE WMK_INLINE int64_t lo_bits_of(int64_t bits) { return bits / 2; }

}  // namespace wmk::lfq
