"""Thin wrappers over `torch.ops.wmk.*`: argument checks, backend choice, fake and autograd registrations."""
from wmkernels import _extension  # noqa: F401  (loads the extension, which registers torch.ops.wmk)
from wmkernels.ops._backend import BACKENDS, BackendUnavailableError
from wmkernels.ops.attention import frame_decode_attention, frame_decode_step, spatial_attention, temporal_attention
from wmkernels.ops.attention import spatial_attention_qkv, temporal_attention_qkv
from wmkernels.ops.fsq import fsq_decode, fsq_quantize
from wmkernels.ops.lfq import lfq_decode, lfq_encode, lfq_entropy_loss
from wmkernels.ops.linear import linear_prepacked, pack_linear_weight, pack_linear_weight_mkl
from wmkernels.ops import st_transformer  # noqa: F401  (the fake kernel of wmk::st_transformer_decode)
from wmkernels.ops.tokens import factorize_tokens, unfactorize_tokens
from wmkernels.ops.vq import vq_decode, vq_encode

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "factorize_tokens",
    "frame_decode_attention",
    "frame_decode_step",
    "fsq_decode",
    "fsq_quantize",
    "lfq_decode",
    "lfq_encode",
    "lfq_entropy_loss",
    "linear_prepacked",
    "pack_linear_weight",
    "pack_linear_weight_mkl",
    "spatial_attention",
    "spatial_attention_qkv",
    "temporal_attention",
    "temporal_attention_qkv",
    "unfactorize_tokens",
    "vq_decode",
    "vq_encode",
]
