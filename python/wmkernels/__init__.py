"""wmkernels: fused kernels for video world models, as drop-in torch.nn layers.

Public API:
    show_config()                          what this build has (torch, CUDA, CPU features, Triton)
    factorize_tokens, unfactorize_tokens   the 2^18 = 512 x 512 token factorization of the 1X data
    spatial_attention, temporal_attention  factorized attention on the video layout (B, T, S, H, D)
    frame_decode_attention                 one frame's queries against a frame KV cache (no host sync)
    BACKENDS, BackendUnavailableError      backend choice: backend=... per call, or $WMK_BACKEND
"""
from wmkernels.config import show_config
from wmkernels.ops import (
    BACKENDS,
    BackendUnavailableError,
    factorize_tokens,
    frame_decode_attention,
    spatial_attention,
    temporal_attention,
    unfactorize_tokens,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "__version__",
    "factorize_tokens",
    "frame_decode_attention",
    "show_config",
    "spatial_attention",
    "temporal_attention",
    "unfactorize_tokens",
]
