"""Drop-in torch.nn layers: quantizers (forward returns (quantized, indices, loss)), GENIE attention layers, KV cache."""
from wmkernels.nn.attention import SelfAttention
from wmkernels.nn.finite_scalar_quantizer import FiniteScalarQuantizer
from wmkernels.nn.kv_cache import FrameKVCache
from wmkernels.nn.lookup_free_quantizer import LookupFreeQuantizer
from wmkernels.nn.st_block import Mlp, STBlock, STTransformer
from wmkernels.nn.vector_quantizer import VectorQuantizer

__all__ = [
    "FiniteScalarQuantizer",
    "FrameKVCache",
    "LookupFreeQuantizer",
    "Mlp",
    "STBlock",
    "STTransformer",
    "SelfAttention",
    "VectorQuantizer",
]
