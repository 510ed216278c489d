"""factorize_tokens / unfactorize_tokens: the 2^18 = 512 x 512 token factorization of the 1X data."""
from __future__ import annotations

import torch

from wmkernels import reference
from wmkernels.ops import _backend
from wmkernels.ops._checks import check_index_tensor, check_int

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


def _vocab(factored_vocab_size: int, num_factors: int) -> int:
    check_int(factored_vocab_size, "factored_vocab_size", 2)
    check_int(num_factors, "num_factors", 1)
    vocab = factored_vocab_size**num_factors
    if vocab > _INT64_MAX:
        raise ValueError(f"factored_vocab_size ** num_factors = {factored_vocab_size} ** {num_factors} overflows int64")
    return vocab


def factorize_tokens(
    tokens: torch.Tensor, factored_vocab_size: int = 512, num_factors: int = 2, *, backend: str | None = None
) -> torch.Tensor:
    """Split tokens into `num_factors` digits of base `factored_vocab_size`, least significant first.

    tokens: (...) int32 or int64 in [0, factored_vocab_size**num_factors).
    Returns (..., num_factors) of the same dtype: `out[..., j] = (tokens // factored_vocab_size**j) % factored_vocab_size`.
    Raises ValueError on a token outside the vocabulary, TypeError on a non-integer tensor.
    """
    check_index_tensor(tokens, "tokens")
    _vocab(factored_vocab_size, num_factors)
    impl = _backend.select(backend, tokens.device, "factorize_tokens")
    if impl == "reference":
        return reference.factorize_tokens(tokens, factored_vocab_size, num_factors)
    if impl == "triton":
        from wmkernels.triton import tokens as triton_tokens

        return triton_tokens.factorize_tokens(tokens, factored_vocab_size, num_factors)
    return torch.ops.wmk.factorize_tokens(tokens, factored_vocab_size, num_factors)


def unfactorize_tokens(
    factors: torch.Tensor, factored_vocab_size: int = 512, *, backend: str | None = None
) -> torch.Tensor:
    """Inverse of `factorize_tokens`.

    factors: (..., num_factors) int32 or int64, each in [0, factored_vocab_size).
    Returns tokens (...) of the same dtype. Raises ValueError on a factor outside that range.
    """
    check_index_tensor(factors, "factors")
    if factors.dim() == 0:
        raise ValueError("factors must have a last dimension holding the factors, got a 0-d tensor")
    vocab = _vocab(factored_vocab_size, factors.shape[-1])
    if factors.dtype == torch.int32 and vocab - 1 > _INT32_MAX:
        raise ValueError(f"unfactorize_tokens: a vocabulary of {vocab} tokens does not fit int32 factors; pass int64")
    impl = _backend.select(backend, factors.device, "unfactorize_tokens")
    if impl == "reference":
        return reference.unfactorize_tokens(factors, factored_vocab_size)
    if impl == "triton":
        from wmkernels.triton import tokens as triton_tokens

        return triton_tokens.unfactorize_tokens(factors, factored_vocab_size)
    return torch.ops.wmk.unfactorize_tokens(factors, factored_vocab_size)


@torch.library.register_fake("wmk::factorize_tokens")
def _factorize_tokens_fake(tokens, factored_vocab_size=512, num_factors=2):
    check_index_tensor(tokens, "tokens")
    return tokens.new_empty((*tokens.shape, num_factors))


@torch.library.register_fake("wmk::unfactorize_tokens")
def _unfactorize_tokens_fake(factors, factored_vocab_size=512):
    check_index_tensor(factors, "factors")
    torch._check(factors.dim() >= 1, lambda: "factors must have a last dimension holding the factors")
    return factors.new_empty(factors.shape[:-1])
