"""wmkernels.nn.VectorQuantizer: same numbers as the pure-PyTorch reference layer, same indices as
vector-quantize-pytorch's VectorQuantize, compiles with fullgraph=True."""
import copy

import pytest
import torch

from tests.helpers import TRITON_MISSING
from wmkernels import reference
from wmkernels.nn import VectorQuantizer
from wmkernels.reference.vector_quantizer import VectorQuantizer as ReferenceVectorQuantizer

CONFIGS = [
    dict(metric="l2", decay=None),
    dict(metric="cosine", decay=None),
    dict(metric="l2", decay=0.8, threshold_ema_dead_code=2.0),
    dict(metric="cosine", decay=0.9, codebook_dim=8, threshold_ema_dead_code=1.0),
    dict(metric="l2", decay=None, codebook_dim=12, commitment_weight=0.25),
]
IDS = ["l2", "cosine", "l2-ema-dead", "cosine-ema-proj", "l2-proj"]


def pair(dim=16, codebook_size=64, **kwargs):
    torch.manual_seed(0)
    ours = VectorQuantizer(dim, codebook_size, **kwargs)
    ref = ReferenceVectorQuantizer(dim, codebook_size, **kwargs)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def run(layer, x, seed):
    torch.manual_seed(seed)  # the dead-code reset draws random inputs
    x = x.clone().requires_grad_()
    quantized, indices, loss = layer(x)
    (quantized.square().sum() + loss).backward()
    return quantized.detach(), indices, loss.detach(), x.grad


@pytest.mark.parametrize("kwargs", CONFIGS, ids=IDS)
def test_same_numbers_as_reference_layer(kwargs):
    ours, ref = pair(**kwargs)
    x = torch.randn(3, 50, 16)
    for step in range(3):  # several steps, so EMA updates and dead-code resets feed back
        for layer in (ours, ref):
            layer.zero_grad()
        q1, i1, l1, g1 = run(ours, x + step, seed=step)
        q2, i2, l2, g2 = run(ref, x + step, seed=step)
        assert torch.equal(i1, i2)
        torch.testing.assert_close(q1, q2)
        torch.testing.assert_close(l1, l2)
        torch.testing.assert_close(g1, g2)
        for (name, p1), (_, p2) in zip(ours.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p1.grad, p2.grad, msg=name)
        for (name, b1), (_, b2) in zip(ours.named_buffers(), ref.named_buffers()):
            torch.testing.assert_close(b1, b2, msg=name)
    if kwargs["decay"] is not None and kwargs.get("threshold_ema_dead_code", 0) > 0:
        assert (ours.cluster_size >= kwargs["threshold_ema_dead_code"]).all()


@pytest.mark.parametrize("kwargs", CONFIGS, ids=IDS)
def test_encode_decode_round_trip(kwargs):
    ours, _ = pair(**kwargs)
    ours.eval()
    x = torch.randn(2, 30, 16)
    quantized, indices, _ = ours(x)
    assert indices.shape == (2, 30) and indices.dtype == torch.int64
    assert torch.equal(ours.encode(x), indices)
    torch.testing.assert_close(ours.decode(indices), quantized)
    codes = ours.indices_to_codes(indices)
    assert codes.shape == (2, 30, ours.codebook_dim)
    # decode(encode(x)) is the quantized x; encoding its codes finds the same indices.
    cb = ours.codes().detach()
    again, _ = reference.vq_encode(codes.detach(), cb, kwargs["metric"])
    assert torch.equal(again, indices)


def test_straight_through_gradient():
    layer = VectorQuantizer(8, 32, commitment_weight=0.0, decay=None)
    x = torch.randn(5, 8, requires_grad=True)
    quantized, _, _ = layer(x)
    quantized.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert layer.codebook.grad is None or layer.codebook.grad.abs().sum() == 0


