"""Pure-PyTorch references: slow, simple and the ground truth every kernel is tested against."""
from wmkernels.reference.fsq import fsq_decode, fsq_quantize
from wmkernels.reference.lfq import lfq_decode, lfq_encode, lfq_entropy_loss
from wmkernels.reference.tokens import factorize_tokens, unfactorize_tokens
from wmkernels.reference.vq import vq_decode, vq_encode

__all__ = [
    "factorize_tokens",
    "fsq_decode",
    "fsq_quantize",
    "lfq_decode",
    "lfq_encode",
    "lfq_entropy_loss",
    "unfactorize_tokens",
    "vq_decode",
    "vq_encode",
]
