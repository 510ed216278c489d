"""Pure-PyTorch references: slow, simple and the ground truth every kernel is tested against."""
from wmkernels.reference.tokens import factorize_tokens, unfactorize_tokens
from wmkernels.reference.vq import vq_decode, vq_encode

__all__ = ["factorize_tokens", "unfactorize_tokens", "vq_decode", "vq_encode"]
