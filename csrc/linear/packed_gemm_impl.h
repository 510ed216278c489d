#pragma once
// The packed kernel's tiles and loops, written once over a vector type. Included only by the per-ISA files
// (packed_linear_avx2_cpu.cpp, packed_linear_avx512_cpu.cpp), each compiled for its own instruction set. Everything
// here sits in an unnamed namespace: each of those files gets its own copy, with internal linkage, so the linker can
// never merge one ISA's instantiation into code that another CPU runs. No torch, no standard-library templates.
//
// `Ops` supplies the vector type and its operations: Vec, kWidth (floats per vector; 16 must be a multiple),
// kTileRows (rows per register tile), kGroup (panels per register tile at most), zero(), load(p) and store(p, v)
// (aligned), loadu(p), storeu(p, v), set1(x), fma(a, b, c) = a * b + c, add(a, b).
#include "linear/packed_linear.h"

namespace wmk::linear::cpu {
namespace {

// Order of arithmetic. Each output is summed over k in blocks of kSumBlock; within a block, in chains of kChain FMAs
// (each from 0, in order of k) whose sums are added pairwise (chain sums 0+1, 2+3, then (0+1)+(2+3), ...; a block
// with a chain count that is not a power of 2 adds what is left from the lowest level up); the block sums are added
// to the running sum in order, then the bias. torch's fp32 product (MKL) sums few-row products very accurately: on
// the Intel Xeon VM, against its error, single chains of 256 measured 2-3x at K = 1,024 (13 rows) and up to 4.6x at
// K = 512 (4 rows), chains of 32 up to 2.5x at K = 64-128; chains of 16 added pairwise stayed within 1.2x at
// K >= 256 and 2.0x at K = 100 (20 random cases per shape, 1 to 13 rows), the numerics rule's bound.
constexpr int64_t kChain = 16;
constexpr int64_t kSumBlock = 256;
// The levels of partial sums a block needs: log2(kSumBlock / kChain).
constexpr int levels_for(int64_t chains) { return chains <= 1 ? 0 : 1 + levels_for(chains / 2); }
constexpr int kLevels = levels_for(kSumBlock / kChain);
// Rows per block of the loops: a panel group's slice of kSumBlock k stays in L1/L2 across a block.
constexpr int64_t kBlockRows = 96;

// Rows [0, MR) x NP panels of 16 outputs, over k in [k0, k1) (one block of at most kSumBlock): chains of kChain k
// from 0, added pairwise (the partial sums wait in `part`, in L1); then, unless k0 == 0, the block's sum is added to
// what `out` holds (the earlier blocks' sum); `bias` (null but in the last block) is added last. Every output sees
// the same operations in the same order whatever MR, NP and the vector width, so all instruction sets and tilings
// give bitwise the same result. The accumulators stay in registers: every loop over them is unrolled (an indexed
// accumulator array would otherwise live in memory, 3x slower).
template <class Ops, int MR, int NP>
inline void tile(const float* a, int64_t lda, int64_t k0, int64_t k1, const float* panel, int64_t panel_stride,
                 const float* bias, float* out, int64_t ldo) {
  using Vec = typename Ops::Vec;
  constexpr int kPerPanel = static_cast<int>(kPanelWidth) / Ops::kWidth;
  constexpr int NV = NP * kPerPanel;  // vectors across the tile's outputs; vector c covers outputs c*kWidth..
  constexpr int kTile = NV * MR * Ops::kWidth;  // floats of one partial sum of the tile
  alignas(64) float part[kLevels * kTile];
  int64_t chain = 0;
  for (int64_t c0 = k0; c0 < k1; c0 += kChain, ++chain) {
    const int64_t c1 = c0 + kChain < k1 ? c0 + kChain : k1;
    Vec acc[NV][MR];
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) acc[c][i] = Ops::zero();
    }
#pragma GCC unroll 4
    for (int64_t kk = c0; kk < c1; ++kk) {
      Vec b[NV];
#pragma GCC unroll 16
      for (int c = 0; c < NV; ++c) {
        b[c] = Ops::load(panel + (c / kPerPanel) * panel_stride + kk * kPanelWidth + (c % kPerPanel) * Ops::kWidth);
      }
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const Vec x = Ops::set1(a[i * lda + kk]);
#pragma GCC unroll 16
        for (int c = 0; c < NV; ++c) acc[c][i] = Ops::fma(x, b[c], acc[c][i]);
      }
    }
    // Pairwise: chain j's sum takes in the partial sums at the levels of j's trailing 1 bits (each the sum of the
    // 2^level chains before), and is stored at the next level. The block's last chain then takes in what is left.
    int level = 0;
    int64_t bits = chain;
    const auto take = [&](int from) {
      const float* src = part + from * kTile;
#pragma GCC unroll 16
      for (int c = 0; c < NV; ++c) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) acc[c][i] = Ops::add(Ops::load(src + (c * MR + i) * Ops::kWidth), acc[c][i]);
      }
    };
    for (; (bits & 1) != 0; bits >>= 1, ++level) take(level);
    if (c1 < k1) {
      float* dst = part + level * kTile;
#pragma GCC unroll 16
      for (int c = 0; c < NV; ++c) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) Ops::store(dst + (c * MR + i) * Ops::kWidth, acc[c][i]);
      }
      continue;
    }
    for (bits >>= 1, ++level; bits != 0; bits >>= 1, ++level) {
      if ((bits & 1) != 0) take(level);
    }
    if (k0 > 0) {  // the earlier blocks' sum, plus this block's
#pragma GCC unroll 16
      for (int c = 0; c < NV; ++c) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) acc[c][i] = Ops::add(Ops::loadu(out + i * ldo + c * Ops::kWidth), acc[c][i]);
      }
    }
    if (bias != nullptr) {
#pragma GCC unroll 16
      for (int c = 0; c < NV; ++c) {
        const Vec bc = Ops::loadu(bias + c * Ops::kWidth);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) acc[c][i] = Ops::add(acc[c][i], bc);
      }
    }
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) Ops::storeu(out + i * ldo + c * Ops::kWidth, acc[c][i]);
    }
  }
}

