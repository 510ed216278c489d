"""pytest-benchmark of MaskGIT frame sampling (`make bench`): KV-cached vs GENIE's uncached sampler.

A small random model (2 layers, d_model 64, T = 8, S = 256); 4 prompt + 2 new frames, 2 steps, temperature 0.
benchmarks/bench_sampling.py prints the issue-5 table at the GENIE-35M shape. Nothing here asserts a speed.
"""
import pytest
import torch

from wmkernels.models import STMaskGIT
from wmkernels.sampling import maskgit_generate

MODEL = STMaskGIT.from_config(dict(num_layers=2, num_heads=4, d_model=64, T=8, S=256, image_vocab_size=2**18,
                                   num_factored_vocabs=2), generator=torch.Generator().manual_seed(0)).eval()
PROMPT = torch.randint(0, 2**18, (1, 4, 16, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.benchmark(group="maskgit 4+2 frames, 2 steps")
@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
def test_maskgit_generate(benchmark, use_cache):
    def run(cache=use_cache):
        # The random unmasking order is drawn from a generator seeded the same way for both samplers.
        return maskgit_generate(MODEL, PROMPT, 2, steps=2, use_cache=cache, progress=False,
                                generator=torch.Generator().manual_seed(0)).tokens

    tokens = benchmark(run)
    assert torch.equal(tokens, run(not use_cache))
