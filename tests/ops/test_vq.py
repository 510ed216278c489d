"""vq_encode / vq_decode against the pure-PyTorch reference, under DESIGN.md's numerics rules."""
import math

import pytest
import torch

import wmkernels
from tests.helpers import backend_params
from wmkernels import reference

BACKENDS = backend_params()
ALL_BACKENDS = [*BACKENDS, pytest.param("cpu", "reference", id="cpu-reference")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS32 = torch.finfo(torch.float32).eps


def make(n, d, k, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    # Codes near some inputs (not only far-away noise), so the minimum is not a near-tie of random codes.
    c = torch.randn(k, d, generator=g)
    return x.to(dtype).to(device), c.to(dtype).to(device)


def true_distances(x, c, metric):
    """(N, K) float64 distances of the (already rounded) inputs."""
    x64, c64 = x.double().reshape(-1, x.shape[-1]), c.double()
    if metric == "cosine":
        x64 = torch.nn.functional.normalize(x64, dim=-1, eps=1e-12)
        c64 = torch.nn.functional.normalize(c64, dim=-1, eps=1e-12)
        return 1 - x64 @ c64.T
    return torch.cdist(x64, c64).square()


def excess(x, c, indices, metric):
    """How much farther each chosen code is than the true nearest, and the rounding scale of the scores."""
    dist = true_distances(x, c, metric)
    chosen = dist.gather(1, indices.reshape(-1, 1).cpu()).squeeze(1)
    if metric == "cosine":
        scale = torch.full_like(chosen, 4.0)
    else:
        scale = x.double().reshape(-1, x.shape[-1]).square().sum(-1).cpu() + c.double().square().sum(-1).max().cpu()
    return chosen - dist.min(1).values, scale


def check_encode(x, c, metric, backend):
    original = (x.clone(), c.clone())
    indices, distances = wmkernels.vq_encode(x, c, metric, backend=backend)
    assert indices.dtype == torch.int64 and distances.dtype == torch.float32
    assert indices.shape == x.shape[:-1] and distances.shape == x.shape[:-1]
    assert indices.device == x.device and distances.device == x.device
    assert torch.equal(x, original[0]) and torch.equal(c, original[1]), "an input was modified"
    d = x.shape[-1]
    # Nearest-code rule: the chosen code is the nearest within the fp32 rounding of the scores.
    gap, scale = excess(x, c, indices, metric)
    assert (gap <= 4 * (d + 4) * EPS32 * scale).all(), f"max excess {gap.max().item()}"
    # Distances: within 2x the error of the reference computed in the kernel's accumulation dtype (fp32),
    # measured against the float64 reference at the same indices.
    xr, cr = x.reshape(-1, d), c
    exact = reference.vq.chosen_distances(xr.double(), cr.double(), indices.reshape(-1).cpu(), metric)
    ref32 = reference.vq.chosen_distances(xr.float().cpu(), cr.float().cpu(), indices.reshape(-1).cpu(), metric)
    ref_err = (ref32.double() - exact).abs().max().item() if exact.numel() else 0.0
    err = (distances.reshape(-1).double().cpu() - exact).abs().max().item() if exact.numel() else 0.0
    # Plus a few ulps of the quantities summed: the distances themselves (l2), or 1 (cosine: 1 - x^.c^).
    magnitude = 1.0 if metric == "cosine" else (exact.abs().max().item() if exact.numel() else 0.0)
    floor = 4 * math.sqrt(d) * EPS32 * magnitude
    assert err <= 2 * ref_err + floor, f"distance error {err} vs reference {ref_err}"
    return indices, distances


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("k", [1, 17, 8192])
@pytest.mark.parametrize("d", [3, 18, 64, 257])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_cpu_fp32_matches_reference(n, d, k, metric):
    x, c = make(n, d, k, torch.float32)
    check_encode(x, c, metric, "auto")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n,d,k", [(1, 3, 1), (7, 18, 17), (1000, 257, 17), (1000, 64, 8192), (7, 257, 8192)])
def test_cpu_low_precision_matches_reference(n, d, k, metric, dtype):
    x, c = make(n, d, k, dtype)
    check_encode(x, c, metric, "auto")


@pytest.mark.parametrize("device,backend", [p for p in BACKENDS if p.values[1] == "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n,d,k", [(1, 3, 1), (7, 18, 17), (100, 64, 50), (33, 257, 17)])
def test_triton_matches_reference(device, backend, n, d, k, metric, dtype):
    x, c = make(n, d, k, dtype, device)
    check_encode(x, c, metric, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n,d,k", [(1, 3, 1), (7, 18, 17), (1000, 257, 17), (1000, 64, 8192)])
def test_cuda_matches_reference(n, d, k, metric, dtype):
    x, c = make(n, d, k, dtype, "cuda")
    check_encode(x, c, metric, "cuda")


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_cpu_instruction_sets_agree_bitwise(monkeypatch, isa, metric):
    """Every micro-kernel computes each score in the same fma order, so all give identical results."""
    x, c = make(301, 37, 700, torch.float32, seed=3)
    expected = wmkernels.vq_encode(x, c, metric)
    monkeypatch.setenv("WMK_VQ_ISA", isa)
    try:
        got = wmkernels.vq_encode(x, c, metric)
    except RuntimeError as e:
        pytest.skip(f"{isa} kernel not available on this CPU/build: {e}")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_unknown_instruction_set_raises(monkeypatch):
    monkeypatch.setenv("WMK_VQ_ISA", "sse9")
    with pytest.raises(ValueError, match="WMK_VQ_ISA must be scalar, avx2 or avx512"):
        wmkernels.vq_encode(torch.randn(3, 4), torch.randn(5, 4))


@pytest.mark.parametrize("device,backend", ALL_BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_non_contiguous_inputs(device, backend, metric):
    x, c = make(40, 24, 30, torch.float32, device, seed=1)
    xt = x.reshape(8, 5, 24).transpose(0, 1)  # (5, 8, 24) non-contiguous
    ct = c.t().contiguous().t()  # (30, 24) column-major
    cs = torch.randn(30, 48, device=device)[:, ::2]  # strided columns
    for xv, cv in ((xt, ct), (xt, cs), (x[::2], c)):
        assert not (xv.is_contiguous() and cv.is_contiguous())
        indices, distances = check_encode(xv, cv, metric, backend)
        expected, _ = wmkernels.vq_encode(xv.contiguous(), cv.contiguous(), metric, backend=backend)
        assert torch.equal(indices, expected)


@pytest.mark.parametrize("device,backend", ALL_BACKENDS)
def test_ties_pick_the_lowest_index(device, backend):
    c = torch.randn(12, 9, device=device)
    c[7] = c[2]
    c[11] = c[2]
    x = torch.stack([c[2], c[7], c[11], torch.zeros(9, device=device)])
    c2 = torch.zeros(4, 9, device=device)
    c2[1, 0], c2[3, 0] = 1.0, -1.0  # x = 0 is exactly as far from code 1 as from code 3
    indices, distances = wmkernels.vq_encode(x, c, backend=backend)
    assert indices[:3].tolist() == [2, 2, 2]
    assert distances[:3].tolist() == [0.0, 0.0, 0.0]
    assert wmkernels.vq_encode(torch.zeros(1, 9, device=device), c2[[1, 3]], backend=backend)[0].tolist() == [0]
    # Deterministic: the same call gives the same answer.
    assert torch.equal(wmkernels.vq_encode(x, c, backend=backend)[0], indices)


@pytest.mark.parametrize("device,backend", ALL_BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nan_rows_and_codes(device, backend, metric):
    """Documented: a NaN row gets index 0 and a NaN distance; a NaN code is never chosen."""
    x, c = make(6, 10, 8, torch.float32, device, seed=2)
    x[1, 3] = float("nan")
    c[0] = x[4]  # code 0 is exact for row 4
    c[5, 2] = float("nan")
    x[2] = c[5]  # row 2 sits on the NaN code (apart from its NaN entry)
    x[2, 2] = 0.0
    indices, distances = wmkernels.vq_encode(x, c, metric, backend=backend)
    assert indices[1].item() == 0 and math.isnan(distances[1].item())
    assert 5 not in indices.tolist()
    assert not distances[[0, 2, 3, 4, 5]].isnan().any()
    all_nan = torch.full((3, 10), float("nan"), device=device)
    idx, dist = wmkernels.vq_encode(x, all_nan, metric, backend=backend)
    assert idx.tolist() == [0] * 6 and dist.isnan().all()


@pytest.mark.parametrize("device,backend", ALL_BACKENDS)
def test_empty_inputs(device, backend):
    c = torch.randn(5, 4, device=device)
    for shape in [(0, 4), (2, 0, 4)]:
        indices, distances = wmkernels.vq_encode(torch.empty(shape, device=device), c, backend=backend)
        assert indices.shape == shape[:-1] and distances.shape == shape[:-1]
        codes = wmkernels.vq_decode(indices, c, backend=backend)
        assert codes.shape == (*shape[:-1], 4)


@pytest.mark.parametrize("device,backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_round_trip(device, backend, dtype):
    """decode(encode(x)) gives the chosen codes, and the distances are those of x to them."""
    x, c = make(50, 20, 33, torch.float32, device, seed=5)
    c = c.to(dtype)
    search_dtype = dtype if dtype != torch.float64 else torch.float32
    indices, distances = wmkernels.vq_encode(x.to(search_dtype), c.to(search_dtype), backend=backend)
    codes = wmkernels.vq_decode(indices, c, backend=backend)
    assert codes.dtype == dtype and torch.equal(codes, c[indices])
    # Encoding the codes themselves finds them again at distance 0 (the codes are distinct).
    again, dist0 = wmkernels.vq_encode(codes.to(search_dtype), c.to(search_dtype), backend=backend)
    assert torch.equal(again, indices) and (dist0 == 0).all()
    ref = ((x.to(search_dtype).float() - codes.float()) ** 2).sum(-1)
    torch.testing.assert_close(distances, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", ALL_BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
def test_decode_gradient_accumulates_into_codebook(device, backend, index_dtype):
    c = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)
    indices = torch.tensor([[0, 3, 3], [5, 3, 0]], dtype=index_dtype, device=device)
    assert torch.autograd.gradcheck(lambda cb: wmkernels.vq_decode(indices, cb, backend=backend), (c,))
    grad = torch.randn(2, 3, 5, dtype=torch.float64, device=device)
    wmkernels.vq_decode(indices, c, backend=backend).backward(grad)
    expected = torch.zeros(6, 5, dtype=torch.float64, device=device)
    for i, k in enumerate(indices.reshape(-1).tolist()):
        expected[k] += grad.reshape(-1, 5)[i]
    torch.testing.assert_close(c.grad, expected)


@pytest.mark.parametrize("device,backend", ALL_BACKENDS)
@pytest.mark.parametrize("bad", [17, -1, 2**40])
def test_decode_index_outside_codebook_raises(device, backend, bad):
    c = torch.randn(17, 4, device=device)
    indices = torch.randint(0, 17, (3, 50), device=device)
    indices[2, 10] = bad
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 17\)"):
        wmkernels.vq_decode(indices, c, backend=backend)


def test_decode_reports_first_bad_index():
    indices = torch.zeros(10_000, dtype=torch.int64)
    indices[[4_000, 7_000]] = 99
    with pytest.raises(IndexError, match="found 99 at flat index 4000"):
        torch.ops.wmk.vq_decode(indices, torch.randn(3, 2))


@pytest.mark.parametrize("device,backend", ALL_BACKENDS)
def test_encode_bad_input_raises(device, backend):
    x, c = torch.randn(4, 6, device=device), torch.randn(9, 6, device=device)
    with pytest.raises(ValueError, match=r"last dimension of x \(5\) must equal the code dimension D"):
        wmkernels.vq_encode(x[:, :5], c, backend=backend)
    with pytest.raises(TypeError, match="x must be a float32, float16 or bfloat16 tensor, got torch.int64"):
        wmkernels.vq_encode(torch.ones(4, 6, dtype=torch.int64, device=device), c, backend=backend)
    with pytest.raises(TypeError, match="got torch.float64"):
        wmkernels.vq_encode(x.double(), c.double(), backend=backend)
    with pytest.raises(TypeError, match="codebook must have the dtype of x"):
        wmkernels.vq_encode(x, c.half(), backend=backend)
    with pytest.raises(ValueError, match="empty codebook of shape"):
        wmkernels.vq_encode(x, torch.empty(0, 6, device=device), backend=backend)
    with pytest.raises(ValueError, match=r"codebook must be 2-d \(K, D\)"):
        wmkernels.vq_encode(x, c[None], backend=backend)
    with pytest.raises(ValueError, match="metric must be 'l2' or 'cosine', got 'dot'"):
        wmkernels.vq_encode(x, c, "dot", backend=backend)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        wmkernels.vq_encode([[1.0] * 6], c, backend=backend)
    with pytest.raises(TypeError, match="indices must be an int32 or int64 tensor"):
        wmkernels.vq_decode(torch.zeros(3), c, backend=backend)
    with pytest.raises(ValueError, match="empty codebook"):
        wmkernels.vq_decode(torch.zeros(3, dtype=torch.long, device=device), torch.empty(0, 6, device=device),
                            backend=backend)


def test_op_checks_its_arguments_too():
    """Callers of torch.ops.wmk directly get the same errors from the C++ op."""
    x, c = torch.randn(4, 6), torch.randn(9, 6)
    with pytest.raises(ValueError, match="must equal the code dimension D"):
        torch.ops.wmk.vq_encode(x[:, :5], c, "l2")
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        torch.ops.wmk.vq_encode(x.int(), c.int(), "l2")
    with pytest.raises(ValueError, match="empty codebook"):
        torch.ops.wmk.vq_encode(x, torch.empty(0, 6), "l2")
    with pytest.raises(ValueError, match="metric must be 'l2' or 'cosine'"):
        torch.ops.wmk.vq_encode(x, c, "dot")
    with pytest.raises(TypeError, match="int32 or int64"):
        torch.ops.wmk.vq_decode(torch.zeros(3), c)


def test_encode_outputs_do_not_require_grad():
    x = torch.randn(5, 4, requires_grad=True)
    c = torch.randn(7, 4, requires_grad=True)
    indices, distances = wmkernels.vq_encode(x, c)
    assert not indices.requires_grad and not distances.requires_grad


@pytest.mark.parametrize(
    "args",
    [
        (torch.randn(33, 18), torch.randn(17, 18), "l2"),
        (torch.randn(2, 5, 8).half(), torch.randn(9, 8).half(), "cosine"),
        (torch.randn(18, 40).t(), torch.randn(3, 18).bfloat16().float(), "l2"),
    ],
    ids=["fp32", "fp16-cosine", "transposed"],
)
def test_opcheck_encode(args):
    torch.library.opcheck(torch.ops.wmk.vq_encode.default, args)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
def test_opcheck_decode(index_dtype):
    c = torch.randn(11, 6, requires_grad=True)
    indices = torch.randint(0, 11, (4, 7), dtype=index_dtype)
    torch.library.opcheck(torch.ops.wmk.vq_decode.default, (indices, c))
    torch.library.opcheck(torch.ops.wmk.vq_decode.default, (indices.t(), c.detach().double()))


def test_torch_compile_fullgraph():
    @torch.compile(fullgraph=True, backend="inductor")
    def quantize(x, c):
        indices, distances = wmkernels.vq_encode(x, c)
        return wmkernels.vq_decode(indices, c), indices, distances

    x, c = make(64, 16, 40, torch.float32, seed=7)
    codes, indices, distances = quantize(x, c)
    ref_indices, _ = wmkernels.vq_encode(x, c)
    assert torch.equal(indices, ref_indices) and torch.equal(codes, c[ref_indices])
