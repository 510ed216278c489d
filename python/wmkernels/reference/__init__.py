"""Pure-PyTorch references: slow, simple and the ground truth every kernel is tested against."""
from wmkernels.reference.tokens import factorize_tokens, unfactorize_tokens

__all__ = ["factorize_tokens", "unfactorize_tokens"]
