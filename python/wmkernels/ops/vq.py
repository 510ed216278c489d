"""vq_encode / vq_decode: nearest-code vector quantization over a codebook.

Contract (every backend; see wmkernels.reference.vq for the definitions):

- `vq_encode(x, codebook, metric)` finds, for each row of x, the code of lowest score without forming
  the N x K distance matrix. Exact ties go to the lowest index. It returns int64 `indices` and float32
  `distances`: the squared L2 distance to the chosen code (metric "l2") or 1 - cosine similarity
  ("cosine"), computed in fp32. A row holding a NaN gets index 0 and a NaN distance; a code holding a
  NaN is never chosen (unless every code's score is NaN, which again gives index 0). vq_encode is not
  differentiable: its outputs never require grad (gradients reach the codebook through vq_decode).
- `vq_decode(indices, codebook)` gathers codebook rows; its backward accumulates into the codebook's
  gradient. An index outside [0, K) raises IndexError (on CPU and CUDA alike).
"""
from __future__ import annotations

import torch

from wmkernels import reference
from wmkernels.ops import _backend
from wmkernels.ops._checks import check_index_tensor, check_tensor

METRICS = ("l2", "cosine")
_ENCODE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_codebook(codebook, op: str) -> None:
    check_tensor(codebook, "codebook")
    if codebook.dim() != 2:
        raise ValueError(f"{op}: codebook must be 2-d (K, D), got shape {tuple(codebook.shape)}")
    if codebook.shape[0] < 1 or codebook.shape[1] < 1:
        raise ValueError(f"{op}: codebook must hold at least one code of at least one dimension, got an empty "
                         f"codebook of shape {tuple(codebook.shape)}")
    if not codebook.dtype.is_floating_point:
        raise TypeError(f"{op}: codebook must be a floating-point tensor, got {codebook.dtype}")


def _check_encode(x, codebook, metric) -> None:
    check_tensor(x, "x")
    if x.dtype not in _ENCODE_DTYPES:
        raise TypeError(f"vq_encode: x must be a float32, float16 or bfloat16 tensor, got {x.dtype}")
    _check_codebook(codebook, "vq_encode")
    if codebook.dtype != x.dtype:
        raise TypeError(f"vq_encode: codebook must have the dtype of x ({x.dtype}), got {codebook.dtype}")
    if x.dim() < 1:
        raise ValueError("vq_encode: x must have a last dimension D, got a 0-d tensor")
    if x.shape[-1] != codebook.shape[1]:
        raise ValueError(f"vq_encode: the last dimension of x ({x.shape[-1]}) must equal the code dimension D of "
                         f"codebook {tuple(codebook.shape)}")
    if metric not in METRICS:
        raise ValueError(f"vq_encode: metric must be 'l2' or 'cosine', got {metric!r}")


def vq_encode(
    x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of each row of x.

    x: (..., D) float32/float16/bfloat16; codebook: (K, D), same dtype; metric: "l2" or "cosine".
    Returns (indices int64 (...), distances float32 (...)); see the module docstring for their meaning.
    """
    _check_encode(x, codebook, metric)
    x, codebook = x.detach(), codebook.detach()
    impl = _backend.select(backend, x.device, "vq_encode")
    if impl == "reference":
        indices, distances = reference.vq_encode(x.float(), codebook.float(), metric)
        return indices, distances.float()
    if impl == "triton":
        from wmkernels.triton import vq as triton_vq

        return triton_vq.vq_encode(x, codebook, metric)
    return torch.ops.wmk.vq_encode(x, codebook, metric)


def vq_decode(indices: torch.Tensor, codebook: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Codes of `indices`: codebook[indices], differentiable with respect to the codebook.

    indices: (...) int32/int64 in [0, K); codebook: (K, D) floating point. Returns (..., D) in the
    codebook's dtype. Raises IndexError on an index outside [0, K).
    """
    check_index_tensor(indices, "indices")
    _check_codebook(codebook, "vq_decode")
    impl = _backend.select(backend, codebook.device, "vq_decode")
    if impl == "reference":
        return reference.vq_decode(indices, codebook)
    if impl == "triton":
        return _TritonDecode.apply(indices, codebook)
    return torch.ops.wmk.vq_decode(indices, codebook)


def _codebook_grad(grad: torch.Tensor, indices: torch.Tensor, codebook_shape, dtype) -> torch.Tensor:
    """Scatter-add the gradient of each decoded row (..., D) into a (K, D) codebook gradient."""
    dim = codebook_shape[1]
    out = torch.zeros(codebook_shape, dtype=dtype, device=grad.device)
    return out.index_add_(0, indices.reshape(-1).long(), grad.reshape(-1, dim).to(dtype))


class _TritonDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, indices, codebook):
        from wmkernels.triton import vq as triton_vq

        ctx.save_for_backward(indices)
        ctx.codebook_shape, ctx.codebook_dtype = codebook.shape, codebook.dtype
        return triton_vq.vq_decode(indices, codebook)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return None, _codebook_grad(grad, indices, ctx.codebook_shape, ctx.codebook_dtype)


@torch.library.register_fake("wmk::vq_encode")
def _vq_encode_fake(x, codebook, metric="l2"):
    torch._check(x.dtype in _ENCODE_DTYPES, lambda: f"vq_encode: x must be float32/float16/bfloat16, got {x.dtype}")
    torch._check(codebook.dtype == x.dtype, lambda: "vq_encode: codebook must have the dtype of x")
    torch._check(codebook.dim() == 2 and x.dim() >= 1, lambda: "vq_encode: x (..., D) and codebook (K, D)")
    torch._check(x.shape[-1] == codebook.shape[1], lambda: "vq_encode: D of x and codebook differ")
    shape = x.shape[:-1]
    return x.new_empty(shape, dtype=torch.int64), x.new_empty(shape, dtype=torch.float32)


@torch.library.register_fake("wmk::vq_decode")
def _vq_decode_fake(indices, codebook):
    torch._check(indices.dtype in (torch.int32, torch.int64), lambda: "vq_decode: indices must be int32 or int64")
    torch._check(codebook.dim() == 2, lambda: "vq_decode: codebook must be 2-d (K, D)")
    return codebook.new_empty((*indices.shape, codebook.shape[1]))


def _decode_setup_context(ctx, inputs, output):
    indices, codebook = inputs
    ctx.save_for_backward(indices)
    ctx.codebook_shape, ctx.codebook_dtype = codebook.shape, codebook.dtype


def _decode_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    return None, _codebook_grad(grad, indices, ctx.codebook_shape, ctx.codebook_dtype)


torch.library.register_autograd("wmk::vq_decode", _decode_backward, setup_context=_decode_setup_context)
