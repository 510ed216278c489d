"""pytest-benchmark micro-benchmarks of the token factorization (`make bench`): kernel vs the GENIE composition.

A 16-frame window batch of 1X tokens: (8, 16, 16, 16) int64. Nothing here asserts a speed.
"""
import pytest
import torch

import wmkernels
from wmkernels import reference

TOKENS = torch.randint(0, 2**18, (8, 16, 16, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.benchmark(group="factorize_tokens (8, 16, 16, 16)")
@pytest.mark.parametrize("method", ["wmkernels", "reference"])
def test_factorize_tokens(benchmark, method):
    fn = {"wmkernels": wmkernels.factorize_tokens, "reference": reference.factorize_tokens}[method]
    factors = benchmark(fn, TOKENS)
    assert torch.equal(factors, reference.factorize_tokens(TOKENS))
