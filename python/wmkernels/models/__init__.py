"""World models built from wmkernels.nn: the GENIE-style STMaskGIT and a token-by-token causal decoder."""
from wmkernels.models.causal_decoder import CausalDecoderConfig, CausalTokenDecoder, TokenKVCache
from wmkernels.models.checkpoint import CheckpointError
from wmkernels.models.config import STMaskGITConfig
from wmkernels.models.st_mask_git import STMaskGIT

__all__ = [
    "CausalDecoderConfig",
    "CausalTokenDecoder",
    "CheckpointError",
    "STMaskGIT",
    "STMaskGITConfig",
    "TokenKVCache",
]
