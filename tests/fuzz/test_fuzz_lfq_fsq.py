"""Fuzz the LFQ and FSQ ops: random shapes, dtypes, layouts, bit counts, levels, special values and bad indices."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import wmkernels
from tests.fuzz.strategies import FLOATS, LAYOUTS, arrange, assert_rule, expect_clear_error, randint, randn, sizes
from wmkernels.reference import fsq as fsq_ref
from wmkernels.reference import lfq as lfq_ref

BACKENDS = ["auto", "reference"]
SPECIALS = [float("nan"), 0.0, -0.0, float("inf"), -float("inf"), 1e-30, -1e-30]


def with_specials(x: torch.Tensor, seed: int, count: int) -> torch.Tensor:
    flat = x.reshape(-1)
    for i in range(min(count, flat.numel())):
        flat[(seed + 7919 * i) % flat.numel()] = SPECIALS[(seed + i) % len(SPECIALS)]
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@given(lead=sizes(3), bits=st.sampled_from([1, 2, 5, 18, 30]), dtype=st.sampled_from(FLOATS),
       order=st.sampled_from(["lsb", "msb"]), layout=st.sampled_from(LAYOUTS), specials=st.integers(0, 4),
       seed=st.integers(0, 2**31))
def test_lfq_encode_decode(backend, lead, bits, dtype, order, layout, specials, seed):
    x = arrange(with_specials(randn((*lead, bits), dtype, seed), seed, specials), layout, seed)
    before = x.clone()
    idx = wmkernels.lfq_encode(x, order, backend=backend)
    assert torch.equal(idx, lfq_ref.lfq_encode(x.contiguous(), order))
    assert torch.equal(x.nan_to_num(3), before.nan_to_num(3)), "x was modified"
    codes = wmkernels.lfq_decode(arrange(idx, layout, seed), bits, order, dtype=dtype, backend=backend)
    assert torch.equal(codes, lfq_ref.lfq_decode(arrange(idx, layout, seed).contiguous(), bits, order, dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=sizes(3), bits=st.sampled_from([1, 3, 18, 30]), bad=st.sampled_from([-1, "size", "max"]),
       idx_dtype=st.sampled_from([torch.int32, torch.int64]), seed=st.integers(0, 2**31))
def test_lfq_decode_out_of_range_raises(backend, shape, bits, bad, idx_dtype, seed):
    idx = randint(shape, 0, 2**bits if bits < 31 else 2**30, idx_dtype, seed)
    if idx.numel() == 0:
        return
    value = {-1: -1, "size": 2**bits, "max": torch.iinfo(idx_dtype).max}[bad]
    idx.view(-1)[seed % idx.numel()] = value
    err = expect_clear_error(lambda: wmkernels.lfq_decode(idx, bits, backend=backend), "indices")
    assert isinstance(err, IndexError)


@pytest.mark.parametrize("backend", ["auto"])
@given(lead=sizes(2, size=st.sampled_from([0, 1, 2, 3, 7, 33])), bits=st.integers(1, 9),
       dtype=st.sampled_from(FLOATS), layout=st.sampled_from(LAYOUTS),
       inv_temperature=st.sampled_from([1e-3, 1.0, 100.0, 1e4]), gamma=st.sampled_from([0.0, 1.0, -2.5]),
       scale=st.sampled_from([0.0, 0.01, 1.0]), seed=st.integers(0, 2**31))
def test_lfq_entropy_loss_matches_reference(backend, lead, bits, dtype, layout, inv_temperature, gamma, scale, seed):
    x = arrange(randn((*lead, bits), dtype, seed, scale), layout, seed)
    leaf = x.detach().clone().requires_grad_()
    loss = wmkernels.lfq_entropy_loss(leaf, inv_temperature, gamma, backend=backend)
    assert loss.shape == () and loss.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    xx = x.detach().clone().requires_grad_()
    ref64 = lfq_ref.lfq_entropy_loss(x64, inv_temperature, gamma)
    ref_x = lfq_ref.lfq_entropy_loss(xx, inv_temperature, gamma)
    # Rounding allowance at the scale of the N summed per-sample entropies (about bits * log 2 each): in float64
    # the reference-in-dtype IS the float64 reference, so only that allowance is left.
    # (and of the 2^bits terms of the codebook entropy when diversity_gamma != 0).
    rows = max(1, x.numel() // bits)
    magnitude = bits * (rows + abs(gamma) * 2**bits)
    assert_rule(loss.detach(), ref64.detach(), ref_x.detach(), 2, "lfq entropy loss", magnitude=magnitude)
    if x.numel() == 0 or dtype in (torch.float16, torch.bfloat16):
        return  # the half-precision reference's gradient is itself mostly rounding
    loss.backward(), ref64.backward(), ref_x.backward()
    # The gradient is a difference of terms of size ~4 * inv_temperature per bit (divided by the N samples),
    # which cancel for small x: rounding is measured at that scale.
    terms = 4 * inv_temperature * bits * (1 + abs(gamma)) / max(1, x.numel() // bits)
    assert_rule(leaf.grad, x64.grad, xx.grad, 3, "lfq entropy loss grad", magnitude=terms)


LEVELS = st.lists(st.sampled_from([2, 3, 4, 5, 7, 8, 16, 1001, 2**20]), min_size=1, max_size=6).filter(
    lambda levels: math.prod(levels) <= 2**62)


@pytest.mark.parametrize("backend", BACKENDS)
@given(lead=sizes(3), levels=LEVELS, dtype=st.sampled_from(FLOATS), layout=st.sampled_from(LAYOUTS),
       scale=st.sampled_from([0.0, 0.1, 1.0, 5.0]), specials=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_fsq_quantize_matches_reference(backend, lead, levels, dtype, layout, scale, specials, seed):
    z = arrange(with_specials(randn((*lead, len(levels)), dtype, seed, scale), seed, specials), layout, seed)
    leaf = z.detach().clone().requires_grad_(dtype in (torch.float32, torch.float64))
    codes, idx = wmkernels.fsq_quantize(leaf, levels, backend=backend)
    ref_codes, ref_idx = fsq_ref.fsq_quantize(z.contiguous(), levels)
    assert codes.dtype == dtype and idx.dtype == torch.int64 and codes.shape == z.shape
    # Rounding boundaries: where tanh lands within a few ulps of a half-integer, either neighbour is right.
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    lv = torch.tensor(levels, dtype=torch.float64)
    half_l = (lv - 1) * 1.001 / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0)
    bounded = torch.tanh(z.double() + torch.atanh(offset / half_l)) * half_l - offset
    near_tie = ((bounded - bounded.floor() - 0.5).abs() < 64 * torch.finfo(compute).eps * (1 + half_l)).any(-1)
    same = (idx == ref_idx) | near_tie
    assert same.all(), f"indices differ away from a rounding tie: {idx[~same][:4]} vs {ref_idx[~same][:4]}"
    exact = ~near_tie
    assert torch.equal(codes[exact].nan_to_num(9), ref_codes[exact].nan_to_num(9))
    nan_rows = z.isnan().any(-1)
    assert (idx[nan_rows] == -1).all() and (idx[~nan_rows] >= 0).all()
    if leaf.requires_grad and codes.numel():
        g = randn(codes.shape, dtype, seed + 1)
        codes.backward(g)
        z64 = z.detach().double().requires_grad_()
        fsq_ref.fsq_quantize(z64, levels)[0].backward(g.double())
        zx = z.detach().clone().requires_grad_()
        fsq_ref.fsq_quantize(zx, levels)[0].backward(g)
        finite = z64.grad.isfinite()
        assert_rule(leaf.grad[finite], z64.grad[finite], zx.grad[finite], 3, "fsq grad")


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=sizes(3), levels=LEVELS, idx_dtype=st.sampled_from([torch.int32, torch.int64]),
       dtype=st.sampled_from(FLOATS), layout=st.sampled_from(LAYOUTS),
       bad=st.sampled_from([None, None, -1, "size", "max"]), seed=st.integers(0, 2**31))
def test_fsq_decode(backend, shape, levels, idx_dtype, dtype, layout, bad, seed):
    size = math.prod(levels)
    idx = randint(shape, 0, min(size, torch.iinfo(idx_dtype).max), idx_dtype, seed)
    if bad is not None and idx.numel():
        value = {-1: -1, "size": size, "max": torch.iinfo(idx_dtype).max}[bad]
        if value <= torch.iinfo(idx_dtype).max:
            idx.view(-1)[seed % idx.numel()] = value
    idx = arrange(idx, layout, seed)
    if bool(((idx.long() < 0) | (idx.long() >= size)).any()):
        err = expect_clear_error(lambda: wmkernels.fsq_decode(idx, levels, dtype=dtype, backend=backend), "indices")
        assert isinstance(err, IndexError)
        return
    codes = wmkernels.fsq_decode(idx, levels, dtype=dtype, backend=backend)
    assert torch.equal(codes, fsq_ref.fsq_decode(idx.contiguous(), levels, dtype))


BAD_ARGS = [
    ("x", lambda: wmkernels.lfq_encode(torch.zeros(3, 4, dtype=torch.long))),
    ("x", lambda: wmkernels.lfq_encode(torch.zeros(3, 31))),
    ("x", lambda: wmkernels.lfq_encode(torch.zeros(3, 0))),
    ("x", lambda: wmkernels.lfq_encode(torch.zeros(()))),
    ("bit_order", lambda: wmkernels.lfq_encode(torch.zeros(3, 4), "big")),
    ("bits", lambda: wmkernels.lfq_decode(torch.zeros(3, dtype=torch.long), 0)),
    ("bits", lambda: wmkernels.lfq_decode(torch.zeros(3, dtype=torch.long), 31)),
    ("bits", lambda: wmkernels.lfq_decode(torch.zeros(3, dtype=torch.long), 3.0)),
    ("indices", lambda: wmkernels.lfq_decode(torch.zeros(3), 4)),
    ("dtype", lambda: wmkernels.lfq_decode(torch.zeros(3, dtype=torch.long), 4, dtype=torch.int32)),
    ("x", lambda: wmkernels.lfq_entropy_loss(torch.zeros(3, 25))),
    ("inv_temperature", lambda: wmkernels.lfq_entropy_loss(torch.zeros(3, 4), 0.0)),
    ("inv_temperature", lambda: wmkernels.lfq_entropy_loss(torch.zeros(3, 4), float("nan"))),
    ("diversity_gamma", lambda: wmkernels.lfq_entropy_loss(torch.zeros(3, 4), 1.0, float("inf"))),
    ("levels", lambda: wmkernels.fsq_quantize(torch.zeros(3, 2), [])),
    ("levels", lambda: wmkernels.fsq_quantize(torch.zeros(3, 2), [1, 5])),
    ("levels", lambda: wmkernels.fsq_quantize(torch.zeros(3, 2), [2**40, 2**40])),
    ("levels", lambda: wmkernels.fsq_quantize(torch.zeros(3, 2), "88")),
    ("levels", lambda: wmkernels.fsq_quantize(torch.zeros(3, 2), [8, 2.5])),
    ("z", lambda: wmkernels.fsq_quantize(torch.zeros(3, 3), [8, 5])),
    ("z", lambda: wmkernels.fsq_quantize(torch.zeros(3, 2, dtype=torch.long), [8, 5])),
    ("indices", lambda: wmkernels.fsq_decode(torch.zeros(3), [8, 5])),
    ("dtype", lambda: wmkernels.fsq_decode(torch.zeros(3, dtype=torch.long), [8, 5], dtype=torch.long)),
    # the compiled ops directly, without the Python checks
    ("bits", lambda: torch.ops.wmk.lfq_encode(torch.zeros(3, 31), "lsb")),
    ("bit_order", lambda: torch.ops.wmk.lfq_decode(torch.zeros(3, dtype=torch.long), 4, "big", None)),
    ("indices", lambda: torch.ops.wmk.lfq_decode(torch.tensor([16]), 4, "lsb", None)),
    ("inv_temperature", lambda: torch.ops.wmk.lfq_entropy_loss(torch.zeros(3, 4), -1.0, 1.0)),
    ("avg_prob", lambda: torch.ops.wmk.lfq_entropy_loss_backward(torch.ones(()), torch.zeros(3, 4), torch.zeros(3),
                                                                 1.0, 1.0)),
    ("levels", lambda: torch.ops.wmk.fsq_quantize(torch.zeros(3, 2), [2**40, 2**40])),
    ("levels", lambda: torch.ops.wmk.fsq_quantize(torch.zeros(3, 33), [2] * 33)),
    ("grad_codes", lambda: torch.ops.wmk.fsq_quantize_backward(torch.zeros(3, 1), torch.zeros(3, 2), [8, 5])),
    ("indices", lambda: torch.ops.wmk.fsq_decode(torch.tensor([40]), [8, 5], None)),
]


@pytest.mark.parametrize("name,call", BAD_ARGS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_ARGS)])
def test_bad_arguments_name_the_argument(name, call):
    expect_clear_error(call, name)
