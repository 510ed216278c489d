"""wmkernels: fused kernels for video world models, as drop-in torch.nn layers.

Public API:
    show_config()                          what this build has (torch, CUDA, CPU features, Triton)
    factorize_tokens, unfactorize_tokens   the 2^18 = 512 x 512 token factorization of the 1X data
    vq_encode, vq_decode                   nearest-code VQ: fused distance + argmin, and the code gather
    spatial_attention, temporal_attention  factorized attention on the video layout (B, T, S, H, D)
    spatial_attention_qkv, temporal_attention_qkv   the same on a fused qkv projection (B, T, S, 3, H, D)
    frame_decode_attention                 one frame's queries against a frame KV cache (no host sync)
    frame_decode_step                      the cached sampler's step: write the frame's K/V, then decode
    BACKENDS, BackendUnavailableError      backend choice: backend=... per call, or $WMK_BACKEND
    lfq_encode, lfq_decode, lfq_entropy_loss   lookup-free quantization (wmkernels.nn.LookupFreeQuantizer)
    fsq_quantize, fsq_decode               finite scalar quantization (wmkernels.nn.FiniteScalarQuantizer)
    STMaskGIT, STMaskGITConfig             the GENIE-style world model (from_pretrained / from_config)
    FrameKVCache                           per-layer temporal K/V cache of the frame sampler
    maskgit_generate, GenerationResult     KV-cached MaskGIT frame sampling (use_cache=False: GENIE's sampler)
    autoregressive_generate                token-by-token sampling with a static KV cache
"""
from importlib import metadata as _metadata

from wmkernels.config import show_config
from wmkernels.ops import BACKENDS, BackendUnavailableError, factorize_tokens, unfactorize_tokens
from wmkernels.ops import frame_decode_attention, frame_decode_step, spatial_attention, temporal_attention
from wmkernels.ops import spatial_attention_qkv, temporal_attention_qkv
from wmkernels.ops import fsq_decode, fsq_quantize, lfq_decode, lfq_encode, lfq_entropy_loss
from wmkernels.ops import vq_decode, vq_encode
# Frame sampling (the sampling family)
from wmkernels.models import STMaskGIT, STMaskGITConfig
from wmkernels.nn.kv_cache import FrameKVCache
from wmkernels.sampling import GenerationResult, autoregressive_generate, maskgit_generate

try:
    __version__ = _metadata.version("wmkernels")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
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
    "frame_decode_attention",
    "frame_decode_step",
    "fsq_decode",
    "fsq_quantize",
    "lfq_decode",
    "lfq_encode",
    "lfq_entropy_loss",
    "maskgit_generate",
    "show_config",
    "spatial_attention",
    "spatial_attention_qkv",
    "temporal_attention",
    "temporal_attention_qkv",
    "unfactorize_tokens",
    "vq_decode",
    "vq_encode",
]
