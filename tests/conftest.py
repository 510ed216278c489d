"""Test set-up: Triton's interpreter where no GPU is present, and the `gpu` / `slow` markers."""
import os

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    # Must happen before triton is imported: @triton.jit picks the interpreter at decoration time.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch on this machine")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _no_global_backend(monkeypatch):
    """Tests choose backends explicitly; a WMK_BACKEND in the caller's shell must not change them."""
    monkeypatch.delenv("WMK_BACKEND", raising=False)