// A tile of m < Ops::kTileRows rows (the last of a block): MR counts down to m.
template <class Ops, int MR, int NP>
inline void short_tile(int m, const float* a, int64_t lda, int64_t k0, int64_t k1, const float* panel,
                       int64_t panel_stride, const float* bias, float* out, int64_t ldo) {
  if (m == MR) {
    tile<Ops, MR, NP>(a, lda, k0, k1, panel, panel_stride, bias, out, ldo);
  } else if constexpr (MR > 1) {
    short_tile<Ops, MR - 1, NP>(m, a, lda, k0, k1, panel, panel_stride, bias, out, ldo);
  }
}

// Rows [0, rows) of NP panels over k in [k0, k1), in tiles of Ops::kTileRows rows and a last shorter one.
template <class Ops, int NP>
inline void group_rows(int64_t rows, const float* a, int64_t lda, int64_t k0, int64_t k1, const float* panel,
                       int64_t panel_stride, const float* bias, float* out, int64_t ldo) {
  constexpr int MR = Ops::kTileRows;
  int64_t r = 0;
  for (; r + MR <= rows; r += MR) {
    tile<Ops, MR, NP>(a + r * lda, lda, k0, k1, panel, panel_stride, bias, out + r * ldo, ldo);
  }
  if (r < rows) {
    short_tile<Ops, MR - 1, NP>(static_cast<int>(rows - r), a + r * lda, lda, k0, k1, panel, panel_stride, bias,
                                out + r * ldo, ldo);
  }
}

// group_rows for a run-time group of 1 .. NP panels.
template <class Ops, int NP>
inline void any_group_rows(int group, int64_t rows, const float* a, int64_t lda, int64_t k0, int64_t k1,
                           const float* panel, int64_t panel_stride, const float* bias, float* out, int64_t ldo) {
  if (group == NP) {
    group_rows<Ops, NP>(rows, a, lda, k0, k1, panel, panel_stride, bias, out, ldo);
  } else if constexpr (NP > 1) {
    any_group_rows<Ops, NP - 1>(group, rows, a, lda, k0, k1, panel, panel_stride, bias, out, ldo);
  }
}

// The whole product for panels [panel_begin, panel_end) (see packed_linear.h for the arguments).
template <class Ops>
void packed_gemm(const float* a, int64_t lda, int64_t rows, int64_t k, const float* panels, int64_t n_total,
                 int64_t panel_begin, int64_t panel_end, const float* bias, float* c, int64_t ldc) {
  const int64_t stride = k * kPanelWidth;  // floats from one panel to the next
  // Full panels, in groups of up to Ops::kGroup: blocks of kSumBlock k outermost, so a block of x (rows x kSumBlock)
  // stays in L2 while the panels pass over it; then blocks of kBlockRows rows, so each group's slice stays in cache
  // across them.
  const int64_t full_end = n_total / kPanelWidth < panel_end ? n_total / kPanelWidth : panel_end;
  for (int64_t k0 = 0; k0 < k; k0 += kSumBlock) {
    const int64_t k1 = k0 + kSumBlock < k ? k0 + kSumBlock : k;
    for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
      const int64_t block = rows - r0 < kBlockRows ? rows - r0 : kBlockRows;
      for (int64_t p = panel_begin; p < full_end;) {
        const int group = static_cast<int>(full_end - p < Ops::kGroup ? full_end - p : Ops::kGroup);
        const float* group_bias = bias != nullptr && k1 == k ? bias + p * kPanelWidth : nullptr;
        any_group_rows<Ops, Ops::kGroup>(group, block, a + r0 * lda, lda, k0, k1, panels + p * stride, stride,
                                         group_bias, c + r0 * ldc + p * kPanelWidth, ldc);
        p += group;
      }
    }
  }
  if (full_end >= panel_end) return;
  // The last, partial panel (n_total not a multiple of 16): the same sums, in a scratch of 16 columns per tile.
  const int64_t p = full_end, n0 = p * kPanelWidth, cols = n_total - n0;
  constexpr int64_t kRows = Ops::kTileRows;
  alignas(64) float part[kRows * kPanelWidth];
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t block = rows - r0 < kRows ? rows - r0 : kRows;
    for (int64_t k0 = 0; k0 < k; k0 += kSumBlock) {
      const int64_t k1 = k0 + kSumBlock < k ? k0 + kSumBlock : k;
      group_rows<Ops, 1>(block, a + r0 * lda, lda, k0, k1, panels + p * stride, stride, nullptr, part, kPanelWidth);
    }
    for (int64_t i = 0; i < block; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        c[(r0 + i) * ldc + n0 + j] = bias != nullptr ? part[i * kPanelWidth + j] + bias[n0 + j] : part[i * kPanelWidth + j];
      }
    }
  }
}

}  // namespace
}  // namespace wmk::linear::cpu
