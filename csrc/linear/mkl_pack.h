#pragma once
// Linear products through MKL's packed-weight sgemm (cblas_sgemm_pack / cblas_sgemm_compute), where torch was built
// with MKL: its libtorch_cpu.so exports that API. The symbols are declared weak, so the extension loads without them,
// and available() checks the whole path against at::linear once before anything uses it.
//
// Why. At every call MKL's plain sgemm copies the weight into its panel layout before multiplying. The frame
// sampler's passes multiply 256 or 512 rows by every weight of the model, and there that copy (and the weight's trip
// from memory it waits on) is a visible share of each product. Packed once, it is gone. Over GENIE-35M's 192 products
// with the weights cycled through memory, 2 threads, Intel Xeon (AVX-512), against at::linear: 1.10x at 256 rows and
// 1.03x at 512; at 2,304 and 4,096 rows it is 0.99x and 0.98x (the copy is amortised there, and the packed path
// copies the bias into the output first). So the packed weight serves kMklMinRows .. kMklMaxRows rows, and
// at::linear (MKL's plain sgemm) every other count.
//
// MKL lays the packed weight out for the row count given when packing (kPackRows): every row count gives the same
// results with it, but far from that count the product is slower (a weight packed for 1,024 rows took twice as long
// at 256). 256 is the one-frame pass; at 512 rows a weight packed for 256 is as fast as one packed for 512, so one
// packed copy serves both kinds of pass.
//
// Results. It is MKL's own kernel: at in_features = 256 its rows came out bitwise at::linear's on that Xeon; at 1,024
// they differ by ulps (another blocking of k). Below 64 rows MKL's plain sgemm takes paths of its own (more accurate
// for few rows), and at 1 row the packed compute gave wrong results in a trial: hence the lower bound.
//
// The packed tensor: 1-D uint8, a 64-byte header (magic, out_features, in_features, MKL's byte count, the buffer's
// address) and then MKL's buffer. MKL's packing is valid only at the address it was written to (a copy gave garbage
// in a trial), so a copy of the tensor (clone, torch.save and load) is detected by the address and the product falls
// back to at::linear. MKL asks for a few MiB of address space per weight more than the weight's size, but the pages
// it writes (the only ones resident) hold about the weight's bytes.
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace wmk::linear::mkl {

constexpr int64_t kMklMinRows = 64;
constexpr int64_t kMklMaxRows = 1024;
constexpr int64_t kPackRows = 256;
constexpr int64_t kHeaderBytes = 64;

// Whether this torch exports MKL's packed API (no computation: safe before a fork).
bool exported();
// Whether it is exported and passed the check against at::linear (run once, on first call: that runs MKL and
// torch's threads, so it is not for a process that forks workers afterwards, such as a forkserver at import).
bool available();
// The byte count of pack_linear_weight_mkl's output for an (n, k) weight, header included (0 where unavailable).
int64_t packed_bytes(int64_t n, int64_t k);
// Whether `packed` is a 1-D uint8 CPU tensor starting with this header (not yet checked against a weight).
bool is_mkl_pack(const at::Tensor& packed);
// x @ W^T + bias through the packed weight, or nullopt where the rule (rows, dtype, device, availability, a copied
// packing) leaves the product to at::linear. Raises ValueError, naming `op`, where `packed` does not belong to a
// weight (n, k).
std::optional<at::Tensor> linear(const char* op, const at::Tensor& x, int64_t n, int64_t k,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& packed);
// The same product written into `out`, a (rows, n) float32 CPU view with unit column stride (rows of a larger
// buffer); false, with nothing written, where linear would return nullopt or out does not fit.
bool linear_into(const char* op, const at::Tensor& x, int64_t n, int64_t k, const std::optional<at::Tensor>& bias,
                 const at::Tensor& packed, at::Tensor& out);

}  // namespace wmk::linear::mkl
