"""Drop-in torch.nn layers: each quantizer's forward returns (quantized, indices, loss)."""
from wmkernels.nn.finite_scalar_quantizer import FiniteScalarQuantizer
from wmkernels.nn.lookup_free_quantizer import LookupFreeQuantizer
from wmkernels.nn.vector_quantizer import VectorQuantizer

__all__ = ["FiniteScalarQuantizer", "LookupFreeQuantizer", "VectorQuantizer"]
