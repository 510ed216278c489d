// wmk::pack_linear_weight_mkl and the MKL path of wmk::linear_prepacked (see mkl_pack.h).
#include "linear/mkl_pack.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

// MKL's packed-GEMM API, its CBLAS enums as ints and MKL_INT as int (torch links MKL's LP64 interface; available()
// checks results before anything relies on this). Weak: null where this torch has no MKL.
extern "C" {
__attribute__((weak)) size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k);
__attribute__((weak)) void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                                            const float* src, int ld, float* dest);
__attribute__((weak)) void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k,
                                               const float* a, int lda, const float* b, int ldb, float beta, float* c,
                                               int ldc);
}

namespace wmk::linear::mkl {
namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;
constexpr char kMagic[8] = {'W', 'M', 'K', 'M', 'K', 'L', 'P', '1'};

struct Header {
  char magic[8];
  int64_t n, k, bytes;
  std::uintptr_t address;  // where MKL's buffer was written: MKL's packing is only valid there
};
static_assert(sizeof(Header) <= kHeaderBytes, "the header must fit its 64 bytes");

// The header of a 1-D uint8 tensor of at least kHeaderBytes (read in place when its bytes are contiguous).
Header header_of(const at::Tensor& packed) {
  const at::Tensor head = packed.stride(0) == 1 ? packed : packed.narrow(0, 0, kHeaderBytes).contiguous();
  Header h;
  std::memcpy(&h, head.data_ptr<uint8_t>(), sizeof(Header));
  return h;
}

bool symbols_present() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

bool fits_int(int64_t v) { return v >= 0 && v <= INT32_MAX; }

at::Tensor pack_unchecked(const at::Tensor& weight) {
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t bytes = static_cast<int64_t>(cblas_sgemm_pack_get_size(kBMatrix, kPackRows, n, k));
  at::Tensor packed = at::empty({kHeaderBytes + bytes}, weight.options().dtype(at::kByte));
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.n = n;
  h.k = k;
  h.bytes = bytes;
  h.address = reinterpret_cast<std::uintptr_t>(packed.data_ptr<uint8_t>() + kHeaderBytes);
  std::memset(packed.data_ptr<uint8_t>(), 0, kHeaderBytes);
  std::memcpy(packed.data_ptr<uint8_t>(), &h, sizeof(Header));
  float* dest = reinterpret_cast<float*>(packed.data_ptr<uint8_t>() + kHeaderBytes);
  // B = W^T (k, n). A row-major W is B transposed; a column-major W (strides (1, >= n), as the GENIE layers store
  // it) is B itself, row-major. Anything else is made contiguous first.
  at::Tensor w = weight;
  const bool row_major = w.stride(1) == 1 && w.stride(0) >= k;
  const bool column_major = !row_major && w.stride(0) == 1 && w.stride(1) >= n;
  if (!row_major && !column_major) w = w.contiguous();
  if (column_major) {
    cblas_sgemm_pack(kRowMajor, kBMatrix, kNoTrans, kPackRows, n, k, 1.0f, w.data_ptr<float>(),
                     static_cast<int>(w.stride(1)), dest);
  } else {
    cblas_sgemm_pack(kRowMajor, kBMatrix, kTrans, kPackRows, n, k, 1.0f, w.data_ptr<float>(),
                     static_cast<int>(w.stride(0)), dest);
  }
  return packed;
}

// out (rows, n) = a @ B + bias, into rows whose stride is out.stride(0) (its stride(1) is 1).
void compute_into(const at::Tensor& a, int64_t n, int64_t k, const at::Tensor& bias, const at::Tensor& packed,
                  at::Tensor& out) {
  const int64_t rows = a.size(0), ldc = out.stride(0);
  float* c = out.data_ptr<float>();
  if (bias.defined()) {  // MKL adds beta * C: C starts as the bias on every row, as at::addmm does
    const float* b = bias.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) std::memcpy(c + r * ldc, b, sizeof(float) * n);
    });
  }
  const float* buffer = reinterpret_cast<const float*>(packed.data_ptr<uint8_t>() + kHeaderBytes);
  cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, static_cast<int>(rows), static_cast<int>(n),
                      static_cast<int>(k), a.data_ptr<float>(), static_cast<int>(a.stride(0)), buffer,
                      static_cast<int>(k), bias.defined() ? 1.0f : 0.0f, c, static_cast<int>(ldc));
}

at::Tensor compute_unchecked(const at::Tensor& a, int64_t n, int64_t k, const at::Tensor& bias,
                             const at::Tensor& packed) {
  at::Tensor out = at::empty({a.size(0), n}, a.options());
  compute_into(a, n, k, bias, packed, out);
  return out;
}

