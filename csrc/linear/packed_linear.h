#pragma once
// x @ W^T + bias against a weight packed once. Written for the frame sampler's passes (256 or 512 rows per matrix
// product, against every weight of the model), where MKL re-packs each weight at every call and splits the work
// poorly over threads. This header, packed_gemm_impl.h and the per-ISA files (packed_linear_avx2_cpu.cpp, compiled
// with -mavx2 -mfma; packed_linear_avx512_cpu.cpp, with -mavx512f) include no torch and no standard-library
// templates: an inline function instantiated there could be merged by the linker into code that runs on CPUs
// without those instructions.
//
// Layout. W (N, K) is packed into ceil(N / 16) panels of 16 output features: panel p holds, for each k in [0, K),
// the 16 values W[p*16 + j][k] (j = 0..15) contiguously, zeros past N. The micro-kernels keep a tile of outputs in
// registers (AVX2: 6 rows x 1 panel; AVX-512: 6 rows x up to 4 panels), broadcast one x value per row and k, and read
// the panels straight through. Both read the same packing.
//
// Order of arithmetic (packed_gemm_impl.h). Every output sums fma(x[k], W[n][k], acc) in chains of 16 k (each from
// acc = 0, in order of k), the chain sums of each block of 256 k added pairwise, the block sums added to the running
// sum in order, then bias[n]: the same on every row, tile and thread split, so a row's result does not depend on the
// number of rows or threads, nor on the instruction set (the AVX2 and AVX-512 kernels agree bitwise). It is not
// bitwise MKL's (whose sum order differs by a few ulps), which is why every path of the GENIE layers picks its kernel
// by one rule (python/wmkernels/nn/packed_linear.py).
//
// Loops (packed_gemm_impl.h): blocks of 256 k outermost, so a block of x stays in L2 while the panels pass over it;
// then blocks of 96 rows, so a panel group's slice stays in cache across them; then panel groups; then tiles of 6
// rows. The panels must be 64-byte aligned (linear_prepacked copies any that are not).
#include <cstdint>

namespace wmk::linear::cpu {

constexpr int64_t kPanelWidth = 16;

// Whether the AVX2+FMA (AVX-512F) kernel was compiled in and this CPU runs it.
bool avx2_usable();
bool avx512_usable();

// c[r][n] = sum_k a[r][k] * panels(n, k) (+ bias[n]) for rows [0, rows) and output features of panels
// [panel_begin, panel_end) (the last panel may be partial: n < n_total). a: rows of `k` floats, row stride lda;
// c: row stride ldc. bias may be null.
void packed_gemm_avx2(const float* a, int64_t lda, int64_t rows, int64_t k, const float* panels, int64_t n_total,
                      int64_t panel_begin, int64_t panel_end, const float* bias, float* c, int64_t ldc);
// The same with AVX-512F, bitwise the same results.
void packed_gemm_avx512(const float* a, int64_t lda, int64_t rows, int64_t k, const float* panels, int64_t n_total,
                        int64_t panel_begin, int64_t panel_end, const float* bias, float* c, int64_t ldc);

}  // namespace wmk::linear::cpu
