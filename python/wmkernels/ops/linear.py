"""wmk::pack_linear_weight and wmk::linear_prepacked: nn.Linear's x @ W^T + bias with the weight packed once.

At every call MKL copies ("packs") the weight into its panel layout. For the frame sampler's passes, which multiply only
256 or 512 rows by every weight of the model, that copy and MKL's split of the work over threads are a visible share of
each product. `linear_prepacked` takes the weight packed once (`pack_linear_weight`: panels of 16 output features) and
runs an AVX-512F or AVX2+FMA kernel (the widest the CPU has; $WMK_LINEAR_ISA=avx2 or avx512 forces one), split over
threads by panel. Measured over GENIE-35M's 192 products at 2 threads, against torch.nn.functional.linear: on the 2-core
Zen 3 VM (AVX2 kernel, measured before its sums took chains of 16, which cost the AVX2 kernel nothing measurable on the
Intel VM) 1.12-1.19x at 256 rows, 1.08-1.14x at 512 and 1.03-1.10x at 4,096 rows; on a 2-core Intel Xeon VM with AVX-512
(AVX-512 kernel) 0.90-1.0x at 256 rows and 0.88x at 4,096 (BENCHMARKS.md). There MKL's own packed-weight product
serves instead: `pack_linear_weight_mkl` packs the weight in MKL's layout once, and `linear_prepacked` given that
packing runs MKL for 64 to 1,024 rows (see its docstring). Off the CPU, for dtypes other than float32, on CPUs
without AVX2+FMA (for the panels) or without `packed`, `linear_prepacked` is torch.nn.functional.linear itself.
Inference only (no autograd).

Every output is summed as fma over k in chains of 16 (each from 0), the chains of each block of 256 k added pairwise,
the blocks added to the running sum in order, then the bias: the same order on every row, tile and thread split, so
a row's result does not depend on how many rows come with it or which of the two kernels runs. Its error stays within
the numerics rule's 2x of torch's fp32 product also where MKL sums very accurately (few rows). It differs from MKL's
by a few ulps, which is why the GENIE layers all choose their kernel by one rule (wmkernels.nn.packed_linear).
"""
from __future__ import annotations

import torch

from wmkernels import _extension  # noqa: F401  (loads the extension, which registers torch.ops.wmk)
from wmkernels import _C

PANEL_WIDTH = 16


def packed_linear_available() -> bool:
    """Whether this build and CPU have the packed kernel (x86-64 with AVX2+FMA)."""
    return bool(_C.packed_linear_available())


def mkl_packed_linear_available() -> bool:
    """Whether this torch has MKL's packed sgemm (x86-64 builds with MKL) and it passed the extension's check.

    The first call runs that check (a few small products through MKL and torch's threads), so a process that forks
    workers should not call it before forking: GNU OpenMP's threads do not survive a fork.
    """
    return bool(_C.mkl_packed_linear_available())


def mkl_packed_linear_exported() -> bool:
    """Whether this torch exports MKL's packed sgemm at all (a symbol lookup: runs nothing)."""
    return bool(_C.mkl_packed_linear_exported())


def pack_linear_weight_mkl(weight: torch.Tensor) -> torch.Tensor:
    """weight (out_features, in_features) float32 on the CPU -> MKL's packed copy of it (a 1-D uint8 tensor).

    `linear_prepacked(x, weight, bias, packed)` with it runs MKL's packed product (`cblas_sgemm_compute`) for 64 to
    1,024 rows of x, and torch.nn.functional.linear for any other count. MKL's plain sgemm copies the weight into its
    panel layout at every call; packed once, that copy is gone, which pays where few rows meet the weight: over
    GENIE-35M's products at 2 threads on an Intel Xeon, 1.10x at 256 rows and 1.03x at 512, but 0.98-0.99x at 2,304
    and 4,096 (hence the bound; csrc/linear/mkl_pack.h). It is MKL's own kernel: a few ulps from F.linear at most.
    Raises RuntimeError where MKL's packed API is unavailable (mkl_packed_linear_available()).
    """
    return torch.ops.wmk.pack_linear_weight_mkl(weight)


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight (out_features, in_features) float32 -> its panels (ceil(out / 16), in_features, 16)."""
    return torch.ops.wmk.pack_linear_weight(weight)


def linear_prepacked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     packed: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.linear(x, weight, bias), through the packed kernel where it runs (see above).
    Inference only: raises if autograd would need a gradient through it."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        raise RuntimeError("linear_prepacked has no autograd: call it under torch.no_grad() or "
                           "torch.inference_mode(), or use torch.nn.functional.linear where gradients are needed")
    return torch.ops.wmk.linear_prepacked(x, weight, bias, packed)


@torch.library.register_fake("wmk::pack_linear_weight")
def _pack_linear_weight_fake(weight):
    n, k = weight.shape
    return weight.new_empty(((n + PANEL_WIDTH - 1) // PANEL_WIDTH, k, PANEL_WIDTH))


@torch.library.register_fake("wmk::pack_linear_weight_mkl")
def _pack_linear_weight_mkl_fake(weight):
    n, k = weight.shape
    return weight.new_empty((int(_C.mkl_packed_bytes(n, k)),), dtype=torch.uint8)


@torch.library.register_fake("wmk::linear_prepacked")
def _linear_prepacked_fake(x, weight, bias, packed):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
