#pragma once
// Which instruction set a CPU kernel family runs: the widest this CPU and build have, or the one an environment
// variable names ($WMK_ATTN_ISA, $WMK_VQ_ISA, $WMK_LINEAR_ISA), for tests and benchmarks. Naming one that is missing
// is an error rather than a silent fallback. Host code only (torch's error macros).
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace wmk {

enum class CpuIsa { kFallback, kAvx2, kAvx512 };

// env: the variable's name. fallback: the name of the family's non-SIMD path ("portable", "scalar"), or null where it
// has none (kFallback then means: no kernel here). noun: what the error says is missing ("kernels", "packed kernel").
inline CpuIsa choose_cpu_isa(const char* env, const char* fallback, bool has_avx2, bool has_avx512,
                             const char* noun) {
  const char* forced = std::getenv(env);
  if (forced != nullptr && *forced != '\0') {
    const std::string name(forced);
    if (fallback != nullptr && name == fallback) return CpuIsa::kFallback;
    if (name == "avx2") {
      TORCH_CHECK(has_avx2, env, "=avx2 but this CPU or build has no AVX2+FMA ", noun);
      return CpuIsa::kAvx2;
    }
    TORCH_CHECK_VALUE(name == "avx512", env, " must be ", fallback != nullptr ? std::string(fallback) + ", " : "",
                      "avx2 or avx512, got '", name, "'");
    TORCH_CHECK(has_avx512, env, "=avx512 but this CPU or build has no AVX-512 ", noun);
    return CpuIsa::kAvx512;
  }
  return has_avx512 ? CpuIsa::kAvx512 : (has_avx2 ? CpuIsa::kAvx2 : CpuIsa::kFallback);
}

}  // namespace wmk
