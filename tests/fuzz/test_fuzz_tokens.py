"""Fuzz factorize_tokens / unfactorize_tokens: random shapes, layouts, bases, factor counts and bad values."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import wmkernels
from tests.fuzz.strategies import LAYOUTS, arrange, expect_clear_error, randint, sizes
from wmkernels import reference

BACKENDS = ["auto", "reference"]
INT_DTYPES = st.sampled_from([torch.int32, torch.int64])
BASES = st.sampled_from([2, 3, 7, 512, 1000, 2**16])


@st.composite
def token_case(draw):
    base = draw(BASES)
    nf = draw(st.integers(1, 4).filter(lambda n: base**n <= 2**62))
    dtype = draw(INT_DTYPES)
    vocab = base**nf
    high = min(vocab, 2**31 - 1 if dtype == torch.int32 else 2**62)
    return base, nf, dtype, high, draw(sizes(3)), draw(st.sampled_from(LAYOUTS)), draw(st.integers(0, 2**31))


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=token_case(), bad=st.sampled_from([None, -1, "vocab", "huge"]))
def test_factorize_roundtrip_or_clear_error(backend, case, bad):
    base, nf, dtype, high, shape, layout, seed = case
    values = randint(shape, 0, high, dtype, seed)
    if bad is not None and values.numel() > 0:
        values.view(-1)[seed % values.numel()] = {-1: -1, "vocab": min(base**nf, torch.iinfo(dtype).max),
                                                  "huge": torch.iinfo(dtype).max}[bad]
    tokens = arrange(values, layout, seed)
    original = tokens.clone()
    if bool(((tokens.long() < 0) | (tokens.long() >= base**nf)).any()):
        expect_clear_error(lambda: wmkernels.factorize_tokens(tokens, base, nf, backend=backend), "tokens")
        return
    factors = wmkernels.factorize_tokens(tokens, base, nf, backend=backend)
    assert factors.dtype == dtype and factors.shape == (*shape, nf)
    assert torch.equal(factors, reference.factorize_tokens(tokens.contiguous(), base, nf))
    if dtype == torch.int32 and base**nf - 1 > torch.iinfo(dtype).max:
        return  # int32 factors of a vocabulary past int32: unfactorize refuses them (test_unfactorize_bad...)
    laid_out = arrange(factors, layout, seed)
    back = wmkernels.unfactorize_tokens(laid_out, base, backend=backend)
    assert torch.equal(back, reference.unfactorize_tokens(laid_out.contiguous(), base))
    if layout != "expanded":
        assert torch.equal(back, tokens)
    assert torch.equal(tokens, original), "the input was modified"


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=token_case(), bad=st.sampled_from([-1, "base", "max"]))
def test_unfactorize_bad_factor_raises(backend, case, bad):
    base, nf, dtype, high, shape, layout, seed = case
    if base**nf - 1 > torch.iinfo(dtype).max:
        expect_clear_error(lambda: wmkernels.unfactorize_tokens(torch.zeros(2, nf, dtype=dtype), base,
                                                                backend=backend), "int32", "int64")
        return
    factors = randint((*shape, nf), 0, base, dtype, seed)
    if factors.numel() == 0:
        assert wmkernels.unfactorize_tokens(factors, base, backend=backend).shape == shape
        return
    factors.view(-1)[seed % factors.numel()] = {-1: -1, "base": base, "max": torch.iinfo(dtype).max}[bad]
    factors = arrange(factors, layout, seed)
    if bool(((factors.long() < 0) | (factors.long() >= base)).any()):
        expect_clear_error(lambda: wmkernels.unfactorize_tokens(factors, base, backend=backend), "factors")
    else:  # an expanded layout dropped the bad value
        assert torch.equal(wmkernels.unfactorize_tokens(factors, base, backend=backend),
                           reference.unfactorize_tokens(factors, base))


BAD_ARGS = [
    ("tokens", lambda: wmkernels.factorize_tokens(torch.zeros(3, dtype=torch.float32))),
    ("tokens", lambda: wmkernels.factorize_tokens([1, 2])),
    ("factored_vocab_size", lambda: wmkernels.factorize_tokens(torch.zeros(3, dtype=torch.long), 1)),
    ("factored_vocab_size", lambda: wmkernels.factorize_tokens(torch.zeros(3, dtype=torch.long), 2.5)),
    ("num_factors", lambda: wmkernels.factorize_tokens(torch.zeros(3, dtype=torch.long), 512, 0)),
    ("overflows int64", lambda: wmkernels.factorize_tokens(torch.zeros(3, dtype=torch.long), 2**32, 3)),
    ("factors", lambda: wmkernels.unfactorize_tokens(torch.zeros((), dtype=torch.long))),
    ("factors", lambda: wmkernels.unfactorize_tokens(torch.zeros(3, 2, dtype=torch.bool))),
    ("factored_vocab_size", lambda: wmkernels.unfactorize_tokens(torch.zeros(3, 2, dtype=torch.long), -3)),
    ("backend", lambda: wmkernels.factorize_tokens(torch.zeros(3, dtype=torch.long), backend="gpu")),
]


@pytest.mark.parametrize("name,call", BAD_ARGS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_ARGS)])
def test_bad_arguments_name_the_argument(name, call):
    expect_clear_error(call, name)


# The compiled op directly (torch.ops.wmk.*, skipping the Python checks) must reject the same inputs.
@given(base=st.integers(-3, 2**40), nf=st.integers(-2, 70))
@settings(max_examples=60)
def test_op_arguments_checked_in_cpp(base, nf):
    tokens = torch.arange(4, dtype=torch.long)
    ok = base >= 2 and nf >= 1 and base**nf <= 2**63 - 1
    if ok:
        out = torch.ops.wmk.factorize_tokens(tokens % base, base, nf)
        assert torch.equal(torch.ops.wmk.unfactorize_tokens(out, base), tokens % base)
    else:
        expect_clear_error(lambda: torch.ops.wmk.factorize_tokens(tokens, base, nf), "factored_vocab_size",
                           "num_factors")
