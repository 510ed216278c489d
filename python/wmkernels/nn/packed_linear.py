"""The Linear layers of the GENIE blocks at inference: one rule for which kernel multiplies.

`inference_linear(linear, x)` is `linear(x)`, except without autograd, on CPU, in float32 and outside torch.compile,
where `enabled` is set: there it runs `wmk::linear_prepacked` with the Linear's weight packed once (see
wmkernels.ops.linear). Every path of the layers goes through it (the full forward, the sampler's prefill and decode
passes, and wmk::st_transformer_decode, which gets the packed weights from `packed_weight`), so all of them compute
the same numbers.

`enabled` defaults to True on CPUs with AVX2+FMA and without AVX-512F. Against MKL's sgemm over GENIE-35M's products at
2 threads: on a Zen 3 (AVX2) the packed kernel measured 1.12-1.19x at 256 rows; on an Intel Xeon with AVX-512, where MKL
runs its AVX-512 code, the packed AVX-512 kernel ran 0.90-1.0x at 256 rows and 0.88x at 4,096 (BENCHMARKS.md), so the
layers keep MKL there unless you set `enabled = True`.

The packed copy costs as much memory as the weight (for GENIE-35M's 32 layers, 128 MiB). It is made the first time a
Linear runs on this path and remade when the weight changes (a new tensor, or an in-place update such as
load_state_dict or an optimizer step, seen through the tensor's version counter). Weights that are inference tensors
(created under torch.inference_mode) have no version counter and keep nn.Linear. `clear()` drops the copies.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from wmkernels._extension import build_info
from wmkernels.ops.linear import pack_linear_weight, packed_linear_available

_AVAILABLE = packed_linear_available()

#: Whether the layers use the packed kernel (False: every Linear runs torch.nn.functional.linear, i.e. MKL).
enabled: bool = _AVAILABLE and "avx512f" not in build_info()["cpu_features"]
# id(weight) -> (weak reference to the weight, its version when packed, its data pointer, the packed tensor). Keyed
# by id (a WeakKeyDictionary would compare tensors with ==); the entry goes when the weight does.
_PACKED: dict[int, tuple] = {}


def clear() -> None:
    """Drop every packed copy (they are remade on demand)."""
    _PACKED.clear()


def _usable(weight: torch.Tensor) -> bool:
    # Not an inference tensor (made under torch.inference_mode): it has no version counter, so an in-place update
    # could not be seen and the copy could go stale; such weights keep nn.Linear.
    return (enabled and _AVAILABLE and weight.device.type == "cpu" and weight.dtype == torch.float32
            and weight.dim() == 2 and not weight.is_inference())


def packed_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """The packed copy of `weight` (made or remade as needed), or None where the packed kernel cannot run it."""
    if not _usable(weight):
        return None
    key = id(weight)
    entry = _PACKED.get(key)
    version, ptr = weight._version, weight.data_ptr()
    if entry is not None and entry[0]() is weight and entry[1] == version and entry[2] == ptr:
        return entry[3]
    with torch.inference_mode(False), torch.no_grad():
        packed = pack_linear_weight(weight.detach())
    _PACKED[key] = (weakref.ref(weight, lambda _, key=key: _forget(key)), version, ptr, packed)
    return packed


def _forget(key: int) -> None:
    entry = _PACKED.get(key)
    if entry is not None and entry[0]() is None:
        del _PACKED[key]


def packed_for(x: torch.Tensor) -> bool:
    """Whether a Linear's product over x takes the packed kernel (given a packed weight): the rule's part that
    depends on x and on the mode."""
    return (enabled and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.numel() > 0 and not torch.compiler.is_compiling())


def global_hooks_set() -> bool:
    """Whether a global module (pre-)forward hook is registered (then every module must run as itself)."""
    from torch.nn.modules import module as _module

    return bool(getattr(_module, "_global_forward_hooks", None) or getattr(_module, "_global_forward_pre_hooks", None))


def inference_linear(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)`, through the packed kernel where the rule allows it (a plain nn.Linear without hooks)."""
    if (type(linear) is not nn.Linear or linear._forward_hooks or linear._forward_pre_hooks
            or not packed_for(x) or global_hooks_set()):
        return linear(x)
    packed = packed_weight(linear.weight)
    if packed is None:
        return linear(x)
    return torch.ops.wmk.linear_prepacked(x, linear.weight, linear.bias, packed)
