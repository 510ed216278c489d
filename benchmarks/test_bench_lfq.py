"""pytest-benchmark: lfq_entropy_loss at 18 bits (streaming kernel) and the enumeration reference at small N.

    .venv/bin/python -m pytest benchmarks/test_bench_lfq.py --benchmark-only
"""
import pytest
import torch

import wmkernels
from wmkernels import reference

BITS = 18


def _x(n):
    torch.manual_seed(0)
    return torch.randn(n, BITS) * 0.05


@pytest.mark.parametrize("n", [1024, 4096])
def test_lfq_entropy_loss_streaming(benchmark, n):
    x = _x(n)
    loss = benchmark(wmkernels.lfq_entropy_loss, x, 100.0, 1.0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("n", [1024, 4096])
def test_lfq_entropy_loss_streaming_forward_backward(benchmark, n):
    x = _x(n).requires_grad_(True)

    def step():
        wmkernels.lfq_entropy_loss(x, 100.0, 1.0).backward()
        x.grad = None

    benchmark(step)


@pytest.mark.parametrize("n", [64])
def test_lfq_entropy_loss_reference_enumeration(benchmark, n):
    x = _x(n)
    loss = benchmark(reference.lfq_entropy_loss, x, 100.0, 1.0)
    assert torch.isfinite(loss)
