import pytest
import torch

import wmkernels
from tests.helpers import backend_params
from wmkernels import reference

BACKENDS = backend_params()
SHAPES = [(), (1,), (7,), (3, 5, 7), (2, 16, 16)]
FACTORIZATIONS = [(512, 2), (2, 18), (7, 3), (262144, 1), (10, 5)]


def random_tokens(shape, vocab, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g, dtype=torch.int64).to(dtype).to(device)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("base,num_factors", FACTORIZATIONS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
def test_matches_reference_and_round_trips(device, backend, shape, base, num_factors, dtype):
    tokens = random_tokens(shape, base**num_factors, dtype, device)
    original = tokens.clone()
    factors = wmkernels.factorize_tokens(tokens, base, num_factors, backend=backend)
    expected = reference.factorize_tokens(tokens.cpu(), base, num_factors)
    assert factors.dtype == dtype and factors.device.type == device
    assert torch.equal(factors.cpu(), expected)
    assert torch.equal(wmkernels.unfactorize_tokens(factors, base, backend=backend), tokens)
    assert torch.equal(tokens, original), "the input was modified"


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_vocabulary_edges(device, backend):
    vocab = 512**2
    tokens = torch.tensor([0, 1, 511, 512, vocab - 1], device=device)
    factors = wmkernels.factorize_tokens(tokens, backend=backend)
    assert factors.cpu().tolist() == [[0, 0], [1, 0], [511, 0], [0, 1], [511, 511]]


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_non_contiguous_inputs(device, backend):
    base = random_tokens((6, 9, 4), 512**2, torch.int64, device)
    for view in (base.transpose(0, 2), base[:, ::2], base[:1].expand(6, 9, 4), base[..., 1]):
        assert not view.is_contiguous()
        factors = wmkernels.factorize_tokens(view, backend=backend)
        assert torch.equal(factors.cpu(), reference.factorize_tokens(view.cpu()))
        # The factors' own non-contiguous views invert too.
        assert torch.equal(wmkernels.unfactorize_tokens(factors.transpose(0, 1), backend=backend), view.transpose(0, 1))


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_empty_inputs(device, backend):
    tokens = torch.empty((0, 16, 16), dtype=torch.int64, device=device)
    factors = wmkernels.factorize_tokens(tokens, backend=backend)
    assert factors.shape == (0, 16, 16, 2)
    assert wmkernels.unfactorize_tokens(factors, backend=backend).shape == (0, 16, 16)


@pytest.mark.parametrize("device,backend", [*BACKENDS, pytest.param("cpu", "reference", id="cpu-reference")])
@pytest.mark.parametrize("bad", [2**18, 2**18 + 5, -1, -(2**40)])
def test_out_of_vocabulary_token_raises(device, backend, bad):
    tokens = torch.randint(0, 2**18, (4, 33), device=device)
    tokens[2, 17] = bad
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 262144\)"):
        wmkernels.factorize_tokens(tokens, backend=backend)


@pytest.mark.parametrize("device,backend", [*BACKENDS, pytest.param("cpu", "reference", id="cpu-reference")])
@pytest.mark.parametrize("bad", [512, -1])
def test_out_of_range_factor_raises(device, backend, bad):
    factors = torch.randint(0, 512, (5, 3, 2), device=device)
    factors[4, 1, 1] = bad
    with pytest.raises(ValueError, match=r"factors must lie in \[0, 512\)"):
        wmkernels.unfactorize_tokens(factors, backend=backend)


def test_cpu_kernel_reports_first_bad_index():
    tokens = torch.zeros(100_000, dtype=torch.int64)
    tokens[[40_000, 70_000, 99_999]] = 2**18
    with pytest.raises(ValueError, match="at flat index 40000"):
        torch.ops.wmk.factorize_tokens(tokens, 512, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int16, torch.uint8, torch.bool])
def test_non_index_dtype_raises_type_error(dtype):
    with pytest.raises(TypeError, match=r"tokens must be an int32 or int64 tensor"):
        wmkernels.factorize_tokens(torch.zeros(3, dtype=dtype))
    with pytest.raises(TypeError, match=r"factors must be an int32 or int64 tensor"):
        wmkernels.unfactorize_tokens(torch.zeros(3, 2, dtype=dtype))
    # The op itself rejects them too, for callers of torch.ops.wmk directly.
    with pytest.raises(TypeError, match="int32 or int64"):
        torch.ops.wmk.factorize_tokens(torch.zeros(3, dtype=dtype), 512, 2)


def test_bad_arguments_raise():
    tokens = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="tokens must be a torch.Tensor"):
        wmkernels.factorize_tokens([1, 2, 3])
    with pytest.raises(ValueError, match="factored_vocab_size must be at least 2, got 1"):
        wmkernels.factorize_tokens(tokens, 1)
    with pytest.raises(ValueError, match="num_factors must be at least 1, got 0"):
        wmkernels.factorize_tokens(tokens, 512, 0)
    with pytest.raises(ValueError, match="overflows int64"):
        wmkernels.factorize_tokens(tokens, 2**32, 2)
    with pytest.raises(ValueError, match="0-d tensor"):
        wmkernels.unfactorize_tokens(torch.tensor(3))
    with pytest.raises(ValueError, match="does not fit int32"):
        wmkernels.unfactorize_tokens(torch.zeros(2, 3, dtype=torch.int32), 2**16)
    # The same checks inside the C++ op.
    with pytest.raises(ValueError, match="num_factors must be at least 1"):
        torch.ops.wmk.factorize_tokens(tokens, 512, 0)
    with pytest.raises(ValueError, match="does not fit int32"):
        torch.ops.wmk.unfactorize_tokens(torch.zeros(2, 3, dtype=torch.int32), 2**16)


@pytest.mark.parametrize(
    "args",
    [
        (torch.randint(0, 2**18, (2, 16, 16)), 512, 2),
        (torch.randint(0, 1000, (7,), dtype=torch.int32), 10, 3),
        (torch.randint(0, 2**18, (4, 6)).t(), 512, 2),
    ],
    ids=["genie", "int32", "transposed"],
)
def test_opcheck(args):
    torch.library.opcheck(torch.ops.wmk.factorize_tokens.default, args)
    factors = torch.ops.wmk.factorize_tokens(*args)
    torch.library.opcheck(torch.ops.wmk.unfactorize_tokens.default, (factors, args[1]))


def test_torch_compile_fullgraph():
    @torch.compile(fullgraph=True, backend="inductor")
    def round_trip(tokens):
        factors = wmkernels.factorize_tokens(tokens)
        return factors, wmkernels.unfactorize_tokens(factors + 0)

    tokens = torch.randint(0, 2**18, (2, 4, 16, 16))
    factors, back = round_trip(tokens)
    assert torch.equal(factors, reference.factorize_tokens(tokens))
    assert torch.equal(back, tokens)
