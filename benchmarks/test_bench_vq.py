"""pytest-benchmark micro-benchmarks of vq_encode and its PyTorch baselines (`make bench`).

A smaller problem than benchmarks/bench_vq.py (which prints the issue-3 ratio table): N = 8192,
D = 64, K = 8192, fp32, CPU. Compare the groups' medians; nothing here asserts a speed.
"""
import pytest
import torch

import wmkernels

N, D, K = 8192, 64, 8192


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)


def _addmm_chunked(x, c, rows=1024):
    c2 = c.square().sum(1)
    return torch.cat([torch.addmm(c2, x[i : i + rows], c.T, alpha=-2).argmin(1) for i in range(0, x.shape[0], rows)])


@pytest.mark.benchmark(group="vq_encode N=8192 D=64 K=8192")
@pytest.mark.parametrize(
    "method",
    ["wmkernels", "addmm+argmin", "addmm+argmin chunked", "cdist+argmin"],
)
def test_vq_encode(benchmark, data, method):
    x, c = data
    fns = {
        "wmkernels": lambda: wmkernels.vq_encode(x, c)[0],
        "addmm+argmin": lambda: torch.addmm(c.square().sum(1), x, c.T, alpha=-2).argmin(1),
        "addmm+argmin chunked": lambda: _addmm_chunked(x, c),
        "cdist+argmin": lambda: torch.cdist(x, c).argmin(1),
    }
    indices = benchmark(fns[method])
    # Every method must find the same codes (these random inputs have no near-ties at fp32 rounding).
    assert torch.equal(indices, wmkernels.vq_encode(x, c)[0])


@pytest.mark.benchmark(group="vq_decode N=65536 D=64 K=8192")
@pytest.mark.parametrize("method", ["wmkernels", "index"])
def test_vq_decode(benchmark, data, method):
    _, c = data
    indices = torch.randint(0, K, (65536,), generator=torch.Generator().manual_seed(1))
    fn = (lambda: wmkernels.vq_decode(indices, c)) if method == "wmkernels" else (lambda: c[indices])
    codes = benchmark(fn)
    assert torch.equal(codes, c[indices])
