"""Pure-PyTorch token factorization, as in the public GENIE code (the ground truth for the kernels)."""
from __future__ import annotations

import torch


def factorize_tokens(tokens: torch.Tensor, factored_vocab_size: int = 512, num_factors: int = 2) -> torch.Tensor:
    """tokens: (...) integers in [0, factored_vocab_size**num_factors) -> (..., num_factors).

    Factor j is `(tokens // factored_vocab_size**j) % factored_vocab_size`.
    """
    vocab = factored_vocab_size**num_factors
    wide = tokens.to(torch.int64)  # an int32 compared with a vocabulary past 2^31 would wrap
    if tokens.numel() and (bool((wide < 0).any()) or bool((wide >= vocab).any())):
        bad = wide[(wide < 0) | (wide >= vocab)].reshape(-1)[0].item()
        raise ValueError(f"factorize_tokens: tokens must lie in [0, {vocab}), found {bad}")
    powers = factored_vocab_size ** torch.arange(num_factors, device=tokens.device, dtype=torch.int64)
    return ((tokens.unsqueeze(-1).to(torch.int64) // powers) % factored_vocab_size).to(tokens.dtype)


def unfactorize_tokens(factors: torch.Tensor, factored_vocab_size: int = 512) -> torch.Tensor:
    """factors: (..., num_factors) integers in [0, factored_vocab_size) -> tokens (...)."""
    if factors.numel() and (bool((factors < 0).any()) or bool((factors >= factored_vocab_size).any())):
        raise ValueError(f"unfactorize_tokens: factors must lie in [0, {factored_vocab_size})")
    powers = factored_vocab_size ** torch.arange(factors.shape[-1], device=factors.device, dtype=torch.int64)
    return (factors.to(torch.int64) * powers).sum(-1).to(factors.dtype)
