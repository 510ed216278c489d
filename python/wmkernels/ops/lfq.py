"""Lookup-free quantization (LFQ) ops: encode / decode between latents and indices, and the exact entropy loss.

lfq_encode(x, bit_order) -> indices        x: (..., bits) float, bits in [1, 30]; indices (...) int64
lfq_decode(indices, bits, bit_order)       -> codes (..., bits) in {-1, +1}
lfq_entropy_loss(x, inv_temperature, diversity_gamma) -> 0-d loss, differentiable in x

bit_order: "lsb" (default) makes channel j bit j of the index, as in the 1X World Model tokens;
"msb" makes channel 0 the most significant bit, as MAGVIT2 and vector-quantize-pytorch's LFQ do.

NaN: lfq_encode treats a NaN channel as not > 0 (bit 0, code -1), as `x > 0` does in vector-quantize-pytorch;
lfq_entropy_loss of an x holding a NaN is NaN (and so is its gradient).
"""
from __future__ import annotations

import torch

from wmkernels.ops import _backend
from wmkernels.ops._checks import check_index_tensor, check_int, check_tensor
from wmkernels.reference import lfq as reference

MAX_BITS = 30
MAX_ENTROPY_BITS = 24
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_x(x, op: str, max_bits: int) -> int:
    check_tensor(x, "x")
    if x.dtype not in _FLOATS:
        raise TypeError(
            f"{op}: x must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}"
        )
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have a last dimension holding the bits, got a 0-d tensor")
    bits = x.shape[-1]
    if not 1 <= bits <= max_bits:
        raise ValueError(f"{op}: the number of bits (x.shape[-1]) must lie in [1, {max_bits}], got {bits}")
    return bits


def _check_bit_order(bit_order) -> str:
    if bit_order not in ("lsb", "msb"):
        raise ValueError(f"bit_order must be 'lsb' or 'msb', got {bit_order!r}")
    return bit_order


def lfq_encode(x: torch.Tensor, bit_order: str = "lsb", *, backend: str | None = None) -> torch.Tensor:
    """Indices of the LFQ codes of x: bit of channel j set where x[..., j] > 0.

    x: (..., bits) float16/bfloat16/float32/float64, 1 <= bits <= 30. Returns (...) int64 in [0, 2^bits).
    """
    _check_x(x, "lfq_encode", MAX_BITS)
    _check_bit_order(bit_order)
    impl = _backend.select(backend, x.device, "lfq_encode")
    if impl == "reference":
        return reference.lfq_encode(x, bit_order)
    if impl == "triton":
        from wmkernels.triton import lfq as triton_lfq

        return triton_lfq.lfq_encode(x, bit_order)
    return torch.ops.wmk.lfq_encode(x, bit_order)


