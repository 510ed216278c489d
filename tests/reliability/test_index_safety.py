"""Index safety: 64-bit index arithmetic on views whose element offsets pass 2^31, and every user-supplied index
(codes, tokens, frame counts, cache slots) checked with a Python exception on CPU, and on CUDA where a GPU is present.

The huge-offset views live in a bfloat16 buffer of 2^31 + 2^16 elements (4 GiB) that is allocated but never
written except where the views lie: untouched pages take no memory, so this costs a few MiB."""
import os

import pytest
import torch

import wmkernels
from wmkernels import STMaskGIT
from wmkernels.reference import attention as ref

BIG = 2**31 + 2**16
needs_big_buffer = pytest.mark.skipif(os.environ.get("WMK_SANITIZED") == "1",
                                      reason="ASan poisons the shadow of a 4 GiB buffer: too slow under sanitizers")


def huge_batch_stride_view(values: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """A view of `buffer` with values' shape whose batch stride is 2^31 elements (batch 1 starts past 2^31)."""
    b, *rest = values.shape
    assert b == 2
    inner = values[0].numel()
    strides = [2**31] + list(torch.empty(rest).stride())
    view = buffer.as_strided(values.shape, strides, storage_offset=buffer.storage_offset())
    view.copy_(values)  # touches only the pages of the two batch entries
    assert view.storage_offset() + 2**31 + inner <= BIG
    return view


@needs_big_buffer
@pytest.mark.parametrize("axis", ["spatial", "temporal"])
def test_attention_on_views_with_offsets_past_2_31(axis):
    buffer = torch.empty(BIG, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 5, 2, 8)
    values = [torch.randn(shape, generator=g).bfloat16() for _ in range(3)]
    # q, k, v share the buffer at disjoint offsets within each batch entry (0, 256, 512 elements in)
    views = [huge_batch_stride_view(v, buffer[i * 256:]) for i, v in enumerate(values)]
    for view, v in zip(views, values):
        assert torch.equal(view, v)
    leaves = [t.requires_grad_() for t in views]
    fn = (lambda q, k, v: wmkernels.spatial_attention(q, k, v)) if axis == "spatial" else (
        lambda q, k, v: wmkernels.temporal_attention(q, k, v, True))
    out = fn(*leaves)
    compact = [v.clone().requires_grad_() for v in values]
    expected = fn(*compact)
    assert torch.equal(out, expected), "a view with offsets past 2^31 gave other results than a compact copy"
    grad = torch.randn(shape, generator=g).bfloat16()
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(leaves, compact):
        assert torch.equal(a.grad, b.grad)


@needs_big_buffer
def test_frame_decode_on_a_cache_with_offsets_past_2_31():
    buffer = torch.empty(BIG, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 5, 2, 8, generator=g).bfloat16()
    caches = [torch.randn(2, 4, 5, 2, 8, generator=g).bfloat16() for _ in range(2)]
    kc, vc = (huge_batch_stride_view(c, buffer[i * 512:]) for i, c in enumerate(caches))
    nf = torch.tensor([4, 2])
    out = wmkernels.frame_decode_attention(q, kc, vc, nf)
    assert torch.equal(out, wmkernels.frame_decode_attention(q, *caches, nf))
    torch.testing.assert_close(out.float(), ref.frame_decode_attention(q.float(), caches[0].float(),
                                                                       caches[1].float(), nf), atol=2e-2, rtol=2e-2)


@needs_big_buffer
def test_other_ops_read_views_with_offsets_past_2_31():
    buffer = torch.empty(BIG, dtype=torch.bfloat16)
    x = huge_batch_stride_view(torch.randn(2, 7, 6, generator=torch.Generator().manual_seed(2)).bfloat16(), buffer)
    assert torch.equal(wmkernels.lfq_encode(x), wmkernels.lfq_encode(x.clone()))
    assert torch.equal(wmkernels.fsq_quantize(x, [8, 8, 8, 5, 5, 5])[1], wmkernels.fsq_quantize(x.clone(), [8] * 3 +
                                                                                                 [5] * 3)[1])
    codebook = torch.randn(11, 6, generator=torch.Generator().manual_seed(3)).bfloat16()
    assert torch.equal(wmkernels.vq_encode(x, codebook)[0], wmkernels.vq_encode(x.clone(), codebook)[0])


# --- user-supplied indices on CPU -----------------------------------------------------------------------------


def tiny_model():
    return STMaskGIT.from_config(dict(num_layers=1, num_heads=2, d_model=16, T=3, S=4, image_vocab_size=64,
                                      num_factored_vocabs=2), generator=torch.Generator().manual_seed(0)).eval()


@pytest.mark.parametrize("bad", [-1, 65, 2**40])
def test_embedding_refuses_out_of_range_tokens_on_cpu(bad):
    model = tiny_model()
    tokens = torch.zeros(1, 2, 4, dtype=torch.long)
    tokens[0, 1, 3] = bad
    with pytest.raises(IndexError, match=f"tokens must lie in \\[0, 64\\) or equal the mask token id 64; found {bad}"):
        model.token_embed(tokens)
    cache = model.new_cache(1)
    with pytest.raises(IndexError, match="tokens must lie"):
        model.prefill(tokens, cache)
    with pytest.raises(IndexError, match="tokens must lie"):
        model.decode_logits(tokens[:, 1], cache)
    model.token_embed(torch.full((1, 4), 64))  # the mask token is allowed


@torch.inference_mode()
def test_frame_cache_refuses_a_slot_past_t_max_on_the_host():
    model = tiny_model()
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match="the cache takes 1 to T_max = 3"):
        model.prefill(torch.zeros(1, 4, 4, dtype=torch.long), cache)
    model.prefill(torch.zeros(1, 2, 4, dtype=torch.long), cache)
    frame = torch.ones(1, 4, dtype=torch.long)
    model.decode_logits(frame, cache)
    model.commit_frame(frame, cache)  # 3 of 3 slots hold frames now
    assert int(cache.num_frames) == cache.host_frames == 3
    for call in (model.decode_logits, model.commit_frame):
        with pytest.raises(IndexError, match="holds 3 committed frames, its T_max = 3"):
            call(frame, cache)
    cache.reset()
    model.prefill(torch.zeros(1, 1, 4, dtype=torch.long), cache)
    model.decode_logits(frame, cache)


