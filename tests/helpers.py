"""Shared test helpers: which (device, backend) pairs can run here."""
import importlib.util

import pytest
import torch

from wmkernels.ops import _backend

TRITON_MISSING = importlib.util.find_spec("triton") is None
# For a test that runs backend="triton": the package works without Triton (the sanitizer run has none).
needs_triton = pytest.mark.skipif(TRITON_MISSING, reason="Triton is not installed (pip install 'wmkernels[triton]')")


def backend_params():
    """(device, backend) pairs for parametrize: CPU C++ and Triton-interpreter always, GPU ones marked `gpu`."""
    params = [
        pytest.param("cpu", "auto", id="cpu-cpp"),
        pytest.param("cpu", "triton", id="cpu-triton", marks=needs_triton),
        pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.gpu),
        pytest.param("cuda", "triton", id="cuda-triton", marks=[pytest.mark.gpu, needs_triton]),
    ]
    return params


def cuda_kernels_built() -> bool:
    return _backend._with_cuda()
