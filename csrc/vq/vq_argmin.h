#pragma once
// The CPU nearest-code search, split by instruction set. This header and the per-ISA files
// (vq_argmin_{avx2,avx512}_cpu.cpp) include no torch and no standard-library templates: those files are
// compiled with -mavx2/-mavx512f, and an inline function instantiated there could be merged by the
// linker into code that runs on CPUs without those instructions.
//
// Layout. The codebook is packed once per call into panels of `nr` codes: panel p holds, for each
// d in [0, D), the values -2 * c[p*nr + j][d] for j in [0, nr) (contiguous), so the micro-kernel
// broadcasts one value per FMA. bias[p*nr + j] = |c|^2 (l2) or 0 (cosine); padding codes get +inf so
// they never win. The rows of x are passed as fp32, row-major, already normalised for cosine.
//
// Every (row, code) score is computed as bias, then fma(x_d, -2 c_d, acc) for d = 0, 1, ..., D-1, on
// every path (scalar, AVX2, AVX-512), so all paths give bit-identical scores and indices.
#include <cstdint>

namespace wmk::vq::cpu {

struct PackedCodebook {
  const float* panels;  // [num_panels][dim][nr]
  const float* bias;    // [num_panels * nr]
  int64_t num_panels;
  int64_t dim;
  int nr;  // codes per panel
};

// Searches rows [0, num_rows) of x (fp32 [num_rows][dim], row stride `x_stride`) for the code of lowest
// score. Writes best_index[r] (code index) and best_score[r]. `scratch` holds at least
// scratch_floats(num_rows, dim) floats, 64-byte aligned.
using SearchFn = void (*)(const float* x, int64_t x_stride, int64_t num_rows, const PackedCodebook& cb,
                          float* scratch, int32_t* best_index, float* best_score);

struct Isa {
  const char* name;
  int nr;      // codes per panel this ISA's micro-kernel wants
  int mr;      // rows per micro-tile
  SearchFn search;
};

// Each returns false (and leaves `out` alone) when its instruction set was not compiled in.
bool avx2_isa(Isa* out);
bool avx512_isa(Isa* out);
void scalar_isa(Isa* out);

// Floats of scratch a search over `num_rows` rows needs for a micro-tile height `mr`.
inline int64_t scratch_floats(int64_t num_rows, int64_t dim, int mr) {
  const int64_t tiles = (num_rows + mr - 1) / mr;
  return tiles * mr * dim + 2 * tiles * mr + 64;
}

}  // namespace wmk::vq::cpu