# --- the same on CUDA: a Python exception, never a device-side assert, and the context stays usable --------------


@pytest.mark.gpu
def test_cuda_kernels_raise_on_bad_indices_and_stay_usable():
    dev = "cuda"
    with pytest.raises(IndexError, match="indices"):
        wmkernels.vq_decode(torch.tensor([0, 7], device=dev), torch.randn(4, 3, device=dev))
    with pytest.raises(IndexError, match="indices"):
        wmkernels.lfq_decode(torch.tensor([16], device=dev), 4)
    with pytest.raises(IndexError, match="indices"):
        wmkernels.fsq_decode(torch.tensor([40], device=dev), [8, 5])
    with pytest.raises(ValueError, match="tokens"):
        wmkernels.factorize_tokens(torch.tensor([2**18], device=dev))
    with pytest.raises(ValueError, match="factors"):
        wmkernels.unfactorize_tokens(torch.tensor([[0, 512]], device=dev))
    # frame decoding stays sync-free on CUDA: counts are clamped to [1, T_max] (documented), not raised
    q, kc = torch.randn(1, 4, 1, 8, device=dev), torch.randn(1, 3, 4, 1, 8, device=dev)
    out = wmkernels.frame_decode_attention(q, kc, kc, torch.tensor(9, device=dev))
    torch.testing.assert_close(out, wmkernels.frame_decode_attention(q, kc, kc, torch.tensor(3, device=dev)))
    torch.cuda.synchronize()  # the context survived every error above
    assert torch.equal(wmkernels.vq_decode(torch.tensor([1], device=dev), torch.eye(2, device=dev)).cpu(),
                       torch.tensor([[0.0, 1.0]]))


@pytest.mark.gpu
def test_cuda_model_entry_points_check_tokens_and_slots():
    model = tiny_model().cuda()
    with pytest.raises(ValueError, match="outside"):
        model.compute_logits(torch.full((1, 2, 2, 2), 65, device="cuda"))
    cache = model.new_cache(1)
    model.prefill(torch.zeros(1, 3, 4, dtype=torch.long, device="cuda"), cache)
    with pytest.raises(IndexError, match="no slot is left"):
        model.decode_logits(torch.zeros(1, 4, dtype=torch.long, device="cuda"), cache)
