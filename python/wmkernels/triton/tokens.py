"""Triton kernels for the token factorization (GPU path; runs on CPU under TRITON_INTERPRET=1)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _factorize_kernel(src, dst, bad, n, base, vocab, NUM_FACTORS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    token = tl.load(src + offs, mask=live, other=0).to(tl.int64)
    invalid = live & ((token < 0) | (token >= vocab))
    # The lowest bad index is reported; valid positions carry n, which never wins the minimum.
    tl.atomic_min(bad, tl.min(tl.where(invalid, offs, n), axis=0))
    for j in tl.static_range(NUM_FACTORS):
        tl.store(dst + offs * NUM_FACTORS + j, (token % base).to(dst.dtype.element_ty), mask=live)
        token = token // base


@triton.jit
def _unfactorize_kernel(src, dst, bad, n, base, NUM_FACTORS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    token = tl.zeros([BLOCK], dtype=tl.int64)
    invalid = tl.zeros([BLOCK], dtype=tl.int1)
    for i in tl.static_range(NUM_FACTORS):
        j = NUM_FACTORS - 1 - i
        f = tl.load(src + offs * NUM_FACTORS + j, mask=live, other=0).to(tl.int64)
        invalid = invalid | (live & ((f < 0) | (f >= base)))
        token = token * base + f
    tl.atomic_min(bad, tl.min(tl.where(invalid, offs, n), axis=0))
    tl.store(dst + offs, token.to(dst.dtype.element_ty), mask=live)


def _first_bad(n: int, device: torch.device) -> torch.Tensor:
    return torch.full((1,), n, dtype=torch.int64, device=device)


def factorize_tokens(tokens: torch.Tensor, factored_vocab_size: int, num_factors: int) -> torch.Tensor:
    vocab = factored_vocab_size**num_factors
    src = tokens.contiguous()
    out = torch.empty((*tokens.shape, num_factors), dtype=tokens.dtype, device=tokens.device)
    n = src.numel()
    if n == 0:
        return out
    bad = _first_bad(n, tokens.device)
    _factorize_kernel[(triton.cdiv(n, _BLOCK),)](
        src, out, bad, n, factored_vocab_size, vocab, NUM_FACTORS=num_factors, BLOCK=_BLOCK
    )
    first = int(bad.item())
    if first != n:
        raise ValueError(
            f"factorize_tokens: tokens must lie in [0, {vocab}), found {src.reshape(-1)[first].item()} "
            f"at flat index {first}"
        )
    return out


def unfactorize_tokens(factors: torch.Tensor, factored_vocab_size: int) -> torch.Tensor:
    num_factors = factors.shape[-1]
    src = factors.contiguous()
    out = torch.empty(factors.shape[:-1], dtype=factors.dtype, device=factors.device)
    n = out.numel()
    if n == 0:
        return out
    bad = _first_bad(n, factors.device)
    _unfactorize_kernel[(triton.cdiv(n, _BLOCK),)](src, out, bad, n, factored_vocab_size,
                                                    NUM_FACTORS=num_factors, BLOCK=_BLOCK)
    first = int(bad.item())
    if first != n:
        raise ValueError(
            f"unfactorize_tokens: factors must lie in [0, {factored_vocab_size}), found one outside that "
            f"range in token {first}"
        )
    return out
