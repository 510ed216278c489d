"""One small test per defect the hardening work found (each failed before its fix; see README "Reliability")."""
import pytest
import torch

import wmkernels
from tests.helpers import backend_params
from tests.reliability.test_determinism import with_threads
from wmkernels import reference


def test_reference_factorize_accepts_int32_tokens_of_a_vocabulary_past_2_31():
    # int32 tokens compared with a vocabulary of 512^4 = 2^36 wrapped, and valid tokens were refused.
    tokens = torch.tensor([818069386, 0, 2**31 - 1], dtype=torch.int32)
    expected = wmkernels.factorize_tokens(tokens, 512, 4)
    assert torch.equal(reference.factorize_tokens(tokens, 512, 4), expected)
    assert torch.equal(wmkernels.factorize_tokens(tokens, 512, 4, backend="reference"), expected)


def test_reference_fsq_decode_accepts_int32_indices_of_a_codebook_past_2_31():
    indices = torch.tensor([818069386, 2**31 - 1], dtype=torch.int32)
    levels = [2, 2, 1001, 2**20]
    assert torch.equal(wmkernels.fsq_decode(indices, levels, backend="reference"), wmkernels.fsq_decode(indices, levels))


@pytest.mark.parametrize("bad", [0, 6])
def test_reference_frame_decode_refuses_out_of_range_counts_on_cpu(bad):
    # The reference silently returned NaN (0 frames) or attended past the count (> T_max).
    q, kc = torch.randn(2, 4, 2, 8), torch.randn(2, 5, 4, 2, 8)
    with pytest.raises(ValueError, match=r"num_frames must lie in \[1, T_max = 5\]"):
        wmkernels.frame_decode_attention(q, kc, kc, torch.tensor([3, bad]), backend="reference")


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_reference_attention_refuses_a_non_finite_scale(scale):
    q = torch.randn(1, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="scale must be finite"):
        wmkernels.spatial_attention(q, q, q, scale, backend="reference")


def test_qk_norm_gradients_do_not_depend_on_the_thread_count():
    # Per-thread partial sums of d(weight), d(bias) were added in a thread-count-dependent grouping.
    def grads():
        q, k, v = (torch.randn(2, 16, 48, 4, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
        w = torch.ones(32, requires_grad=True)
        b = torch.zeros(32, requires_grad=True)
        wmkernels.temporal_attention(q, k, v, qk_norm_weight=w, qk_norm_bias=b).sum().backward()
        return w.grad, b.grad

    one, two = with_threads(1, grads), with_threads(2, grads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_lfq_entropy_loss_float64_does_not_depend_on_the_thread_count():
    # at::parallel_reduce summed one partial per thread: visible in float64 from 15 bits (2^15-entry tables) up.
    x = 0.01 * torch.randn(3000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(with_threads(1, lambda: wmkernels.lfq_entropy_loss(x)),
                       with_threads(2, lambda: wmkernels.lfq_entropy_loss(x)))


@pytest.mark.parametrize("device,backend", backend_params())
def test_qk_norm_of_a_constant_row_keeps_reference_accuracy(device, backend):
    # The rounded mean of a constant row left x - mean a few ulps off zero, which the LayerNorm's 1/sqrt(eps)
    # amplified 300x: the output was ~100x further from the float64 reference than the float32 reference is.
    import torch.nn.functional as F

    from wmkernels.reference import attention as ref

    from tests.fuzz.strategies import randn
    from tests.fuzz.test_fuzz_attention import make_inputs

    # The case the fuzzer found: q expanded along the head dim (every entry of a row equal).
    case = dict(shape=(1, 2, 1, 1, 8), tk=2, dtype=torch.float32, layouts=["expanded", "contiguous", "contiguous"],
                seed=0)
    q, k, v = make_inputs(case)
    assert q.stride(-1) == 0
    w = (1 + 0.3 * randn((8,), torch.float64, 5)).float()

    def reference_out(q, k, v, w):
        q, k = F.layer_norm(q, (8,), w, None, 1e-5), F.layer_norm(k, (8,), w, None, 1e-5)
        return ref.temporal_attention(q, k, v, False)

    out = wmkernels.temporal_attention(q.to(device), k.to(device), v.to(device), False,
                                       qk_norm_weight=w.to(device), backend=backend).cpu()
    ref64 = reference_out(q.double(), k.double(), v.double(), w.double())
    ref32_err = (reference_out(q, k, v, w).double() - ref64).abs().max().item()
    assert (out.double() - ref64).abs().max().item() <= 2 * ref32_err + 16 * torch.finfo(torch.float32).eps
