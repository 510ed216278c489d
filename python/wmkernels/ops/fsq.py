"""Finite scalar quantization (FSQ) ops, with vector-quantize-pytorch's FSQ conventions.

fsq_quantize(z, levels) -> (codes, indices)   z: (..., len(levels)) float; codes like z, indices (...) int64
fsq_decode(indices, levels) -> codes          indices in [0, prod(levels)) -> (..., len(levels))

Per dimension with L levels: bounded = tanh(z + shift) * half_l - offset (half_l = (L - 1)(1 + 1e-3) / 2,
offset = 0.5 for even L, shift = atanh(offset / half_l)), r = round(bounded) (half to even), code = r / (L // 2),
index = sum_j (r_j + L_j // 2) * prod_{i<j} L_i (the first dimension least significant). The gradient of
the codes goes straight through the rounding but through the tanh bound. The kernels compute in float32
(float64 for float64 z on the C++ path). Any level >= 2 (a level of 2 gives the codes {-1, 0}).

NaN: a NaN component gives a NaN code (and NaN gradient), and its vector gets the index -1, which
fsq_decode rejects.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from wmkernels.ops import _backend
from wmkernels.ops._checks import check_index_tensor, check_tensor
from wmkernels.reference import fsq as reference

MAX_DIMS = 32
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_levels(levels, op: str) -> list[int]:
    """levels as a list of ints >= 2 whose product fits in 2^62, or a ValueError/TypeError naming the problem."""
    if isinstance(levels, torch.Tensor):
        levels = levels.tolist()
    if not isinstance(levels, Sequence) or isinstance(levels, str):
        raise TypeError(f"{op}: levels must be a sequence of ints, got {type(levels).__name__}")
    levels = list(levels)
    if not 1 <= len(levels) <= MAX_DIMS:
        raise ValueError(f"{op}: levels must hold between 1 and {MAX_DIMS} entries, got {len(levels)}")
    size = 1
    for j, v in enumerate(levels):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{op}: levels must be ints, got levels[{j}] = {v!r}")
        if v < 2:
            raise ValueError(f"{op}: every level must be at least 2, got levels[{j}] = {v}")
        size *= v
        if size > 2**62:
            raise ValueError(f"{op}: the codebook size prod(levels) exceeds 2^62 at levels[{j}]")
    return levels


def _check_z(z, levels: list[int], op: str) -> None:
    check_tensor(z, "z")
    if z.dtype not in _FLOATS:
        raise TypeError(
            f"{op}: z must be a floating-point tensor (float16, bfloat16, float32 or float64), got {z.dtype}"
        )
    if z.dim() == 0 or z.shape[-1] != len(levels):
        raise ValueError(
            f"{op}: z must have a last dimension of len(levels) = {len(levels)}, got shape {tuple(z.shape)}"
        )


def fsq_quantize(
    z: torch.Tensor, levels: Sequence[int], *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize z to the FSQ grid. z: (..., len(levels)) -> (codes like z, indices (...) int64).

    Differentiable in z through the codes (straight-through rounding inside the tanh bound).
    """
    levels = check_levels(levels, "fsq_quantize")
    _check_z(z, levels, "fsq_quantize")
    impl = _backend.select(backend, z.device, "fsq_quantize")
    if impl == "reference":
        return reference.fsq_quantize(z, levels)
    if impl == "triton":
        return _TritonQuantize.apply(z, levels)
    return torch.ops.wmk.fsq_quantize(z, levels)


def fsq_decode(
    indices: torch.Tensor, levels: Sequence[int], *, dtype: torch.dtype = torch.float32, backend: str | None = None
) -> torch.Tensor:
    """Codes of FSQ indices. indices: (...) int32/int64 in [0, prod(levels)) -> (..., len(levels)) of `dtype`.

    Raises IndexError on an index outside [0, prod(levels)).
    """
    levels = check_levels(levels, "fsq_decode")
    check_index_tensor(indices, "indices")
    if dtype not in _FLOATS:
        raise TypeError(f"fsq_decode: dtype must be a floating-point type, got {dtype}")
    impl = _backend.select(backend, indices.device, "fsq_decode")
    if impl == "reference":
        return reference.fsq_decode(indices, levels, dtype)
    if impl == "triton":
        from wmkernels.triton import fsq as triton_fsq

        return triton_fsq.fsq_decode(indices, levels, dtype)
    return torch.ops.wmk.fsq_decode(indices, levels, dtype)


class _TritonQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, levels):
        from wmkernels.triton import fsq as triton_fsq

        codes, indices = triton_fsq.fsq_quantize(z, levels)
        ctx.save_for_backward(z)
        ctx.levels = levels
        ctx.mark_non_differentiable(indices)
        return codes, indices

    @staticmethod
    def backward(ctx, grad_codes, grad_indices):
        from wmkernels.triton import fsq as triton_fsq

        (z,) = ctx.saved_tensors
        return triton_fsq.fsq_quantize_backward(grad_codes, z, ctx.levels), None


# --- fake kernels (torch.compile, export) and autograd -------------------------------------------


@torch.library.register_fake("wmk::fsq_quantize")
def _fsq_quantize_fake(z, levels):
    levels = check_levels(levels, "fsq_quantize")
    _check_z(z, levels, "fsq_quantize")
    return torch.empty_like(z, memory_format=torch.contiguous_format), z.new_empty(z.shape[:-1], dtype=torch.int64)


@torch.library.register_fake("wmk::fsq_quantize_backward")
def _fsq_quantize_backward_fake(grad_codes, z, levels):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


@torch.library.register_fake("wmk::fsq_decode")
def _fsq_decode_fake(indices, levels, dtype=None):
    check_index_tensor(indices, "indices")
    return indices.new_empty((*indices.shape, len(levels)), dtype=dtype or torch.float32)


def _quantize_setup_context(ctx, inputs, output):
    z, levels = inputs
    ctx.save_for_backward(z)
    ctx.levels = levels
    ctx.mark_non_differentiable(output[1])


def _quantize_backward(ctx, grad_codes, grad_indices):
    (z,) = ctx.saved_tensors
    return torch.ops.wmk.fsq_quantize_backward(grad_codes, z, ctx.levels), None


torch.library.register_autograd("wmk::fsq_quantize", _quantize_backward, setup_context=_quantize_setup_context)
