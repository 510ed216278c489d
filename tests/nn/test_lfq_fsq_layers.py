"""LookupFreeQuantizer and FiniteScalarQuantizer: the same numbers as the same layers on the reference ops."""
import pytest
import torch

from tests.helpers import backend_params
from wmkernels import reference
from wmkernels.nn import FiniteScalarQuantizer, LookupFreeQuantizer

BACKENDS = backend_params()


def randn(shape, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def run(layer, x):
    x = x.detach().clone().requires_grad_(True)
    quantized, indices, loss = layer(x)
    total = quantized.float().square().sum() + loss
    if total.requires_grad:  # in eval, LFQ returns the bare codes (no gradient), as vector-quantize-pytorch does
        total.backward()
    return quantized.detach(), indices, loss.detach(), x.grad


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("bit_order", ["lsb", "msb"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_lookup_free_quantizer_matches_reference_layer(device, backend, bit_order, training):
    kwargs = dict(entropy_loss_weight=0.1, commitment_loss_weight=0.25, diversity_gamma=0.9, inv_temperature=3.0,
                  bit_order=bit_order)
    ours = LookupFreeQuantizer(8, backend=backend, **kwargs).train(training)
    ref = LookupFreeQuantizer(8, backend="reference", **kwargs).train(training)
    x = randn((2, 7, 8), scale=0.5)
    q, i, loss, grad = run(ours, x.to(device))
    rq, ri, rloss, rgrad = run(ref, x)
    assert torch.equal(q.cpu(), rq) and torch.equal(i.cpu(), ri)
    assert torch.equal(ours.decode(i), q.sign()) and torch.equal(ours.indices_to_codes(i).cpu(), rq.sign())
    assert torch.allclose(loss.cpu(), rloss, rtol=1e-5, atol=1e-6)
    if training:
        assert torch.allclose(grad.cpu(), rgrad, rtol=1e-4, atol=1e-6)
    else:
        assert grad is None and rgrad is None
        assert loss.item() == 0.0 and torch.equal(q, reference.lfq_decode(i, 8, bit_order).to(device))


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 8, 8, 5, 5, 5]], ids=str)
def test_finite_scalar_quantizer_matches_reference_layer(device, backend, levels):
    ours = FiniteScalarQuantizer(levels, backend=backend)
    ref = FiniteScalarQuantizer(levels, backend="reference")
    x = randn((3, 5, len(levels)), scale=2.0)
    q, i, loss, grad = run(ours, x.to(device))
    rq, ri, rloss, rgrad = run(ref, x)
    assert torch.equal(q.cpu(), rq) and torch.equal(i.cpu(), ri) and loss.item() == 0.0
    assert torch.allclose(grad.cpu(), rgrad, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.encode(x.to(device)), i)
    assert torch.equal(ours.decode(i), q) and torch.equal(ours.indices_to_codes(i), q)
    assert ours.codebook_size == torch.tensor(levels).prod().item()


def test_lookup_free_quantizer_compiles_fullgraph():
    layer = LookupFreeQuantizer(10, commitment_loss_weight=0.25, bit_order="msb").train()
    compiled = torch.compile(layer, fullgraph=True, backend="inductor")
    x = randn((2, 6, 10), scale=0.02)
    q, i, loss, grad = run(compiled, x)
    rq, ri, rloss, rgrad = run(layer, x)
    assert torch.equal(q, rq) and torch.equal(i, ri)
    assert torch.allclose(loss, rloss, rtol=1e-5) and torch.allclose(grad, rgrad, rtol=1e-4, atol=1e-6)


def test_finite_scalar_quantizer_compiles_fullgraph():
    layer = FiniteScalarQuantizer([8, 8, 8, 5, 5, 5])
    compiled = torch.compile(layer, fullgraph=True, backend="inductor")
    x = randn((2, 6, 6), scale=2.0)
    q, i, loss, grad = run(compiled, x)
    rq, ri, rloss, rgrad = run(layer, x)
    assert torch.equal(q, rq) and torch.equal(i, ri) and torch.allclose(grad, rgrad, rtol=1e-5, atol=1e-6)


def test_layers_reject_bad_configuration():
    with pytest.raises(ValueError, match=r"bits must be an int in \[1, 30\], got 31"):
        LookupFreeQuantizer(31)
    with pytest.raises(ValueError, match="bit_order must be 'lsb' or 'msb'"):
        LookupFreeQuantizer(8, bit_order="little")
    with pytest.raises(ValueError, match="x must have a last dimension of bits = 8"):
        LookupFreeQuantizer(8)(torch.randn(2, 9))
    with pytest.raises(ValueError, match=r"every level must be at least 2, got levels\[0\] = 1"):
        FiniteScalarQuantizer([1, 5])
    with pytest.raises(ValueError, match=r"last dimension of len\(levels\) = 2"):
        FiniteScalarQuantizer([8, 5])(torch.randn(2, 3))
