"""Hypothesis strategies shared by the fuzz tests: shapes with 0 and 1, dtypes, and memory layouts.

Every tensor an op receives is built by `arrange`: the same logical shape as contiguous, permuted
(transposed storage), sliced (every other element of a larger buffer, at a non-zero storage offset) or
expanded (stride 0 along some size-1 dimensions) memory.
"""
from __future__ import annotations

import torch
from hypothesis import strategies as st

LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Sizes weighted toward the edge cases: empty, one, and small odd sizes.
SIZES = st.sampled_from([0, 1, 1, 1, 2, 2, 3, 5, 7])


def sizes(max_dims: int, min_dims: int = 0, size=SIZES):
    return st.lists(size, min_size=min_dims, max_size=max_dims).map(tuple)


def arrange(x: torch.Tensor, layout: str, seed: int) -> torch.Tensor:
    """A tensor of x's shape laid out as `layout`; values equal to x's except for "expanded"."""
    g = torch.Generator().manual_seed(seed)
    n = x.dim()
    if layout == "contiguous" or n == 0:
        return x.clone()
    if layout == "transposed":
        perm = torch.randperm(n, generator=g).tolist()
        if perm == list(range(n)) and n >= 2:
            perm = perm[::-1]
        inverse = [perm.index(i) for i in range(n)]
        return x.permute(perm).contiguous().permute(inverse)
    if layout == "sliced":
        big = torch.zeros([2 * s + 1 for s in x.shape], dtype=x.dtype)
        view = big[tuple(slice(1, 1 + 2 * s, 2) for s in x.shape)]
        view.copy_(x)
        return view
    if layout == "expanded":
        dims = [d for d in range(n) if x.shape[d] > 0 and torch.rand((), generator=g) < 0.5] or (
            [0] if x.shape[0] > 0 else [])
        base = x
        for d in dims:
            base = base.narrow(d, 0, 1)
        return base.expand(x.shape)
    raise ValueError(layout)


def randn(shape, dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def randint(shape, low: int, high: int, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g, dtype=torch.int64).to(dtype)


def assert_rule(out, ref64, ref_x, factor, what, magnitude=1.0):
    """DESIGN.md's rule: max error <= factor x the reference-in-dtype error, plus 16 roundings of dtype X
    at the largest magnitude compared (so exact cancellations in the reference do not fail on a rounding)."""
    if out.numel() == 0:
        return
    err = (out.double() - ref64).abs().max().item()
    ref_err = (ref_x.double() - ref64).abs().max().item()
    if ref_err != ref_err:  # the reference in dtype X overflowed (NaN): no bound but a finite answer
        ref_err = float("inf")
    rounding = 16 * torch.finfo(out.dtype).eps * max(magnitude, ref64.abs().max().item())
    assert err <= factor * ref_err + rounding, (
        f"{what}: max error {err:.3g} > {factor} x reference-in-{out.dtype} error {ref_err:.3g} + {rounding:.3g}")


def expect_clear_error(fn, *names, types=(ValueError, TypeError, IndexError, RuntimeError)):
    """fn() must raise one of `types` with a message naming one of `names` (the argument at fault)."""
    try:
        fn()
    except types as err:
        message = str(err)
        assert any(name in message for name in names), f"{type(err).__name__} does not name {names}: {message}"
        return err
    raise AssertionError(f"no error raised; expected one naming {names}")
