// LFQ kernels on CPU: encode/decode, and the exact entropy loss streamed through an O(2^bits) table.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/lfq.h"
#include "vq/lfq.h"

namespace wmk::lfq {
namespace {

constexpr int64_t kGrain = 1 << 12;

at::Tensor lfq_encode_cpu(const at::Tensor& x, c10::string_view bit_order_view) {
  const std::string bit_order(bit_order_view);
  at::Tensor out = encode_output(x, bit_order);
  const bool msb = msb_first_of(bit_order);
  const at::Tensor in = x.contiguous();
  const int64_t bits = in.size(-1);
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "lfq_encode_cpu", [&] {
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    int64_t* dst = out.data_ptr<int64_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) dst[i] = encode_one(src + i * bits, bits, msb);
    });
  });
  return out;
}

void lower_to(std::atomic<int64_t>& first, int64_t candidate) {
  int64_t seen = first.load();
  while (candidate < seen && !first.compare_exchange_weak(seen, candidate)) {
  }
}

at::Tensor lfq_decode_cpu(const at::Tensor& indices, int64_t bits, c10::string_view bit_order_view,
                          std::optional<at::ScalarType> dtype) {
  const std::string bit_order(bit_order_view);
  at::Tensor out = decode_output(indices, bits, bit_order, dtype);
  const bool msb = msb_first_of(bit_order);
  const at::Tensor in = indices.contiguous();
  const int64_t n = in.numel();
  const int64_t size = int64_t{1} << bits;
  std::atomic<int64_t> first_bad{n};
  AT_DISPATCH_INDEX_TYPES(in.scalar_type(), "lfq_decode_cpu", [&] {
    const index_t* src = in.const_data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "lfq_decode_cpu_out", [&] {
      scalar_t* dst = out.data_ptr<scalar_t>();
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t index = static_cast<int64_t>(src[i]);
          if (index < 0 || index >= size) {
            lower_to(first_bad, i);
            return;
          }
          decode_one(index, bits, msb, dst + i * bits);
        }
      });
    });
    const int64_t bad = first_bad.load();
    TORCH_CHECK_INDEX(bad == n, "lfq_decode: indices must lie in [0, 2^", bits, " = ", size, "), found ",
                      static_cast<int64_t>(src[bad]), " at flat index ", bad);
  });
  return out;
}

// Per row: q0/q1 of every bit, the two half-tables, and (optionally) the summed binary entropies.
template <typename scalar_t, typename acc_t>
void expand_rows(const scalar_t* x, int64_t row0, int64_t rows, const Plan& p, acc_t scale, acc_t* lo_table,
                 acc_t* hi_table, double* entropy) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    acc_t q0[kMaxEntropyBits], q1[kMaxEntropyBits];
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = x + (row0 + r) * p.bits;
      double h = 0;
      for (int64_t j = 0; j < p.bits; ++j) {
        const acc_t z = scale * static_cast<acc_t>(xr[j]);
        bit_probs(z, q0 + j, q1 + j);
        if (entropy) h += static_cast<double>(binary_entropy(z));
      }
      if (entropy) entropy[r] = h;
      expand(q0, q1, p.lo_bits, lo_table + r * p.lo_size);
      expand(q0 + p.lo_bits, q1 + p.lo_bits, p.hi_bits, hi_table + r * p.hi_size);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> lfq_entropy_loss_cpu(const at::Tensor& x, double inv_temperature,
                                                        double diversity_gamma) {
  check_entropy_args(x, inv_temperature, diversity_gamma);
  const at::Tensor in = x.contiguous();
  const Plan p = plan_of(in);
  const auto acc = in.options().dtype(acc_type_of(in));
  // The first chunk overwrites the table (beta = 0), so it needs no zero fill unless there are no samples.
  at::Tensor table = p.rows > 0 ? at::empty({p.hi_size, p.lo_size}, acc) : at::zeros({p.hi_size, p.lo_size}, acc);
  at::Tensor lo_table = at::empty({p.chunk, p.lo_size}, acc);
  at::Tensor hi_table = at::empty({p.chunk, p.hi_size}, acc);
  at::Tensor entropy = at::empty({p.chunk}, in.options().dtype(at::kDouble));
  double entropy_sum = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "lfq_entropy_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(4 * inv_temperature);
    for (int64_t row0 = 0; row0 < p.rows; row0 += p.chunk) {
      const int64_t rows = std::min(p.chunk, p.rows - row0);
      expand_rows(in.const_data_ptr<scalar_t>(), row0, rows, p, scale, lo_table.data_ptr<acc_t>(),
                  hi_table.data_ptr<acc_t>(), entropy.data_ptr<double>());
      const double* e = entropy.const_data_ptr<double>();
      for (int64_t r = 0; r < rows; ++r) entropy_sum += e[r];
      // table[hi, lo] += sum_r hi_table[r, hi] * lo_table[r, lo]: the outer products of all rows at once.
      table.addmm_(hi_table.narrow(0, 0, rows).t(), lo_table.narrow(0, 0, rows), /*beta=*/row0 == 0 ? 0 : 1);
    }
  });
  // An empty batch has nothing to penalize: its loss is 0 (not the NaN of a mean over no samples).
  const double denom = p.rows > 0 ? static_cast<double>(p.rows) : 1.0;
  // Normalize the table and take its entropy in one pass (double accumulation; 0 log 0 = 0). The partial sums
  // are per fixed chunk and added in chunk order (not per thread, as at::parallel_reduce does), so the loss is
  // bitwise the same for any thread count.
  double codebook_entropy = 0;
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "lfq_codebook_entropy_cpu", [&] {
    scalar_t* t = table.data_ptr<scalar_t>();
    const scalar_t inv = static_cast<scalar_t>(1.0 / denom);
    constexpr int64_t kChunk = 1 << 14;
    const int64_t chunks = (table.numel() + kChunk - 1) / kChunk;
    std::vector<double> partial(chunks, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double acc = 0;
        for (int64_t i = c * kChunk; i < std::min((c + 1) * kChunk, table.numel()); ++i) {
          const scalar_t a = t[i] * inv;
          t[i] = a;
          if (a > 0) acc -= static_cast<double>(a) * std::log(static_cast<double>(a));
        }
        partial[c] = acc;
      }
    });
    for (const double part : partial) codebook_entropy += part;
  });
  const double loss = entropy_sum / denom - diversity_gamma * codebook_entropy;
  return {at::full({}, loss, in.options()), table.view({-1})};
}

