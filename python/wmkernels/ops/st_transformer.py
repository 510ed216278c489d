"""wmk::st_transformer_decode: the cached sampler's pass through a whole GENIE STTransformer in one C++ call.

`wmkernels.nn.STTransformer.forward_decode` calls it (without autograd, outside torch.compile, on CPU) instead of
running its layers from Python: the op issues the same ATen and wmk ops in the same order, so the result is bitwise
the module path's, without ~600 Python-level op calls per GENIE-35M pass. The argument lists are built by
`STTransformer._decode_op_args`; see csrc/models/st_transformer_decode_cpu.cpp for their layout.

A batch-1 float32 pass on 2 threads runs there as two tasks, one per thread, each running the ops single-threaded on
half of the rows and meeting the other only where it needs the other's rows: bitwise the same output. It is on where
the Linears take MKL's packed product and every product has 64 to 1,024 rows; `WMK_DECODE_SPLIT=1` turns it on
wherever it applies (2 or more threads), `WMK_DECODE_SPLIT=0` off.
"""
from __future__ import annotations

import torch


@torch.library.register_fake("wmk::st_transformer_decode")
def _st_transformer_decode_fake(x, params, k_cache, v_cache, position, num_heads, scales, eps, packed,
                                gelu_approximate="none", need_output=True, last_only=False, store_last=True):
    if not need_output:
        return x.new_empty((0,))
    b, n, s, c = x.shape
    return x.new_empty((b, 1 if last_only else n, s, c))
