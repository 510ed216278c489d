"""pytest-benchmark: one GENIE-35M block's spatial + temporal attention (see bench_attention.py for the ratios)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_attention import METHODS, inputs, run_once  # noqa: E402


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
def test_st_block_attention(benchmark, method, backward):
    xs = inputs(requires_grad=backward)
    with torch.set_grad_enabled(backward):
        benchmark(run_once, method, backward, xs)