def lfq_decode(
    indices: torch.Tensor,
    bits: int,
    bit_order: str = "lsb",
    *,
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """Codes in {-1, +1} of LFQ indices. indices: (...) int32/int64 in [0, 2^bits) -> (..., bits) of `dtype`.

    Raises IndexError on an index outside [0, 2^bits).
    """
    check_index_tensor(indices, "indices")
    check_int(bits, "bits", 1)
    if bits > MAX_BITS:
        raise ValueError(f"lfq_decode: bits must lie in [1, {MAX_BITS}], got {bits}")
    _check_bit_order(bit_order)
    if dtype not in _FLOATS:
        raise TypeError(f"lfq_decode: dtype must be a floating-point type, got {dtype}")
    impl = _backend.select(backend, indices.device, "lfq_decode")
    if impl == "reference":
        return reference.lfq_decode(indices, bits, bit_order, dtype)
    if impl == "triton":
        from wmkernels.triton import lfq as triton_lfq

        return triton_lfq.lfq_decode(indices, bits, bit_order, dtype)
    return torch.ops.wmk.lfq_decode(indices, bits, bit_order, dtype)


def lfq_entropy_loss(
    x: torch.Tensor, inv_temperature: float = 100.0, diversity_gamma: float = 1.0, *, backend: str | None = None
) -> torch.Tensor:
    """The LFQ auxiliary entropy loss, exact, in O(2^bits) memory (never the N x 2^bits probabilities).

    x: (..., bits), bits <= 24; every leading position is one sample (N of them). A sample's distribution
    over the 2^bits codes c is softmax(2 * inv_temperature * <x, c>) (vector-quantize-pytorch's logits), which
    factorizes into independent bits with P(bit j) = sigmoid(4 * inv_temperature * x_j). Returns the 0-d
    mean_n H(p_n) - diversity_gamma * H(mean_n p_n) (entropies in nats, 0 log 0 = 0) in x's dtype;
    the kernels accumulate in float32 (float64 for float64 x). An empty batch gives 0. Differentiable in x.
    vector-quantize-pytorch clamps probabilities at 1e-5 inside its logarithms; this loss does not, so the
    two differ by about 1e-5.
    """
    _check_x(x, "lfq_entropy_loss", MAX_ENTROPY_BITS)
    if isinstance(inv_temperature, bool) or not isinstance(inv_temperature, (int, float)) or not (
        0 < float(inv_temperature) < float("inf")
    ):
        raise ValueError(f"lfq_entropy_loss: inv_temperature must be a finite number > 0, got {inv_temperature!r}")
    if isinstance(diversity_gamma, bool) or not isinstance(diversity_gamma, (int, float)) or not (
        abs(float(diversity_gamma)) < float("inf")
    ):
        raise ValueError(f"lfq_entropy_loss: diversity_gamma must be a finite number, got {diversity_gamma!r}")
    impl = _backend.select(backend, x.device, "lfq_entropy_loss")
    if impl == "reference":
        return reference.lfq_entropy_loss(x, float(inv_temperature), float(diversity_gamma))
    if impl == "triton":
        return _TritonEntropyLoss.apply(x, float(inv_temperature), float(diversity_gamma))
    return torch.ops.wmk.lfq_entropy_loss(x, float(inv_temperature), float(diversity_gamma))[0]


class _TritonEntropyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, inv_temperature, diversity_gamma):
        from wmkernels.triton import lfq as triton_lfq

        loss, avg_prob = triton_lfq.lfq_entropy_loss(x, inv_temperature, diversity_gamma)
        ctx.save_for_backward(x, avg_prob)
        ctx.args = (inv_temperature, diversity_gamma)
        return loss

    @staticmethod
    def backward(ctx, grad):
        from wmkernels.triton import lfq as triton_lfq

        x, avg_prob = ctx.saved_tensors
        return triton_lfq.lfq_entropy_loss_backward(grad, x, avg_prob, *ctx.args), None, None


# --- fake kernels (torch.compile, export) and autograd -------------------------------------------


@torch.library.register_fake("wmk::lfq_encode")
def _lfq_encode_fake(x, bit_order="lsb"):
    _check_x(x, "lfq_encode", MAX_BITS)
    return x.new_empty(x.shape[:-1], dtype=torch.int64)


@torch.library.register_fake("wmk::lfq_decode")
def _lfq_decode_fake(indices, bits, bit_order="lsb", dtype=None):
    check_index_tensor(indices, "indices")
    return indices.new_empty((*indices.shape, bits), dtype=dtype or torch.float32)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("wmk::lfq_entropy_loss")
def _lfq_entropy_loss_fake(x, inv_temperature=100.0, diversity_gamma=1.0):
    bits = _check_x(x, "lfq_entropy_loss", MAX_ENTROPY_BITS)
    return x.new_empty(()), x.new_empty((2**bits,), dtype=_acc_dtype(x))


@torch.library.register_fake("wmk::lfq_entropy_loss_backward")
def _lfq_entropy_loss_backward_fake(grad, x, avg_prob, inv_temperature, diversity_gamma):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _entropy_setup_context(ctx, inputs, output):
    x, inv_temperature, diversity_gamma = inputs
    ctx.save_for_backward(x, output[1])
    ctx.args = (inv_temperature, diversity_gamma)


def _entropy_backward(ctx, grad_loss, grad_avg_prob):
    # avg_prob is a by-product saved for the backward; it is not differentiable (its gradient is ignored).
    x, avg_prob = ctx.saved_tensors
    return torch.ops.wmk.lfq_entropy_loss_backward(grad_loss, x, avg_prob, *ctx.args), None, None


torch.library.register_autograd("wmk::lfq_entropy_loss", _entropy_backward, setup_context=_entropy_setup_context)
