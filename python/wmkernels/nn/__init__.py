"""Drop-in torch.nn layers built on the wmkernels ops."""
from wmkernels.nn.attention import SelfAttention
from wmkernels.nn.kv_cache import FrameKVCache
from wmkernels.nn.st_block import Mlp, STBlock, STTransformer

__all__ = ["FrameKVCache", "Mlp", "STBlock", "STTransformer", "SelfAttention"]
