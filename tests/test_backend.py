import pytest
import torch

import wmkernels
from tests.helpers import needs_triton
from wmkernels.ops import _backend

CPU = torch.device("cpu")
GPU = torch.device("cuda")


def test_default_is_auto_and_cpu_uses_the_compiled_kernel():
    assert _backend.requested_backend(None) == "auto"
    assert _backend.select(None, CPU, "op") == "native"
    assert _backend.select("reference", CPU, "op") == "reference"


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("WMK_BACKEND", "reference")
    assert _backend.select(None, CPU, "op") == "reference"
    # An explicit backend on the call wins over the environment.
    assert _backend.select("auto", CPU, "op") == "native"
    monkeypatch.setenv("WMK_BACKEND", "Triton")
    assert _backend.requested_backend(None) == "triton"


def test_environment_backend_reaches_the_op(monkeypatch):
    calls = []
    real = wmkernels.reference.factorize_tokens

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(wmkernels.reference, "factorize_tokens", spy)
    monkeypatch.setenv("WMK_BACKEND", "reference")
    wmkernels.factorize_tokens(torch.arange(5))
    assert len(calls) == 1
    monkeypatch.delenv("WMK_BACKEND")
    wmkernels.factorize_tokens(torch.arange(5))
    assert len(calls) == 1


def test_unknown_backend_names_the_source(monkeypatch):
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'cudnn'"):
        wmkernels.factorize_tokens(torch.arange(3), backend="cudnn")
    monkeypatch.setenv("WMK_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"WMK_BACKEND must be one of .*got 'fast'"):
        wmkernels.factorize_tokens(torch.arange(3))


def test_cuda_backend_on_cpu_tensors_raises():
    with pytest.raises(wmkernels.BackendUnavailableError, match="backend='cuda' needs CUDA tensors; got a tensor on cpu"):
        wmkernels.factorize_tokens(torch.arange(3), backend="cuda")


def test_cuda_backend_without_cuda_build_raises(monkeypatch):
    monkeypatch.setattr(_backend, "_with_cuda", lambda: False)
    with pytest.raises(wmkernels.BackendUnavailableError, match="built without CUDA kernels"):
        _backend.select("cuda", GPU, "op")


def test_auto_on_gpu_without_cuda_build_falls_back_to_triton(monkeypatch):
    monkeypatch.setattr(_backend, "_with_cuda", lambda: False)
    monkeypatch.setattr(_backend, "triton_usable", lambda device: (True, ""))
    assert _backend.select("auto", GPU, "op") == "triton"
    monkeypatch.setattr(_backend, "triton_usable", lambda device: (False, "Triton is not installed"))
    with pytest.raises(wmkernels.BackendUnavailableError, match="no CUDA kernels were built.*triton is not installed"):
        _backend.select("auto", GPU, "op")


@needs_triton
def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(wmkernels.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        wmkernels.factorize_tokens(torch.arange(3), backend="triton")


def test_triton_missing_raises(monkeypatch):
    monkeypatch.setattr(_backend.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(wmkernels.BackendUnavailableError, match="Triton is not installed"):
        wmkernels.factorize_tokens(torch.arange(3), backend="triton")
