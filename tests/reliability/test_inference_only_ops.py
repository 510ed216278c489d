"""The inference-only ops (frame decoding, the prepacked Linear, the fused decode pass) refuse a backward pass.

Called with an input that requires grad while grad mode is on, each runs and returns what it returns without
autograd, but a backward pass through its output raises, naming the op, instead of autograd's not-implemented
fallback warning and leaving the inputs without a gradient (common/inference_only.h).
"""
import warnings

import pytest
import torch

from tests.nn.test_st_transformer_decode import _op_args
from wmkernels.ops.linear import pack_linear_weight

B, S, H, D, T_MAX = 2, 5, 2, 8, 4


def _gen():
    return torch.Generator().manual_seed(0)


def _frame_decode_attention(grad_of):
    g = _gen()
    q = torch.randn(B, S, H, D, generator=g)
    kc, vc = (torch.randn(B, T_MAX, S, H, D, generator=g) for _ in range(2))
    args = dict(q=q, k_cache=kc, v_cache=vc)
    args[grad_of].requires_grad_(True)
    return lambda: torch.ops.wmk.frame_decode_attention(args["q"], kc, vc, torch.tensor(3), 0.5), args[grad_of]


def _frame_decode_step(grad_of):
    g = _gen()
    q, k, v = (torch.randn(B, S, H, D, generator=g) for _ in range(3))
    kc, vc = (torch.randn(B, T_MAX, S, H, D, generator=g) for _ in range(2))
    w = torch.ones(D)
    args = dict(q=q, k=k, v=v, qk_norm_weight=w)
    args[grad_of].requires_grad_(True)
    return (lambda: torch.ops.wmk.frame_decode_step(q, k, v, kc, vc, torch.tensor(2), 0.5, w, None, 1e-5),
            args[grad_of])


def _linear_prepacked(grad_of):
    g = _gen()
    x, weight, bias = torch.randn(3, 8, generator=g), torch.randn(20, 8, generator=g), torch.randn(20, generator=g)
    packed = pack_linear_weight(weight)
    args = dict(x=x, weight=weight, bias=bias)
    args[grad_of].requires_grad_(True)
    return lambda: torch.ops.wmk.linear_prepacked(x, weight, bias, packed), args[grad_of]


def _st_transformer_decode(grad_of):
    model, x, params, cache, (heads, scales, eps, packed, approximate) = _op_args()
    if grad_of == "x":
        x.requires_grad_(True)
        leaf = x
    else:  # a parameter, as the layers hold them
        leaf = next(p for p in params if p is not None)
        assert leaf.requires_grad
    return (lambda: torch.ops.wmk.st_transformer_decode(x, params, cache.k, cache.v, torch.tensor([2]), heads, scales,
                                                        eps, packed, approximate, True, False), leaf)


CASES = {
    "frame_decode_attention-q": (_frame_decode_attention, "q"),
    "frame_decode_attention-k_cache": (_frame_decode_attention, "k_cache"),
    "frame_decode_step-k": (_frame_decode_step, "k"),
    "frame_decode_step-qk_norm_weight": (_frame_decode_step, "qk_norm_weight"),
    "linear_prepacked-x": (_linear_prepacked, "x"),
    "linear_prepacked-weight": (_linear_prepacked, "weight"),
    "st_transformer_decode-x": (_st_transformer_decode, "x"),
    "st_transformer_decode-parameter": (_st_transformer_decode, "parameter"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_backward_raises_naming_the_op(case):
    make, grad_of = CASES[case]
    call, leaf = make(grad_of)
    op = case.split("-")[0]
    with torch.no_grad():
        want = call()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no not-implemented fallback warning, at the call or the backward
        out = call()
        assert torch.equal(out, want)  # the forward is the op's, as without autograd
        assert out.requires_grad
        with pytest.raises(RuntimeError, match=f"wmk::{op} has no backward: it is an inference-only op"):
            out.sum().backward()
    assert leaf.grad is None


@pytest.mark.parametrize("case", ["frame_decode_attention-q", "linear_prepacked-weight", "st_transformer_decode-x"])
def test_no_graph_without_grad_mode(case):
    make, grad_of = CASES[case]
    call, _ = make(grad_of)
    with torch.no_grad():
        assert not call().requires_grad
    with torch.inference_mode():
        assert not call().requires_grad
