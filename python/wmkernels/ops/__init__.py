"""Thin wrappers over `torch.ops.wmk.*`: argument checks, backend choice, fake and autograd registrations."""
from wmkernels import _extension  # noqa: F401  (loads the extension, which registers torch.ops.wmk)
from wmkernels.ops._backend import BACKENDS, BackendUnavailableError
from wmkernels.ops.tokens import factorize_tokens, unfactorize_tokens
from wmkernels.ops.vq import vq_decode, vq_encode

__all__ = ["BACKENDS", "BackendUnavailableError", "factorize_tokens", "unfactorize_tokens", "vq_decode", "vq_encode"]
