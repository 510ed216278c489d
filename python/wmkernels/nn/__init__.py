"""Drop-in torch.nn layers built on the wmkernels ops."""
from wmkernels.nn.vector_quantizer import VectorQuantizer

__all__ = ["VectorQuantizer"]
