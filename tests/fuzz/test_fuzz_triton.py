"""A small fuzz budget for the Triton kernels: their CPU interpreter is slow, so few, tiny cases (fp32/fp16)."""
import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import wmkernels
from tests.fuzz.strategies import LAYOUTS, arrange, assert_rule, randint, randn, sizes
from wmkernels import reference
from wmkernels.reference import attention as ref_attention

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
TINY = settings(max_examples=12)


@TINY
@given(shape=sizes(2, size=st.sampled_from([0, 1, 3])), nf=st.integers(1, 3), layout=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 2**31))
def test_triton_tokens(shape, nf, layout, seed):
    tokens = arrange(randint(shape, 0, 512**nf, torch.int64, seed), layout, seed)
    factors = wmkernels.factorize_tokens(tokens, 512, nf, backend="triton")
    assert torch.equal(factors, reference.factorize_tokens(tokens, 512, nf))
    assert torch.equal(wmkernels.unfactorize_tokens(factors, backend="triton"), tokens)


@TINY
@given(lead=sizes(2, size=st.sampled_from([0, 1, 3])), levels=st.lists(st.sampled_from([2, 5, 8]), min_size=1,
       max_size=3), dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**31))
def test_triton_fsq_lfq(lead, levels, dtype, seed):
    z = randn((*lead, len(levels)), dtype, seed)
    codes, idx = wmkernels.fsq_quantize(z, levels, backend="triton")
    ref_codes, ref_idx = reference.fsq_quantize(z, levels)
    assert torch.equal(idx, ref_idx) and torch.equal(codes, ref_codes)
    assert torch.equal(wmkernels.lfq_encode(z, backend="triton"), reference.lfq_encode(z))


@TINY
@given(axis=st.sampled_from(["spatial", "temporal"]), b=st.sampled_from([0, 1, 2]), t=st.sampled_from([1, 3]),
       s=st.sampled_from([1, 5]), d=st.sampled_from([8, 16]), dtype=st.sampled_from([torch.float32, torch.float16]),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31))
def test_triton_attention(axis, b, t, s, d, dtype, layout, seed):
    q, k, v = (arrange(randn((b, t, s, 1, d), dtype, seed + i), layout, seed) for i in range(3))
    if axis == "spatial":
        out = wmkernels.spatial_attention(q, k, v, backend="triton")
        ref64, ref_x = ref_attention.spatial_attention(q.double(), k.double(), v.double()), \
            ref_attention.spatial_attention(q, k, v)
    else:
        out = wmkernels.temporal_attention(q, k, v, True, backend="triton")
        ref64 = ref_attention.temporal_attention(q.double(), k.double(), v.double(), True)
        ref_x = ref_attention.temporal_attention(q, k, v, True)
    assert_rule(out, ref64, ref_x, 2, f"triton {axis} {dtype}")
