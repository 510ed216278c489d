"""One small call of each op family against its pure-PyTorch reference.

Used by `python -m wmkernels` (the demo), by the wheel smoke test (an installed wheel, outside the source
tree) and by the tests, which check that every op in the registry is exercised here.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from wmkernels import ops, reference
from wmkernels.ops.linear import mkl_packed_linear_available


def _tokens() -> tuple[bool, str]:
    tokens = torch.randint(0, 2**18, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    factors = ops.factorize_tokens(tokens)
    ok = torch.equal(factors, reference.factorize_tokens(tokens)) and torch.equal(ops.unfactorize_tokens(factors), tokens)
    return ok, f"factorize_tokens {tuple(tokens.shape)} -> {tuple(factors.shape)}, round trip"


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _lfq() -> tuple[bool, str]:
    x = torch.randn(64, 18, generator=_gen())
    indices = ops.lfq_encode(x)
    ok = torch.equal(indices, reference.lfq_encode(x))
    ok &= torch.equal(ops.lfq_decode(indices, 18), reference.lfq_decode(indices, 18))
    small = torch.randn(32, 6, generator=_gen(), dtype=torch.float64, requires_grad=True)
    loss = ops.lfq_entropy_loss(small, 1.0)
    (grad,) = torch.autograd.grad(loss, small)
    ref_small = small.detach().clone().requires_grad_()
    ref_loss = reference.lfq_entropy_loss(ref_small, 1.0)
    (ref_grad,) = torch.autograd.grad(ref_loss, ref_small)
    ok &= bool(torch.allclose(loss, ref_loss, atol=1e-10)) and bool(torch.allclose(grad, ref_grad, atol=1e-10))
    return ok, "lfq_encode/lfq_decode (64 x 18 bits), lfq_entropy_loss forward and backward (6 bits)"


def _fsq() -> tuple[bool, str]:
    levels = [8, 5, 5, 5]
    z = torch.randn(64, 4, generator=_gen(), requires_grad=True)
    codes, indices = ops.fsq_quantize(z, levels)
    ref_codes, ref_indices = reference.fsq_quantize(z.detach(), levels)
    (grad,) = torch.autograd.grad(codes.sum(), z)
    ok = torch.equal(indices, ref_indices) and bool(torch.allclose(codes, ref_codes))
    ok &= bool(torch.isfinite(grad).all()) and bool(torch.allclose(ops.fsq_decode(indices, levels), ref_codes))
    return ok, "fsq_quantize (levels 8,5,5,5) forward and straight-through backward, fsq_decode"


def _vq() -> tuple[bool, str]:
    x = torch.randn(256, 16, generator=_gen(), dtype=torch.float64).float()
    codebook = torch.randn(37, 16, generator=_gen(), dtype=torch.float64).float().requires_grad_()
    indices, distances = ops.vq_encode(x, codebook.detach())
    ref_indices, ref_distances = reference.vq_encode(x.double(), codebook.detach().double())
    ok = torch.equal(indices, ref_indices) and bool(torch.allclose(distances.double(), ref_distances, atol=1e-4))
    codes = ops.vq_decode(indices, codebook)
    (grad,) = torch.autograd.grad(codes.sum(), codebook)
    expected = torch.zeros_like(codebook).index_add_(0, indices, torch.ones_like(x))
    ok &= torch.equal(codes, codebook[indices]) and bool(torch.allclose(grad, expected))
    return ok, "vq_encode (256 x 16, K = 37) and vq_decode forward and backward"


def _attention() -> tuple[bool, str]:
    from wmkernels.reference import attention as ref

    qkv = torch.randn(2, 3, 7, 3, 2, 16, generator=_gen(), dtype=torch.float64, requires_grad=True)
    q, k, v = qkv.unbind(3)  # strided views of one fused projection, as the layers pass them
    ok = True
    for op, ref_op in ((ops.spatial_attention, ref.spatial_attention), (ops.temporal_attention, ref.temporal_attention)):
        out = op(q, k, v)
        (grad,) = torch.autograd.grad(out.sum(), qkv)
        ref_out = ref_op(q, k, v)
        (ref_grad,) = torch.autograd.grad(ref_out.sum(), qkv)
        ok &= bool(torch.allclose(out, ref_out, atol=1e-10)) and bool(torch.allclose(grad, ref_grad, atol=1e-10))
    # The fused-projection forms: the same outputs, and one (B, T, S, 3, H, D) gradient.
    qkv6 = qkv.detach().clone().requires_grad_()
    for op, ref_op in ((ops.spatial_attention_qkv, ref.spatial_attention), (ops.temporal_attention_qkv,
                                                                           ref.temporal_attention)):
        out = op(qkv6)
        (grad,) = torch.autograd.grad(out.sum(), qkv6)
        ref_out = ref_op(*qkv6.unbind(3))
        (ref_grad,) = torch.autograd.grad(ref_out.sum(), qkv6)
        ok &= bool(torch.allclose(out, ref_out, atol=1e-10)) and bool(torch.allclose(grad, ref_grad, atol=1e-10))
    k_cache, v_cache = (torch.randn(2, 4, 7, 2, 16, generator=_gen(), dtype=torch.float64) for _ in range(2))
    q1 = torch.randn(2, 7, 2, 16, generator=_gen(), dtype=torch.float64)
    num_frames = torch.tensor([2, 4])
    ok &= bool(torch.allclose(ops.frame_decode_attention(q1, k_cache, v_cache, num_frames),
                              ref.frame_decode_attention(q1, k_cache, v_cache, num_frames), atol=1e-10))
    # The decoding step: writes the new frame's normalized keys and values into slot num_frames - 1, then decodes.
    k1, v1 = (torch.randn(2, 7, 2, 16, generator=_gen(), dtype=torch.float64) for _ in range(2))
    w, b = (torch.randn(16, generator=_gen(), dtype=torch.float64) for _ in range(2))
    kc, vc = k_cache.clone(), v_cache.clone()
    out = ops.frame_decode_step(q1, k1, v1, kc, vc, num_frames, qk_norm_weight=w, qk_norm_bias=b)
    kn = torch.nn.functional.layer_norm(k1, (16,), w, b, 1e-5)
    ok &= bool(torch.allclose(kc[0, 1], kn[0], atol=1e-10)) and bool(torch.equal(vc[1, 3], v1[1]))
    qn = torch.nn.functional.layer_norm(q1, (16,), w, b, 1e-5)
    ok &= bool(torch.allclose(out, ref.frame_decode_attention(qn, kc, vc, num_frames), atol=1e-10))
    return ok, ("spatial/temporal attention forward and backward (B2 T3 S7 H2 D16; q, k, v and fused qkv), "
                "frame_decode_attention, frame_decode_step")


def _st_transformer() -> tuple[bool, str]:
    import copy

    from wmkernels.nn import FrameKVCache, STTransformer

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = STTransformer(2, 16, 2, qk_norm=True).eval()
    x = torch.randn(2, 3, 5, 16, generator=_gen())
    cache = FrameKVCache(2, 2, 4, 5, 2, 8)
    with torch.inference_mode():
        model.forward_prefill(x[:, :2], cache, need_output=False)
        outs = []
        for fused in (True, False):  # wmk::st_transformer_decode, then the layers one by one
            model.fused_decode = fused
            c = copy.deepcopy(cache)
            outs.append((model.forward_decode(x[:, 2:], c, torch.tensor([2])), c.k[:, :, :3], c.v[:, :, :3]))
    ok = all(torch.equal(a, b) for a, b in zip(*outs))
    return ok, "st_transformer_decode (2 layers, one frame against 2 cached) equals the layer-by-layer path"


def _linear() -> tuple[bool, str]:
    weight, bias = torch.randn(17, 33, generator=_gen()), torch.randn(17, generator=_gen())

    def within_twice_torch_error(lead, packed):
        x = torch.randn(*lead, 33, generator=_gen())
        got = ops.linear_prepacked(x, weight, bias, packed)
        want = torch.nn.functional.linear(x.double(), weight.double(), bias.double())
        err = (got.double() - want).abs().max()
        ref_err = (torch.nn.functional.linear(x, weight, bias).double() - want).abs().max()
        return got.shape == want.shape and bool(err <= 2 * ref_err)

    ok = within_twice_torch_error((2, 7), ops.pack_linear_weight(weight))
    what = "linear_prepacked (14 rows, 33 -> 17 features, packed weight) within 2x torch's fp32 error"
    if not mkl_packed_linear_available():
        return ok, what + "; MKL's packed sgemm: not in this torch"
    ok = within_twice_torch_error((70,), ops.pack_linear_weight_mkl(weight)) and ok  # 70 rows: MKL's packed product
    return ok, what + "; with MKL's packing (70 rows) too"


#: family name -> (ops it exercises, check returning (passed, description))
CHECKS: dict[str, tuple[tuple[str, ...], Callable[[], tuple[bool, str]]]] = {
    "tokens": (("wmk::factorize_tokens", "wmk::unfactorize_tokens"), _tokens),
    "lfq": (("wmk::lfq_encode", "wmk::lfq_decode", "wmk::lfq_entropy_loss", "wmk::lfq_entropy_loss_backward"), _lfq),
    "fsq": (("wmk::fsq_quantize", "wmk::fsq_quantize_backward", "wmk::fsq_decode"), _fsq),
    "vq": (("wmk::vq_encode", "wmk::vq_decode"), _vq),
    "attention": (("wmk::spatial_attention", "wmk::spatial_attention_backward", "wmk::temporal_attention",
                   "wmk::temporal_attention_backward", "wmk::spatial_attention_qkv",
                   "wmk::spatial_attention_qkv_backward", "wmk::temporal_attention_qkv",
                   "wmk::temporal_attention_qkv_backward", "wmk::frame_decode_attention", "wmk::frame_decode_step"),
                  _attention),
    "linear": (("wmk::pack_linear_weight", "wmk::pack_linear_weight_mkl", "wmk::linear_prepacked"), _linear),
    "models": (("wmk::st_transformer_decode",), _st_transformer),
}


def covered_ops() -> set[str]:
    return {name for names, _ in CHECKS.values() for name in names}


def run(file=None) -> bool:
    """Run every check on CPU, print one line each, and return whether all matched their references."""
    all_ok = True
    for family, (_, check) in CHECKS.items():
        ok, what = check()
        all_ok &= ok
        print(f"  [{'ok' if ok else 'MISMATCH'}] {family}: {what}", file=file)
    return all_ok
