"""wmkernels: fused kernels for video world models, as drop-in torch.nn layers.

Public API:
    show_config()                          what this build has (torch, CUDA, CPU features, Triton)
    factorize_tokens, unfactorize_tokens   the 2^18 = 512 x 512 token factorization of the 1X data
    BACKENDS, BackendUnavailableError      backend choice: backend=... per call, or $WMK_BACKEND
    STMaskGIT, STMaskGITConfig             the GENIE-style world model (from_pretrained / from_config)
    FrameKVCache                           per-layer temporal K/V cache of the frame sampler
    maskgit_generate, GenerationResult     KV-cached MaskGIT frame sampling (use_cache=False: GENIE's sampler)
    autoregressive_generate                token-by-token sampling with a static KV cache
"""
from wmkernels.config import show_config
from wmkernels.ops import BACKENDS, BackendUnavailableError, factorize_tokens, unfactorize_tokens
# Frame sampling (the sampling family)
from wmkernels.models import STMaskGIT, STMaskGITConfig
from wmkernels.nn.kv_cache import FrameKVCache
from wmkernels.sampling import GenerationResult, autoregressive_generate, maskgit_generate

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "FrameKVCache",
    "GenerationResult",
    "STMaskGIT",
    "STMaskGITConfig",
    "__version__",
    "autoregressive_generate",
    "factorize_tokens",
    "maskgit_generate",
    "show_config",
    "unfactorize_tokens",
]
