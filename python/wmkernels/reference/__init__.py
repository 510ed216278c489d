"""Pure-PyTorch references: slow, simple and the ground truth every kernel is tested against."""
from wmkernels.reference.fsq import fsq_decode, fsq_quantize
from wmkernels.reference.lfq import lfq_decode, lfq_encode, lfq_entropy_loss
from wmkernels.reference.tokens import factorize_tokens, unfactorize_tokens

__all__ = [
    "factorize_tokens",
    "fsq_decode",
    "fsq_quantize",
    "lfq_decode",
    "lfq_encode",
    "lfq_entropy_loss",
    "unfactorize_tokens",
]
