"""LookupFreeQuantizer: a drop-in for vector-quantize-pytorch's LFQ (and MAGVIT2's), on the wmkernels LFQ ops."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wmkernels.ops.lfq import MAX_BITS, lfq_decode, lfq_encode, lfq_entropy_loss


class LookupFreeQuantizer(nn.Module):
    """Quantize each of `bits` channels to -1 / +1 (sign), the index being those bits.

    Args:
        bits: number of latent channels = log2(codebook size), 1..30 (the entropy loss needs <= 24).
        entropy_loss_weight: weight of `lfq_entropy_loss` in the training loss (vector-quantize-pytorch: 0.1).
        commitment_loss_weight: weight of mean((x - sign(x))^2) in the training loss (vector-quantize-pytorch: 0).
        diversity_gamma: weight of the codebook entropy inside the entropy loss (1.0).
        inv_temperature: logits of the code distribution are 2 * inv_temperature * <x, c> (100.0).
        bit_order: "lsb" (channel j is bit j, the 1X tokens) or "msb" (channel 0 most significant, the order of
            MAGVIT2 and vector-quantize-pytorch's LFQ: use it to swap this layer in for theirs).
        backend: backend of the ops ("auto", "cuda", "triton", "reference"; None: $WMK_BACKEND or "auto").

    Layout: channel-last x (..., bits). vector-quantize-pytorch moves the channels of 4-D and larger inputs
    to the end itself; here pass `x.movedim(1, -1)` for such inputs.
    """

    def __init__(
        self,
        bits: int,
        *,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.0,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        bit_order: str = "lsb",
        backend: str | None = None,
    ):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise ValueError(f"LookupFreeQuantizer: bits must be an int in [1, {MAX_BITS}], got {bits!r}")
        if bit_order not in ("lsb", "msb"):
            raise ValueError(f"LookupFreeQuantizer: bit_order must be 'lsb' or 'msb', got {bit_order!r}")
        self.bits = bits
        self.codebook_size = 2**bits
        self.entropy_loss_weight = float(entropy_loss_weight)
        self.commitment_loss_weight = float(commitment_loss_weight)
        self.diversity_gamma = float(diversity_gamma)
        self.inv_temperature = float(inv_temperature)
        self.bit_order = bit_order
        self.backend = backend

    def forward(
        self, x: torch.Tensor, inv_temperature: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (..., bits) float -> (quantized like x, indices (...) int64, loss 0-d).

        In training, quantized = x + (sign(x) - x).detach() (straight-through) and loss =
        entropy_loss_weight * lfq_entropy_loss(x) + commitment_loss_weight * mse(x, sign(x)); in eval,
        quantized = sign(x) and loss = 0, as vector-quantize-pytorch's LFQ does.
        """
        indices = self.encode(x)
        codes = self.decode(indices, dtype=x.dtype)
        if not self.training:
            return codes, indices, x.new_zeros(())
        quantized = x + (codes - x).detach()
        loss = x.new_zeros(())
        if self.entropy_loss_weight != 0:
            tau = self.inv_temperature if inv_temperature is None else float(inv_temperature)
            entropy = lfq_entropy_loss(x, tau, self.diversity_gamma, backend=self.backend)
            loss = loss + self.entropy_loss_weight * entropy
        if self.commitment_loss_weight != 0:
            loss = loss + self.commitment_loss_weight * F.mse_loss(x, codes.detach())
        return quantized, indices, loss

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., bits) -> indices (...) int64."""
        if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[-1] != self.bits:
            raise ValueError(f"LookupFreeQuantizer: x must have a last dimension of bits = {self.bits}, "
                             f"got shape {tuple(x.shape)}")
        return lfq_encode(x, self.bit_order, backend=self.backend)

    def decode(self, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """indices: (...) in [0, 2^bits) -> codes (..., bits) in {-1, +1}."""
        return lfq_decode(indices, self.bits, self.bit_order, dtype=dtype, backend=self.backend)

    def indices_to_codes(self, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The same as `decode` (vector-quantize-pytorch's name)."""
        return self.decode(indices, dtype)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, bit_order={self.bit_order!r}, entropy_loss_weight={self.entropy_loss_weight}, "
                f"commitment_loss_weight={self.commitment_loss_weight}, diversity_gamma={self.diversity_gamma}, "
                f"inv_temperature={self.inv_temperature}")
