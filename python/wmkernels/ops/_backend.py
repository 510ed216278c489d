"""Which implementation runs a call: the compiled kernels, Triton, or the pure-PyTorch reference.

`backend` on a call (or a layer) wins; otherwise the `WMK_BACKEND` environment variable; otherwise
"auto". The names:

- "auto": the compiled kernel for the tensor's device (C++ on CPU, CUDA on a GPU); on a GPU whose
  kernels were not compiled in, Triton.
- "cuda": the compiled CUDA kernel; needs CUDA tensors and a build with CUDA.
- "triton": the Triton kernel; needs Triton, and CUDA tensors or the interpreter (TRITON_INTERPRET=1).
- "reference": the pure-PyTorch reference (any device, slow, the ground truth of the tests).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

from wmkernels._extension import build_info

BACKENDS = ("auto", "cuda", "triton", "reference")
Implementation = Literal["native", "triton", "reference"]


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run the call here (wrong device, not built, not installed)."""


def _with_cuda() -> bool:
    return bool(build_info()["with_cuda"])


def triton_usable(device: torch.device) -> tuple[bool, str]:
    """Whether Triton can run on `device`, and if not, why."""
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed (pip install 'wmkernels[triton]')"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, (
        f"Triton runs on CUDA tensors, or on CPU tensors under its interpreter (set TRITON_INTERPRET=1 "
        f"before importing triton); got a tensor on {device.type}"
    )


def requested_backend(backend: str | None) -> str:
    """The backend name in force for a call: `backend` if given, else $WMK_BACKEND, else "auto"."""
    source = "backend"
    if backend is None:
        backend, source = os.environ.get("WMK_BACKEND", "auto"), "WMK_BACKEND"
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    return backend.lower()


def select(backend: str | None, device: torch.device, op: str) -> Implementation:
    """Resolve `backend` for a call of `op` on tensors on `device`, or raise BackendUnavailableError."""
    name = requested_backend(backend)
    if name == "reference":
        return "reference"
    if name == "triton":
        ok, why = triton_usable(device)
        if not ok:
            raise BackendUnavailableError(f"{op}: backend='triton' cannot run here: {why}")
        return "triton"
    if name == "cuda":
        if device.type != "cuda":
            raise BackendUnavailableError(f"{op}: backend='cuda' needs CUDA tensors; got a tensor on {device.type}")
        if not _with_cuda():
            raise BackendUnavailableError(
                f"{op}: backend='cuda' but this wmkernels was built without CUDA kernels "
                "(build with a CUDA torch and nvcc, WMK_CUDA=ON)"
            )
        return "native"
    # auto
    if device.type == "cuda" and not _with_cuda():
        ok, why = triton_usable(device)
        if not ok:
            raise BackendUnavailableError(
                f"{op}: no CUDA kernels were built into this wmkernels and {why[0].lower()}{why[1:]}"
            )
        return "triton"
    return "native"
