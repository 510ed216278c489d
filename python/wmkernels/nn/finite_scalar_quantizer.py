"""FiniteScalarQuantizer: a drop-in for vector-quantize-pytorch's FSQ, on the wmkernels FSQ ops."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wmkernels.ops.fsq import check_levels, fsq_decode, fsq_quantize


class FiniteScalarQuantizer(nn.Module):
    """Bound each of len(levels) channels with tanh and round it to one of levels[j] values.

    Args:
        levels: levels per channel, each >= 2, e.g. [8, 5, 5, 5] or [8, 8, 8, 5, 5, 5] (the Cosmos tokenizer).
        backend: backend of the ops ("auto", "cuda", "triton", "reference"; None: $WMK_BACKEND or "auto").

    Same codes and indices as vector-quantize-pytorch's FSQ(levels) (whose channel-first handling of 4-D
    inputs is left to the caller: pass channel-last x). FSQ has no auxiliary loss: `forward` returns a
    zero loss so that every wmkernels quantizer returns (quantized, indices, loss).
    """

    def __init__(self, levels: Sequence[int], *, backend: str | None = None):
        super().__init__()
        self.levels = check_levels(levels, "FiniteScalarQuantizer")
        self.dim = len(self.levels)
        size = 1
        for v in self.levels:
            size *= v
        self.codebook_size = size
        self.backend = backend

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (..., len(levels)) float -> (codes like z, indices (...) int64, loss 0-d zero).

        The codes are differentiable in z (straight-through rounding inside the tanh bound).
        """
        codes, indices = fsq_quantize(z, self.levels, backend=self.backend)
        return codes, indices, z.new_zeros(())

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., len(levels)) -> indices (...) int64."""
        return fsq_quantize(z, self.levels, backend=self.backend)[1]

    def decode(self, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """indices: (...) in [0, prod(levels)) -> codes (..., len(levels))."""
        return fsq_decode(indices, self.levels, dtype=dtype, backend=self.backend)

    def indices_to_codes(self, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The same as `decode` (vector-quantize-pytorch's name)."""
        return self.decode(indices, dtype)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
