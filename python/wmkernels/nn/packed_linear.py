"""The Linear layers of the GENIE blocks at inference: one rule for which kernel multiplies.

`inference_linear(linear, x)` is `linear(x)`, except without autograd, on CPU, in float32 and outside torch.compile,
where `enabled` is set: there it runs `wmk::linear_prepacked` with the Linear's weight packed once (see
wmkernels.ops.linear). Every path of the layers goes through it (the full forward, the sampler's prefill and decode
passes, and wmk::st_transformer_decode, which gets the packed weights from `packed_weight`), so all of them compute
the same numbers for the same rows.

Which packing (`kind`):
- "panels" (`pack_linear_weight`, the package's AVX2 / AVX-512 kernel) on CPUs with AVX2+FMA and without AVX-512F.
  Against MKL's sgemm over GENIE-35M's products at 2 threads, on a Zen 3 (AVX2) it measured 1.12-1.19x at 256 rows.
- "mkl" (`pack_linear_weight_mkl`: MKL's own packed product for 64 to 1,024 rows, F.linear for other counts) on
  Intel CPUs with AVX-512F where torch has MKL. There MKL's AVX-512 code beats the panels (0.90-1.0x at 256 rows,
  0.88x at 4,096), and its packed product skips the weight copy its plain sgemm makes at every call: on an Intel Xeon
  VM, the cached sampler ran 1.03x faster with it (BENCHMARKS.md), GENIE's 16-frame forward (4,096 rows) unchanged.
- None (`enabled` False): every Linear runs torch.nn.functional.linear. The default on other AVX-512 CPUs (AMD Zen
  4), where neither packing has been measured against MKL's plain sgemm; set `kind = "mkl"` and `enabled = True` to
  try MKL's packing there.

The packed copy costs about as much memory as the weight (for GENIE-35M's 32 layers, 128 MiB resident; MKL's buffers
also reserve a few MiB of address space each that is never written). It is made the first time a Linear runs on this
path and remade when the weight changes (a new tensor, or an in-place update such as load_state_dict or an optimizer
step, seen through the tensor's version counter) or `kind` does. Weights that are inference tensors (created under
torch.inference_mode) have no version counter and keep nn.Linear. `clear()` drops the copies.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from wmkernels._extension import build_info
from wmkernels.ops.linear import (mkl_packed_linear_available, mkl_packed_linear_exported, pack_linear_weight,
                                  pack_linear_weight_mkl, packed_linear_available)

_AVX512 = "avx512f" in build_info()["cpu_features"]
_INTEL = build_info()["cpu_vendor"] == "intel"
_PACKERS = {"panels": pack_linear_weight, "mkl": pack_linear_weight_mkl}


def _default_kind() -> str | None:
    # Nothing here may run MKL or start torch's threads: importing the package must stay safe before a fork (a
    # forkserver imports it, then forks workers). MKL's own check (mkl_packed_linear_available) runs at the first
    # packing, in `packed_weight`.
    if packed_linear_available() and not _AVX512:
        return "panels"
    if _AVX512 and _INTEL and mkl_packed_linear_exported():  # measured on an Intel Xeon only (see above)
        return "mkl"
    return None


#: Which packing the layers use: "panels", "mkl" or None (see above). "panels" needs packed_linear_available(),
#: "mkl" mkl_packed_linear_available() (where that check fails, the layers run F.linear).
kind: str | None = _default_kind()
#: Whether the layers use a packed weight at all (False: every Linear runs torch.nn.functional.linear, i.e. MKL).
enabled: bool = kind is not None
# id(weight) -> (weak reference to the weight, (its version, kind) when packed, its data pointer, the packed tensor).
# Keyed by id (a WeakKeyDictionary would compare tensors with ==); the entry goes when the weight does.
_PACKED: dict[int, tuple] = {}


def clear() -> None:
    """Drop every packed copy (they are remade on demand)."""
    _PACKED.clear()


def _usable(weight: torch.Tensor) -> bool:
    # Not an inference tensor (made under torch.inference_mode): it has no version counter, so an in-place update
    # could not be seen and the copy could go stale; such weights keep nn.Linear.
    return (enabled and kind in _PACKERS and weight.device.type == "cpu" and weight.dtype == torch.float32
            and weight.dim() == 2 and not weight.is_inference())


def packed_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """The packed copy of `weight` (made or remade as needed), or None where the packed kernel cannot run it."""
    if not _usable(weight):
        return None
    hit = _cached(weight)
    if hit is not None:
        return hit
    key, version, ptr = id(weight), weight._version, weight.data_ptr()
    if kind == "mkl" and not mkl_packed_linear_available():  # MKL's check, at the first packing (see _default_kind)
        return None
    with torch.inference_mode(False), torch.no_grad():
        packed = _PACKERS[kind](weight.detach())
    _PACKED[key] = (weakref.ref(weight, lambda _, key=key: _forget(key)), (version, kind), ptr, packed)
    return packed


def packed_weights(weights) -> list:
    """`[packed_weight(w) for w in weights]`, with a weight already packed and unchanged found in one lookup (the
    cached sampler asks for all 192 of GENIE-35M's at every pass). An entry exists only for a weight that was usable
    when packed, and the device, dtype or shape of a tensor cannot change without its data pointer changing."""
    if not (enabled and kind in _PACKERS):
        return [None] * len(weights)
    return [hit if (hit := _cached(w)) is not None else packed_weight(w) for w in weights]


def _cached(weight: torch.Tensor) -> torch.Tensor | None:
    """The packed copy of `weight` if one was made for it as it is now (same tensor, version, storage and kind)."""
    entry = _PACKED.get(id(weight))
    if (entry is not None and entry[0]() is weight and entry[1] == (weight._version, kind)
            and entry[2] == weight.data_ptr()):
        return entry[3]
    return None


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
