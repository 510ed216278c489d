"""Fuzz vq_encode / vq_decode: random shapes (0 and 1 included), dtypes, layouts, metrics, NaN rows and codes."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import wmkernels
from tests.fuzz.strategies import LAYOUTS, arrange, expect_clear_error, randint, randn, sizes
from wmkernels.reference import vq as ref

BACKENDS = ["auto", "reference"]
ENCODE_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def encode_case(draw):
    return dict(
        lead=draw(sizes(3)), d=draw(st.sampled_from([1, 2, 3, 8, 17, 64])), k=draw(st.sampled_from([1, 2, 5, 33, 300])),
        dtype=draw(st.sampled_from(ENCODE_DTYPES)), metric=draw(st.sampled_from(["l2", "cosine"])),
        x_layout=draw(st.sampled_from(LAYOUTS)), cb_layout=draw(st.sampled_from(LAYOUTS)),
        scale=draw(st.sampled_from([0.0, 1e-3, 1.0, 50.0])), nan=draw(st.sampled_from([None, "x", "code"])),
        duplicate=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


def _scores64(x, codebook, metric):
    x64, c64 = x.double().reshape(-1, x.shape[-1]), codebook.double()
    if metric == "cosine":
        return 1 - ref._unit(x64) @ ref._unit(c64).T
    return torch.cdist(x64, c64).pow(2)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=encode_case())
def test_vq_encode_picks_a_nearest_code(backend, case):
    c = case
    x = arrange(randn((*c["lead"], c["d"]), c["dtype"], c["seed"], c["scale"]), c["x_layout"], c["seed"])
    codebook = randn((c["k"], c["d"]), c["dtype"], c["seed"] + 1, max(c["scale"], 1e-3))
    if c["duplicate"] and c["k"] > 1:
        codebook[-1] = codebook[0]  # an exact tie: the lowest index must win
    if c["nan"] == "x" and x.numel() and c["x_layout"] != "expanded":
        x[(0,) * (x.dim() - 1)][0] = float("nan")
    if c["nan"] == "code" and c["k"] > 1:
        codebook[1, 0] = float("nan")
    codebook = arrange(codebook, c["cb_layout"], c["seed"])
    x_before, cb_before = x.clone(), codebook.clone()
    indices, distances = wmkernels.vq_encode(x, codebook, c["metric"], backend=backend)
    assert indices.shape == x.shape[:-1] and indices.dtype == torch.int64 and distances.dtype == torch.float32
    assert torch.equal(x, x_before) or bool(x.isnan().any()), "x was modified"
    assert torch.equal(codebook.nan_to_num(7), cb_before.nan_to_num(7)), "codebook was modified"
    if x.numel() == 0:
        return
    flat_idx, flat_dist = indices.reshape(-1), distances.reshape(-1)
    scores = _scores64(x, codebook, c["metric"])
    nan_rows = x.reshape(-1, c["d"]).isnan().any(-1)
    assert torch.equal(flat_idx[nan_rows], torch.zeros_like(flat_idx[nan_rows])), "a NaN row must get index 0"
    assert flat_dist[nan_rows].isnan().all()
    ok = ~nan_rows
    if not ok.any():
        return
    assert ((flat_idx[ok] >= 0) & (flat_idx[ok] < c["k"])).all()
    nan_codes = codebook.isnan().any(-1)
    if not nan_codes.all():
        assert not nan_codes[flat_idx[ok]].any(), "a code holding a NaN was chosen"
    s = scores[ok].masked_fill(nan_codes, float("inf"))
    chosen, best = s.gather(1, flat_idx[ok, None])[:, 0], s.min(1).values
    # Rounding of the fp32 search: a few ulps of the terms |x|^2, |c|^2 summed over D.
    x64 = x.double().reshape(-1, c["d"])[ok]
    mag = x64.pow(2).sum(-1) + codebook.double().nan_to_num(0).pow(2).sum(-1).max() + 1e-30
    tol = 8 * c["d"] * 2.0**-23 * (mag if c["metric"] == "l2" else 2 + 0 * mag)
    assert (chosen - best <= tol).all(), f"not a nearest code: {(chosen - best).max()} > {tol.max()}"
    # The C++ kernel computes every code's score with the same FMA sequence, so equal codes tie exactly and the
    # lowest index wins; the reference's matmul may round equal rows differently (DESIGN.md allows either there).
    if backend == "auto" and c["k"] > 1 and torch.equal(codebook[0], codebook[-1]):
        assert not (flat_idx[ok] == c["k"] - 1).any(), "an exact tie must go to the lowest index"
    assert torch.allclose(flat_dist[ok].double(), chosen, rtol=1e-4, atol=float(tol.max()))


@st.composite
def decode_case(draw):
    return dict(shape=draw(sizes(3)), k=draw(st.sampled_from([1, 2, 7, 300])), d=draw(st.sampled_from([1, 3, 16])),
                idx_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
                cb_dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64])),
                idx_layout=draw(st.sampled_from(LAYOUTS)), cb_layout=draw(st.sampled_from(LAYOUTS)),
                bad=draw(st.sampled_from([None, None, -1, "k", "max"])), grad=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=decode_case())
def test_vq_decode_gathers_or_raises_index_error(backend, case):
    c = case
    idx = randint(c["shape"], 0, c["k"], c["idx_dtype"], c["seed"])
    if c["bad"] is not None and idx.numel():
        idx.view(-1)[c["seed"] % idx.numel()] = {-1: -1, "k": c["k"], "max": torch.iinfo(c["idx_dtype"]).max}[c["bad"]]
    idx = arrange(idx, c["idx_layout"], c["seed"])
    codebook = arrange(randn((c["k"], c["d"]), c["cb_dtype"], c["seed"]), c["cb_layout"], c["seed"])
    if bool(((idx < 0) | (idx >= c["k"])).any()):
        err = expect_clear_error(lambda: wmkernels.vq_decode(idx, codebook, backend=backend), "indices")
        assert isinstance(err, IndexError)
        return
    leaf = codebook.detach().clone().requires_grad_(c["grad"] and c["cb_dtype"] in (torch.float32, torch.float64))
    out = wmkernels.vq_decode(idx, leaf, backend=backend)
    assert out.dtype == c["cb_dtype"] and torch.equal(out, codebook[idx.long()])
    if leaf.requires_grad:
        g = randn(out.shape, c["cb_dtype"], c["seed"] + 2)
        out.backward(g)
        expected = torch.zeros(leaf.shape, dtype=torch.float64).index_add_(0, idx.reshape(-1).long(),
                                                                           g.double().reshape(-1, c["d"]))
        torch.testing.assert_close(leaf.grad.double(), expected, rtol=1e-5, atol=1e-5)


BAD_ARGS = [
    ("x", lambda: wmkernels.vq_encode(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64))),
    ("x", lambda: wmkernels.vq_encode(torch.zeros(()), torch.zeros(2, 4))),
    ("x", lambda: wmkernels.vq_encode(torch.zeros(3, 5), torch.zeros(2, 4))),
    ("codebook", lambda: wmkernels.vq_encode(torch.zeros(3, 4), torch.zeros(2, 4).half())),
    ("codebook", lambda: wmkernels.vq_encode(torch.zeros(3, 4), torch.zeros(0, 4))),
    ("codebook", lambda: wmkernels.vq_encode(torch.zeros(3, 4), torch.zeros(4))),
    ("metric", lambda: wmkernels.vq_encode(torch.zeros(3, 4), torch.zeros(2, 4), "dot")),
    ("indices", lambda: wmkernels.vq_decode(torch.zeros(3), torch.zeros(2, 4))),
    ("indices", lambda: wmkernels.vq_decode([0, 1], torch.zeros(2, 4))),
    ("codebook", lambda: wmkernels.vq_decode(torch.zeros(3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))),
    ("codebook", lambda: wmkernels.vq_decode(torch.zeros(3, dtype=torch.long), torch.zeros(2, 0))),
    # the compiled ops directly, without the Python checks
    ("codebook", lambda: torch.ops.wmk.vq_encode(torch.zeros(3, 4), torch.zeros(2, 4).half(), "l2")),
    ("metric", lambda: torch.ops.wmk.vq_encode(torch.zeros(3, 4), torch.zeros(2, 4), "dot")),
    ("indices", lambda: torch.ops.wmk.vq_decode(torch.tensor([0, 5]), torch.zeros(2, 4))),
    ("codebook", lambda: torch.ops.wmk.vq_decode(torch.tensor([0]), torch.zeros(0, 4))),
]


@pytest.mark.parametrize("name,call", BAD_ARGS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_ARGS)])
def test_bad_arguments_name_the_argument(name, call):
    expect_clear_error(call, name)