def test_learned_codebook_gets_the_codebook_loss_gradient():
    layer = VectorQuantizer(4, 6, commitment_weight=0.0, decay=None)
    x = torch.randn(10, 4)
    _, indices, loss = layer(x)
    loss.backward()
    codes = layer.codebook.detach()[indices]
    expected = torch.zeros_like(layer.codebook).index_add_(0, indices, 2 * (codes - x) / x.numel())
    torch.testing.assert_close(layer.codebook.grad, expected)


@pytest.mark.parametrize("use_cosine_sim", [False, True])
@pytest.mark.parametrize("codebook_dim", [None, 8])
def test_same_indices_as_vector_quantize_pytorch(use_cosine_sim, codebook_dim):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(1)
    theirs = vqp.VectorQuantize(dim=32, codebook_size=512, codebook_dim=codebook_dim,
                                use_cosine_sim=use_cosine_sim, decay=0.8, commitment_weight=1.0).eval()
    # The same keyword arguments: switching is a one-line change.
    ours = VectorQuantizer(dim=32, codebook_size=512, codebook_dim=codebook_dim, use_cosine_sim=use_cosine_sim,
                           decay=0.8, commitment_weight=1.0).eval()
    with torch.no_grad():
        # Their codebook is (num_codebooks=1, K, D); their projections are the same nn.Linear layers.
        ours.codebook.copy_(theirs._codebook.embed[0])
        ours.project_in.load_state_dict(theirs.project_in.state_dict())
        ours.project_out.load_state_dict(theirs.project_out.state_dict())
    x = torch.randn(4, 256, 32)
    their_q, their_indices, _ = theirs(x)
    our_q, our_indices, _ = ours(x)
    assert torch.equal(our_indices, their_indices)
    torch.testing.assert_close(our_q, their_q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [CONFIGS[0], CONFIGS[3]], ids=["l2", "cosine-ema-proj"])
def test_torch_compile_fullgraph(kwargs):
    # Inductor draws its own random numbers unless told to use eager's; the dead-code reset draws some.
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        _compare_compiled_with_eager(kwargs)


def _compare_compiled_with_eager(kwargs):
    ours, _ = pair(**kwargs)
    eager = copy.deepcopy(ours)
    compiled = torch.compile(ours, fullgraph=True, backend="inductor")
    x = torch.randn(2, 40, 16)
    for step in range(2):
        torch.manual_seed(step)
        q1, i1, l1 = compiled(x + step)
        torch.manual_seed(step)
        q2, i2, l2 = eager(x + step)
        assert torch.equal(i1, i2)
        torch.testing.assert_close(q1, q2)
        torch.testing.assert_close(l1, l2)
    ours.eval()
    eager.eval()
    torch.testing.assert_close(compiled(x)[0], eager(x)[0])


@pytest.mark.skipif(TRITON_MISSING, reason="Triton is not installed (pip install 'wmkernels[triton]')")
def test_triton_backend_layer():
    ours, ref = pair(dim=16, codebook_size=20, metric="l2", decay=None)
    ours.backend = "triton"
    x = torch.randn(2, 9, 16)
    q1, i1, l1, g1 = run(ours, x, 0)
    q2, i2, l2, g2 = run(ref, x, 0)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(q1, q2)
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(ours.codebook.grad, ref.codebook.grad)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="metric must be 'l2' or 'cosine', got 'dot'"):
        VectorQuantizer(8, 16, metric="dot")
    with pytest.raises(ValueError, match=r"decay must be None \(learned codebook\) or in \(0, 1\), got 1.5"):
        VectorQuantizer(8, 16, decay=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        VectorQuantizer(8, 0)
    layer = VectorQuantizer(8, 16)
    with pytest.raises(ValueError, match=r"x must have 8 channels in its last dimension, got shape \(3, 7\)"):
        layer(torch.randn(3, 7))
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 16\)"):
        layer.decode(torch.tensor([3, 16]))


def test_empty_input():
    layer = VectorQuantizer(8, 16, decay=0.8, threshold_ema_dead_code=1.0)
    quantized, indices, _ = layer(torch.randn(0, 5, 8))
    assert quantized.shape == (0, 5, 8) and indices.shape == (0, 5)
