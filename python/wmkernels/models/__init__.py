"""World models built from wmkernels.nn: the GENIE-style STMaskGIT and a token-by-token causal decoder."""
from wmkernels.models.checkpoint import CheckpointError
from wmkernels.models.config import STMaskGITConfig
from wmkernels.models.st_mask_git import STMaskGIT

__all__ = ["CheckpointError", "STMaskGIT", "STMaskGITConfig"]
