"""Pure-PyTorch lookup-free quantization (LFQ): the ground truth for the LFQ kernels.

Conventions (those of MAGVIT2 and vector-quantize-pytorch's LFQ): channel j is quantized to
+1 where x > 0 and -1 elsewhere (so NaN gives -1); with bit_order="lsb" channel j is bit j of the index
(the 1X tokens), with "msb" channel 0 is the most significant bit.

The entropy loss enumerates all 2^bits codes (an N x 2^bits tensor): only for small sizes.
"""
from __future__ import annotations

import torch


def _positions(bits: int, bit_order: str, device) -> torch.Tensor:
    if bit_order not in ("lsb", "msb"):
        raise ValueError(f"bit_order must be 'lsb' or 'msb', got {bit_order!r}")
    pos = torch.arange(bits, device=device, dtype=torch.int64)
    return pos if bit_order == "lsb" else bits - 1 - pos


def lfq_encode(x: torch.Tensor, bit_order: str = "lsb") -> torch.Tensor:
    """x: (..., bits) float -> indices (...) int64, bit of channel j set where x[..., j] > 0."""
    weights = torch.ones((), dtype=torch.int64, device=x.device) << _positions(x.shape[-1], bit_order, x.device)
    return ((x > 0).to(torch.int64) * weights).sum(-1)


def lfq_decode(indices: torch.Tensor, bits: int, bit_order: str = "lsb", dtype=torch.float32) -> torch.Tensor:
    """indices: (...) int in [0, 2^bits) -> codes (..., bits) in {-1, +1}."""
    if indices.numel() and (bool((indices < 0).any()) or bool((indices >= 2**bits).any())):
        raise IndexError(f"lfq_decode: indices must lie in [0, 2^{bits} = {2**bits})")
    set_bits = (indices.to(torch.int64).unsqueeze(-1) >> _positions(bits, bit_order, indices.device)) & 1
    return (set_bits * 2 - 1).to(dtype)


def all_codes(bits: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(2^bits, bits) every code in {-1, +1}, row k being lfq_decode(k) in "lsb" order."""
    return lfq_decode(torch.arange(2**bits, device=device), bits, "lsb", dtype)


def lfq_entropy_loss(x: torch.Tensor, inv_temperature: float = 100.0, diversity_gamma: float = 1.0) -> torch.Tensor:
    """Mean per-sample entropy minus diversity_gamma x the entropy of the batch-mean code distribution.

    x: (..., bits); every leading position is a sample. The code distribution of a sample is
    softmax over the 2^bits codes c of 2 * inv_temperature * <x, c> (vector-quantize-pytorch's logits).
    Entropies in nats, computed exactly (0 log 0 = 0; no 1e-5 clamp). An empty batch gives 0.
    Returns a 0-d tensor in x's dtype. Builds (N, 2^bits): small sizes only.
    """
    bits = x.shape[-1]
    flat = x.reshape(-1, bits)
    if flat.shape[0] == 0:
        return (x.sum() * 0).reshape(())
    logits = 2 * inv_temperature * flat @ all_codes(bits, x.dtype, x.device).t()
    prob = logits.softmax(-1)
    per_sample = _entropy(prob).mean()
    codebook = _entropy(prob.mean(0))
    return per_sample - diversity_gamma * codebook


def _entropy(prob: torch.Tensor) -> torch.Tensor:
    # p log p with log clamped at the smallest normal: the same value as xlogy (the terms it changes are below
    # 1e-300 in float64, 1e-36 in float32) but a finite gradient where a probability underflowed to 0.
    return -(prob * prob.clamp_min(torch.finfo(prob.dtype).tiny).log()).sum(-1)