// One check of the whole path against at::linear (odd sizes, both weight orders, with and without a bias): it
// catches an MKL whose integer width or enum values are not the ones declared above.
bool self_check() {
  if (!symbols_present()) return false;
  try {
    at::NoGradGuard no_grad;
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor a = at::linspace(-1.0, 1.0, kMklMinRows * 37, opts).reshape({kMklMinRows, 37}).sin();
    const at::Tensor w = at::linspace(-2.0, 2.0, 21 * 37, opts).reshape({21, 37}).cos();
    const at::Tensor bias = at::linspace(-0.5, 0.5, 21, opts);
    const at::Tensor want = at::linear(a, w, bias), want_nobias = at::linear(a, w);
    for (const at::Tensor& weight : {w, w.t().contiguous().t()}) {
      const at::Tensor packed = pack_unchecked(weight);
      if (!at::allclose(compute_unchecked(a, 21, 37, bias, packed), want, 1e-5, 1e-5)) return false;
      if (!at::allclose(compute_unchecked(a, 21, 37, at::Tensor(), packed), want_nobias, 1e-5, 1e-5)) return false;
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

at::Tensor pack_linear_weight_mkl(const at::Tensor& weight) {
  const char* op = "pack_linear_weight_mkl";
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be (out_features, in_features), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == at::kFloat, op, ": weight must be float32, got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device().is_cpu(), op, ": weight must be on the CPU, got ", weight.device());
  TORCH_CHECK_VALUE(weight.size(0) >= 1 && weight.size(1) >= 1 && fits_int(weight.size(0)) && fits_int(weight.size(1)),
                    op, ": weight must have 1 to 2^31 - 1 rows and columns, got shape ", weight.sizes());
  TORCH_CHECK(available(), op, ": this torch has no usable MKL packed sgemm (x86-64 builds with MKL have it); use "
              "pack_linear_weight or torch.nn.functional.linear");
  return pack_unchecked(weight);
}

}  // namespace

bool exported() { return symbols_present(); }

bool available() {
  static const bool ok = self_check();
  return ok;
}

int64_t packed_bytes(int64_t n, int64_t k) {
  if (!symbols_present() || !fits_int(n) || !fits_int(k)) return 0;
  return kHeaderBytes + static_cast<int64_t>(cblas_sgemm_pack_get_size(kBMatrix, kPackRows, static_cast<int>(n),
                                                                       static_cast<int>(k)));
}

bool is_mkl_pack(const at::Tensor& packed) {
  if (packed.dim() != 1 || packed.scalar_type() != at::kByte || packed.numel() < kHeaderBytes ||
      !packed.device().is_cpu()) {
    return false;
  }
  return std::memcmp(header_of(packed).magic, kMagic, sizeof(kMagic)) == 0;
}

namespace {

// The rule shared by linear and linear_into: x as MKL's A (rows, k) (made contiguous where its rows are not) and the
// bias contiguous (undefined without one), or nullopt where the product is left to at::linear, which also raises
// where x or the bias does not fit the weight. Raises where `packed` does not belong to a weight (n, k).
struct Operands {
  at::Tensor a, bias;
};
std::optional<Operands> operands(const char* op, const at::Tensor& x, int64_t n, int64_t k,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& packed) {
  const Header h = header_of(packed);
  TORCH_CHECK_VALUE(h.n == n && h.k == k, op, ": packed is pack_linear_weight_mkl of a (", h.n, ", ", h.k,
                    ") weight, but weight is (", n, ", ", k, ")");
  TORCH_CHECK_VALUE(h.bytes >= 0 && packed.numel() == kHeaderBytes + h.bytes, op, ": packed holds ", packed.numel(),
                    " bytes, expected ", kHeaderBytes + h.bytes, " (pack_linear_weight_mkl's output, unmodified)");
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || k < 1 || n < 1 || x.dim() < 1 || x.size(-1) != k ||
      (bias.has_value() && (bias->scalar_type() != at::kFloat || bias->dim() != 1 || bias->size(0) != n ||
                            !bias->device().is_cpu()))) {
    return std::nullopt;
  }
  const int64_t rows = x.numel() / k;
  if (rows < kMklMinRows || rows > kMklMaxRows || !available()) return std::nullopt;
  // MKL's packed buffer is tied to the address it was written at: a copy of it (clone, torch.save and load, a move
  // between processes) holds wrong data for MKL (garbage results, or a crash, in a trial). Such a copy is refused
  // here, and the product left to at::linear: correct, without the saving.
  if (!packed.is_contiguous() ||
      h.address != reinterpret_cast<std::uintptr_t>(packed.data_ptr<uint8_t>() + kHeaderBytes)) {
    return std::nullopt;
  }
  at::Tensor a = x.reshape({rows, k});
  if (a.stride(1) != 1 || a.stride(0) < k || !fits_int(a.stride(0))) a = a.contiguous();
  return Operands{a, bias.has_value() ? bias->contiguous() : at::Tensor()};
}

}  // namespace

std::optional<at::Tensor> linear(const char* op, const at::Tensor& x, int64_t n, int64_t k,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& packed) {
  const std::optional<Operands> ops = operands(op, x, n, k, bias, packed);
  if (!ops.has_value()) return std::nullopt;
  at::Tensor out = compute_unchecked(ops->a, n, k, ops->bias, packed);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return out.view(shape);
}

bool linear_into(const char* op, const at::Tensor& x, int64_t n, int64_t k, const std::optional<at::Tensor>& bias,
                 const at::Tensor& packed, at::Tensor& out) {
  if (!out.device().is_cpu() || out.scalar_type() != at::kFloat || out.dim() != 2 || out.size(1) != n ||
      out.stride(1) != 1 || out.stride(0) < n || !fits_int(out.stride(0)) || out.size(0) * k != x.numel()) {
    return false;
  }
  const std::optional<Operands> ops = operands(op, x, n, k, bias, packed);
  if (!ops.has_value()) return false;  // the caller's fallback (linear_prepacked) raises where an argument is wrong
  compute_into(ops->a, n, k, ops->bias, packed, out);
  return true;
}

TORCH_LIBRARY_IMPL(wmk, CPU, m) { m.impl("pack_linear_weight_mkl", &pack_linear_weight_mkl); }
#ifdef WMK_WITH_CUDA
// MKL's packing is for CPU products: a CUDA weight gets the op's error naming its device.
TORCH_LIBRARY_IMPL(wmk, CUDA, m) { m.impl("pack_linear_weight_mkl", &pack_linear_weight_mkl); }
#endif

}  // namespace wmk::linear::mkl
