"""pytest-benchmark micro-benchmarks of FSQ quantization (`make bench`): kernel vs reference, Cosmos levels.

z: (65536, 6) fp32, levels [8, 8, 8, 5, 5, 5]. Nothing here asserts a speed.
"""
import pytest
import torch

import wmkernels
from wmkernels import reference

LEVELS = [8, 8, 8, 5, 5, 5]
Z = torch.randn(65536, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.benchmark(group="fsq_quantize (65536, 6)")
@pytest.mark.parametrize("method", ["wmkernels", "reference"])
def test_fsq_quantize(benchmark, method):
    fn = {"wmkernels": wmkernels.fsq_quantize, "reference": reference.fsq_quantize}[method]
    _, indices = benchmark(fn, Z, LEVELS)
    assert torch.equal(indices, reference.fsq_quantize(Z, LEVELS)[1])
