"""fsq_quantize / fsq_decode against the pure-PyTorch reference (DESIGN.md numerics rules)."""
import math

import pytest
import torch

import wmkernels
from tests.helpers import backend_params
from wmkernels import reference

BACKENDS = backend_params()
WITH_REFERENCE = [*BACKENDS, pytest.param("cpu", "reference", id="cpu-reference")]
LEVELS = [[8, 5, 5, 5], [8, 8, 8, 5, 5, 5], [2, 3], [7], [4, 1001, 2]]


def dtypes_for(backend, device):
    if backend == "triton" and device == "cpu":
        return [torch.float32, torch.float16]  # the Triton interpreter has no bfloat16
    return [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def randn(shape, dtype=torch.float32, device="cpu", seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("levels", LEVELS, ids=str)
@pytest.mark.parametrize("lead", [(1,), (7,), (3, 5), (1000,)], ids=str)
def test_quantize_matches_reference(device, backend, levels, lead):
    for dtype in dtypes_for(backend, device):
        z = randn((*lead, len(levels)), dtype, device, seed=len(levels))
        original = z.clone()
        codes, indices = wmkernels.fsq_quantize(z, levels, backend=backend)
        ref_codes, ref_indices = reference.fsq_quantize(z.cpu(), levels)
        assert codes.dtype == dtype and codes.shape == z.shape
        assert indices.dtype == torch.int64 and indices.shape == lead
        # Discrete outputs: the same rounding in the same precision gives the same codes, exactly.
        assert torch.equal(codes.cpu(), ref_codes)
        assert torch.equal(indices.cpu(), ref_indices)
        assert torch.equal(z, original), "the input was modified"
        # Round trip: decode(encode(z)) is the quantized z.
        assert torch.equal(wmkernels.fsq_decode(indices, levels, dtype=dtype, backend=backend), codes)
        assert int(indices.min()) >= 0 and int(indices.max()) < math.prod(levels)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("levels", LEVELS[:3], ids=str)
def test_quantize_gradient_matches_reference(device, backend, levels):
    z64 = randn((37, len(levels)), torch.float64, seed=1)
    weights = randn((37, len(levels)), torch.float64, seed=2)

    def grad_of(fn, z):
        z = z.detach().clone().requires_grad_(True)
        (fn(z)[0].double() * weights.to(z.device)).sum().backward()
        return z.grad

    ref64 = grad_of(lambda t: reference.fsq_quantize(t, levels), z64)
    for dtype in dtypes_for(backend, device):
        z = z64.to(dtype)
        ref = grad_of(lambda t: reference.fsq_quantize(t, levels), z)
        got = grad_of(lambda t: wmkernels.fsq_quantize(t, levels, backend=backend), z.to(device)).cpu()
        ref_err = (ref.double() - ref64).abs().max().item()
        floor = (1e-12 if dtype == torch.float64 else 16 * torch.finfo(dtype).eps) * ref64.abs().max().item()
        err = (got.double() - ref64).abs().max().item()
        assert err <= max(3 * ref_err, floor), f"{dtype}: grad error {err:.3g} vs reference error {ref_err:.3g}"


def test_straight_through_gradient_is_the_bounds_derivative():
    # The codes are piecewise constant, so a numerical gradcheck cannot apply: the straight-through gradient
    # is the derivative of the tanh bound (scaled like the codes), checked in closed form.
    z = randn((5, 4), torch.float64, seed=3).requires_grad_(True)
    fn = lambda t: wmkernels.fsq_quantize(t, [8, 5, 5, 5])[0]  # noqa: E731
    codes = fn(z)
    expected = torch.autograd.grad(codes.sum(), z)[0]
    c = torch.tensor([8.0, 5, 5, 5], dtype=torch.float64)
    half_l = (c - 1) * 1.001 / 2
    shift = torch.atanh(torch.where(c % 2 == 0, 0.5, 0.0) / half_l)
    assert torch.allclose(expected, half_l * (1 - torch.tanh(z.detach() + shift) ** 2) / (c // 2), rtol=1e-12)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3, 4]], ids=str)
def test_decode_every_code(device, backend, levels):
    size = math.prod(levels)
    indices = torch.arange(size, device=device)
    codes = wmkernels.fsq_decode(indices, levels, backend=backend)
    assert torch.equal(codes.cpu(), reference.fsq_decode(indices.cpu(), levels))
    assert codes.unique(dim=0).shape[0] == size
    # Quantizing a code's pre-image gives it back: z = atanh((code * L//2 + offset) / half_l) - shift.
    lv = torch.tensor(levels, dtype=torch.float64)
    half_l = (lv - 1) * 1.001 / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0)
    z = torch.atanh((codes.cpu().double() * (lv // 2) + offset) / half_l) - torch.atanh(offset / half_l)
    assert torch.equal(wmkernels.fsq_quantize(z.to(device), levels, backend=backend)[1].cpu(), indices.cpu())


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_non_contiguous_inputs(device, backend):
    base = randn((4, 7, 6), device=device)
    levels = [8, 8, 8, 5, 5, 5]
    for view in (base.transpose(0, 1), base[:, ::2], base[:1].expand(4, 7, 6), base.permute(2, 1, 0).transpose(0, 2)):
        codes, indices = wmkernels.fsq_quantize(view, levels, backend=backend)
        ref_codes, ref_indices = reference.fsq_quantize(view.cpu(), levels)
        assert torch.equal(codes.cpu(), ref_codes) and torch.equal(indices.cpu(), ref_indices)
        assert torch.equal(wmkernels.fsq_decode(indices.t(), levels, backend=backend).cpu(),
                           reference.fsq_decode(indices.t().cpu(), levels))


@pytest.mark.parametrize("device,backend", WITH_REFERENCE)
def test_empty_inputs(device, backend):
    z = torch.empty((0, 3, 4), device=device, requires_grad=True)
    codes, indices = wmkernels.fsq_quantize(z, [8, 5, 5, 5], backend=backend)
    assert codes.shape == (0, 3, 4) and indices.shape == (0, 3)
    codes.sum().backward()
    assert z.grad.shape == (0, 3, 4)
    assert wmkernels.fsq_decode(indices, [8, 5, 5, 5], backend=backend).shape == (0, 3, 4)


@pytest.mark.parametrize("device,backend", WITH_REFERENCE)
def test_nan_gives_nan_codes_and_index_minus_one(device, backend):
    # Documented: a NaN component gives NaN codes there and the index -1 for its vector (which decode rejects).
    z = randn((3, 4), device=device)
    z[1, 2] = float("nan")
    codes, indices = wmkernels.fsq_quantize(z, [8, 5, 5, 5], backend=backend)
    assert indices[1].item() == -1 and indices[0].item() >= 0 and indices[2].item() >= 0
    assert torch.isnan(codes[1, 2]) and not torch.isnan(codes[[0, 2]]).any() and not torch.isnan(codes[1, :2]).any()
    with pytest.raises(IndexError):
        wmkernels.fsq_decode(indices, [8, 5, 5, 5], backend=backend)


@pytest.mark.parametrize("device,backend", WITH_REFERENCE)
@pytest.mark.parametrize("bad", [1000, -1, 2**40])
def test_index_out_of_range_raises(device, backend, bad):
    indices = torch.randint(0, 1000, (4, 9), device=device)
    indices[3, 8] = bad
    with pytest.raises(IndexError, match=r"indices must lie in \[0, prod\(levels\) = 1000\)"):
        wmkernels.fsq_decode(indices, [8, 5, 5, 5], backend=backend)


def test_bad_arguments_raise():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"every level must be at least 2, got levels\[1\] = 1"):
        wmkernels.fsq_quantize(z, [8, 1, 5, 5])
    with pytest.raises(ValueError, match=r"every level must be at least 2, got levels\[1\] = 1"):
        torch.ops.wmk.fsq_quantize(z, [8, 1, 5, 5])
    with pytest.raises(ValueError, match=r"every level must be at least 2"):
        wmkernels.fsq_decode(torch.zeros(3, dtype=torch.long), [0])
    with pytest.raises(ValueError, match="levels must hold between 1 and 32 entries"):
        wmkernels.fsq_quantize(torch.randn(3, 0), [])
    with pytest.raises(ValueError, match=r"exceeds 2\^62"):
        wmkernels.fsq_decode(torch.zeros(3, dtype=torch.long), [2**31, 2**31, 2])
    with pytest.raises(ValueError, match=r"last dimension of len\(levels\) = 4, got shape \(3, 5\)"):
        wmkernels.fsq_quantize(torch.randn(3, 5), [8, 5, 5, 5])
    with pytest.raises(ValueError, match=r"last dimension of len\(levels\) = 4"):
        torch.ops.wmk.fsq_quantize(torch.randn(3, 5), [8, 5, 5, 5])
    for bad_z in (torch.ones(3, 4, dtype=torch.int64), torch.ones(3, 4, dtype=torch.int32)):
        with pytest.raises(TypeError, match="z must be a floating-point tensor"):
            wmkernels.fsq_quantize(bad_z, [8, 5, 5, 5])
        with pytest.raises(TypeError, match="z must be a floating-point tensor"):
            torch.ops.wmk.fsq_quantize(bad_z, [8, 5, 5, 5])
    with pytest.raises(TypeError, match="indices must be an int32 or int64 tensor"):
        wmkernels.fsq_decode(torch.zeros(3), [8, 5, 5, 5])
    with pytest.raises(TypeError, match="levels must be ints"):
        wmkernels.fsq_quantize(z, [8, 5.0, 5, 5])


@pytest.mark.parametrize(
    "z", [randn((7, 4)), randn((3, 2, 4), torch.float64), randn((4, 6)).t(), randn((5, 4), torch.bfloat16)],
    ids=["f32", "f64-3d", "transposed", "bf16"],
)
def test_opcheck(z):
    levels = [8, 5, 5, 5]
    torch.library.opcheck(torch.ops.wmk.fsq_quantize.default, (z.detach().requires_grad_(True), levels))
    codes, indices = torch.ops.wmk.fsq_quantize(z, levels)
    torch.library.opcheck(torch.ops.wmk.fsq_quantize_backward.default, (torch.ones_like(z), z, levels))
    torch.library.opcheck(torch.ops.wmk.fsq_decode.default, (indices, levels, z.dtype))


def test_torch_compile_fullgraph():
    levels = [8, 8, 8, 5, 5, 5]

    @torch.compile(fullgraph=True, backend="inductor")
    def step(z):
        codes, indices = wmkernels.fsq_quantize(z, levels)
        return codes, indices, wmkernels.fsq_decode(indices, levels)

    z = randn((2, 9, 6)).requires_grad_(True)
    codes, indices, decoded = step(z)
    codes.sum().backward()
    ref_codes, ref_indices = reference.fsq_quantize(z.detach(), levels)
    assert torch.equal(codes, ref_codes) and torch.equal(indices, ref_indices) and torch.equal(decoded, ref_codes)
    zr = z.detach().clone().requires_grad_(True)
    reference.fsq_quantize(zr, levels)[0].sum().backward()
    assert torch.allclose(z.grad, zr.grad, rtol=1e-5, atol=1e-6)
