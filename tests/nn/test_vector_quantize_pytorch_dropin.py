"""Drop-in compatibility with vector-quantize-pytorch (a test dependency): FSQ and LFQ.

Its LFQ orders bits most-significant first (our bit_order="msb") and computes its entropies with
log(clamp(p, 1e-5)); our loss is exact, so the two losses differ by about 1e-5 (measured below).
"""
import pytest
import torch

import wmkernels
from tests.helpers import needs_triton
from wmkernels.nn import FiniteScalarQuantizer, LookupFreeQuantizer

vqp = pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch is in the `test` extra")


def randn(shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 8, 8, 5, 5, 5], [7, 5, 3]], ids=str)
@pytest.mark.parametrize("backend", ["auto", pytest.param("triton", marks=needs_triton)])
def test_fsq_same_codes_and_indices(levels, backend):
    theirs = vqp.FSQ(levels)
    ours = FiniteScalarQuantizer(levels, backend=backend)
    z = randn((2, 300 if backend == "auto" else 40, len(levels)), scale=2.0)
    their_codes, their_indices = theirs(z)
    codes, indices, loss = ours(z)
    assert torch.equal(codes, their_codes)
    assert torch.equal(indices, their_indices.long())
    assert torch.equal(ours.indices_to_codes(indices), theirs.indices_to_codes(their_indices))
    # Straight-through gradients agree too.
    za, zb = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    (theirs(za)[0] * z).sum().backward()
    (ours(zb)[0] * z).sum().backward()
    assert torch.allclose(za.grad, zb.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 6, 12])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_lfq_same_indices_and_codes(bits, training):
    theirs = vqp.LFQ(dim=bits, codebook_size=2**bits).train(training)
    ours = LookupFreeQuantizer(bits, bit_order="msb").train(training)
    x = randn((2, 50, bits))
    their_q, their_indices, _ = theirs(x)
    q, indices, _ = ours(x)
    assert torch.equal(indices, their_indices.long())
    assert torch.equal(q, their_q)
    assert torch.equal(ours.indices_to_codes(indices), theirs.indices_to_codes(their_indices))


def clamped_entropy_loss(x, inv_temperature, gamma, eps=1e-5):
    """Their definition, enumerated in float64: entropies with log(clamp(p, eps))."""
    bits = x.shape[-1]
    codes = wmkernels.reference.lfq.all_codes(bits, torch.float64)
    prob = (2 * inv_temperature * x.reshape(-1, bits).double() @ codes.t()).softmax(-1)

    def entropy(p):
        return -(p * p.clamp(min=eps).log()).sum(-1)

    return entropy(prob).mean() - gamma * entropy(prob.mean(0))


@pytest.mark.parametrize("bits,scale", [(4, 1.0), (10, 1.0), (12, 1.0), (10, 0.05), (10, 0.01)])
def test_lfq_entropy_loss_matches_up_to_their_clamp(bits, scale):
    theirs = vqp.LFQ(dim=bits, entropy_loss_weight=1.0, commitment_loss_weight=0.0, diversity_gamma=1.0).train()
    x = randn((3, 40, bits), seed=bits, scale=scale)
    (_, _, their_loss), breakdown = theirs(x, return_loss_breakdown=True)
    assert torch.allclose(their_loss, breakdown.per_sample_entropy - breakdown.batch_entropy)
    # Their loss is the clamped definition (to float32 rounding) ...
    assert abs(their_loss.item() - clamped_entropy_loss(x, 100.0, 1.0).item()) < 2e-6 * bits
    # ... ours the exact one; the two differ only through the clamp. With their default scale of inputs
    # (sharp codes, x ~ N(0, 1)) that is about 1e-5 (measured: 0 at 4 bits, 2.2e-5 at 10, 2.1e-5 at 12);
    # with soft codes (x ~ 0.01) many probabilities fall below 1e-5 and it reaches about 5e-4.
    ours = wmkernels.lfq_entropy_loss(x, 100.0, 1.0)
    exact = wmkernels.reference.lfq_entropy_loss(x.double(), 100.0, 1.0)
    assert abs(ours.item() - exact.item()) < 2e-6 * bits
    if scale == 1.0:
        assert abs(ours.item() - their_loss.item()) < 5e-5
    # The layer's loss with their default weights (entropy 0.1; commitment 0, or 0.25).
    for commitment in (0.0, 0.25):
        theirs = vqp.LFQ(dim=bits, commitment_loss_weight=commitment).train()
        layer = LookupFreeQuantizer(bits, bit_order="msb", commitment_loss_weight=commitment).train()
        expected = their_loss.item() * 0.1 + commitment * (x - x.sign()).square().mean().item()
        assert abs(theirs(x)[2].item() - expected) < 1e-5
        assert abs(layer(x)[2].item() - (ours.item() * 0.1 + commitment * (x - x.sign()).square().mean().item())) < 1e-5


def test_lfq_entropy_loss_gradient_close_to_theirs():
    bits = 8
    x = randn((2, 30, bits), seed=1, scale=0.02)
    xa = x.clone().requires_grad_(True)
    xb, xc, xd = (x.clone().double().requires_grad_(True) for _ in range(3))
    vqp.LFQ(dim=bits, entropy_loss_weight=1.0).train()(xa)[2].backward()
    wmkernels.lfq_entropy_loss(xb, 100.0, 1.0).backward()
    clamped_entropy_loss(xc, 100.0, 1.0).backward()
    wmkernels.reference.lfq_entropy_loss(xd, 100.0, 1.0).backward()
    # Theirs is the gradient of the clamped definition, ours that of the exact one: they differ by no more
    # than the clamp moves the gradient (plus float32 rounding).
    assert torch.allclose(xa.grad.double(), xc.grad, rtol=0, atol=2e-5)
    assert torch.allclose(xb.grad, xd.grad, rtol=0, atol=1e-12)
    clamp_effect = (xc.grad - xd.grad).abs().max().item()
    assert (xb.grad - xa.grad.double()).abs().max().item() <= clamp_effect + 2e-5
