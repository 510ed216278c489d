"""VectorQuantizer: the nearest-code quantizer layer on the fused vq_encode / vq_decode kernels.

A drop-in for vector-quantize-pytorch's `VectorQuantize` (same `(quantized, indices, loss)` contract,
same indices in eval mode with matching options). The layer logic is shared with the pure-PyTorch
reference layer (`wmkernels.reference.vector_quantizer`); only the search and the gather differ.
"""
from __future__ import annotations

import torch

from wmkernels.ops import vq as vq_ops
from wmkernels.reference import vector_quantizer as ref_layer

_SEARCH_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class VectorQuantizer(ref_layer.VectorQuantizer):
    __doc__ = (ref_layer.VectorQuantizer.__doc__ or "") + """
    backend: kernel choice for the search and gather ("auto", "cuda", "triton", "reference"; None reads
    $WMK_BACKEND). The search runs in the codebook's dtype (float32 for a float64 codebook).
    """

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def _search(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        dtype = codes.dtype if codes.dtype in _SEARCH_DTYPES else torch.float32
        indices, _ = vq_ops.vq_encode(z.to(dtype), codes.to(dtype), self.metric, backend=self.backend)
        return indices

    def _gather(self, indices: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return vq_ops.vq_decode(indices, codes, backend=self.backend)
