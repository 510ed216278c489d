#pragma once
// x @ W^T + bias against a weight packed once. Written for the frame sampler's passes (256 or 512 rows per matrix
// product, against every weight of the model), where MKL re-packs each weight at every call and splits the work
// poorly over threads. This header and packed_linear_avx2_cpu.cpp include no torch and no
// standard-library templates: that file is compiled with -mavx2 -mfma, and an inline function instantiated there
// could be merged by the linker into code that runs on CPUs without those instructions.
//
// Layout. W (N, K) is packed into ceil(N / 16) panels of 16 output features: panel p holds, for each k in [0, K),
// the 16 values W[p*16 + j][k] (j = 0..15) contiguously, zeros past N. The micro-kernel keeps a 6 x 16 tile of
// outputs in registers, broadcasts one x value per pair of FMAs and reads the panel straight through.
//
// Order of arithmetic. Every output sums fma(x[k], W[n][k], acc) over k in blocks of 256 (each block from acc = 0,
// in order of k; block sums added to the running sum in order), then adds bias[n]: the same on every row, tile and
// thread split, so a row's result does not depend on the number of rows or threads. It is not bitwise MKL's (whose
// sum order differs by a few ulps), which is why every path of the GENIE layers picks its kernel by one rule
// (python/wmkernels/nn/packed_linear.py).
//
// Loops (packed_gemm_avx2): blocks of 256 k outermost, so a block of x stays in L2 while the panels pass over it;
// then blocks of 96 rows, so a panel's slice stays in L1 across them; then panels; then tiles of 6 rows.
#include <cstdint>

namespace wmk::linear::cpu {

constexpr int64_t kPanelWidth = 16;

// Whether the AVX2+FMA kernel was compiled in and this CPU runs it.
bool avx2_usable();

// c[r][n] = sum_k a[r][k] * panels(n, k) (+ bias[n]) for rows [0, rows) and output features of panels
// [panel_begin, panel_end) (the last panel may be partial: n < n_total). a: rows of `k` floats, row stride lda;
// c: row stride ldc. bias may be null.
void packed_gemm_avx2(const float* a, int64_t lda, int64_t rows, int64_t k, const float* panels, int64_t n_total,
                      int64_t panel_begin, int64_t panel_end, const float* bias, float* c, int64_t ldc);

}  // namespace wmk::linear::cpu