at::Tensor lfq_entropy_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& avg_prob,
                                         double inv_temperature, double diversity_gamma) {
  check_entropy_args(x, inv_temperature, diversity_gamma);
  const at::Tensor in = x.contiguous();
  const Plan p = plan_of(in);
  const auto acc = in.options().dtype(acc_type_of(in));
  at::Tensor grad_x = at::empty(in.sizes(), acc);
  const at::Tensor weight = codebook_weight(avg_prob, in, p);
  at::Tensor lo_table = at::empty({p.chunk, p.lo_size}, acc);
  at::Tensor hi_table = at::empty({p.chunk, p.hi_size}, acc);
  const double denom = p.rows > 0 ? static_cast<double>(p.rows) : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "lfq_entropy_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(4 * inv_temperature);
    const acc_t gamma = static_cast<acc_t>(diversity_gamma);
    const acc_t outer = static_cast<acc_t>(4 * inv_temperature / denom);
    for (int64_t row0 = 0; row0 < p.rows; row0 += p.chunk) {
      const int64_t rows = std::min(p.chunk, p.rows - row0);
      expand_rows<scalar_t, acc_t>(in.const_data_ptr<scalar_t>(), row0, rows, p, scale, lo_table.data_ptr<acc_t>(),
                                   hi_table.data_ptr<acc_t>(), nullptr);
      // Weights of each half-table entry: the other half contracted with -log(avg_prob).
      const at::Tensor lo_weight = at::mm(hi_table.narrow(0, 0, rows), weight);      // rows x 2^lo
      const at::Tensor hi_weight = at::mm(lo_table.narrow(0, 0, rows), weight.t());  // rows x 2^hi
      const scalar_t* src = in.const_data_ptr<scalar_t>();
      const acc_t* lw = lo_weight.const_data_ptr<acc_t>();
      const acc_t* hw = hi_weight.const_data_ptr<acc_t>();
      acc_t* dst = grad_x.data_ptr<acc_t>();
      at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
        acc_t q0[kMaxEntropyBits], q1[kMaxEntropyBits], d[kMaxEntropyBits];
        for (int64_t r = begin; r < end; ++r) {
          const int64_t row = row0 + r;
          for (int64_t j = 0; j < p.bits; ++j) {
            bit_probs(scale * static_cast<acc_t>(src[row * p.bits + j]), q0 + j, q1 + j);
          }
          table_grad(lw + r * p.lo_size, q0, q1, p.lo_bits, d);
          table_grad(hw + r * p.hi_size, q0 + p.lo_bits, q1 + p.lo_bits, p.hi_bits, d + p.lo_bits);
          for (int64_t j = 0; j < p.bits; ++j) {
            const acc_t z = scale * static_cast<acc_t>(src[row * p.bits + j]);
            dst[row * p.bits + j] = outer * (binary_entropy_grad(z, q0[j], q1[j]) - gamma * d[j] * q0[j] * q1[j]);
          }
        }
      });
    }
  });
  return grad_x.mul_(grad.to(acc_type_of(in))).to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(wmk, CPU, m) {
  m.impl("lfq_encode", &lfq_encode_cpu);
  m.impl("lfq_decode", &lfq_decode_cpu);
  m.impl("lfq_entropy_loss", &lfq_entropy_loss_cpu);
  m.impl("lfq_entropy_loss_backward", &lfq_entropy_loss_backward_cpu);
}

}  // namespace wmk::lfq
