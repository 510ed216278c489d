"""spatial_attention / temporal_attention / frame_decode_attention against the pure-PyTorch reference.

Numerics rule (DESIGN.md): the kernel in dtype X may be at most 2x (gradients 3x) as far from the float64
reference as the reference computed in dtype X is, plus (as in FlashAttention's tests) an additive rounding term:
16 units of the accumulation type (fp32 for fp16, bf16 and fp32; fp64 for fp64) at the scale of the largest value
compared in the case. The reference gets some results exactly by cancellation (S = 1 gives dq = 0 and dk = 0:
P = 1 and dP - rowsum(dO * O) cancels), which a flash backward, summing in another order, reaches only to within
a few roundings. For fp16 and bf16 the term is far below one unit of the dtype, so the 2x/3x rule decides.
"""
import pytest
import torch
import torch.nn.functional as F

import wmkernels
from tests.helpers import backend_params, needs_triton
from wmkernels.reference import attention as ref

BACKENDS = backend_params()
CPU_CPP = [p for p in BACKENDS if p.id == "cpu-cpp"]
DTYPES = {"cpu-cpp": [torch.float32, torch.float16, torch.bfloat16], "cpu-triton": [torch.float32, torch.float16]}
# (B, T, S, H, D). The C++ kernel takes the odd shapes; the Triton interpreter small ones.
SPATIAL = {
    "cpu-cpp": [(2, 3, 1, 2, 16), (1, 2, 7, 3, 40), (2, 1, 257, 2, 32), (1, 1, 256, 1, 128), (1, 2, 7, 1, 64), (1, 1, 5, 2, 3)],
    "cpu-triton": [(1, 2, 7, 2, 16), (1, 1, 5, 1, 40)],
}
TEMPORAL = {
    "cpu-cpp": [(2, 1, 5, 2, 16), (1, 3, 7, 2, 40), (2, 16, 9, 2, 32), (1, 17, 3, 1, 128), (1, 16, 4, 1, 64), (1, 3, 2, 1, 5)],
    "cpu-triton": [(2, 3, 2, 2, 16), (1, 17, 2, 1, 32)],
}


def _id(param):
    return param.id if hasattr(param, "id") else str(param)


def make_qkv(shape, dtype, layout, tk=None, seed=0, device="cpu"):
    """q, k, v of `shape` as: fused views of one (B, T, S, 3, H, D) projection, contiguous, or transposed copies."""
    g = torch.Generator().manual_seed(seed)
    b, t, s, h, d = shape
    tk = t if tk is None else tk
    if layout == "fused" and tk == t:
        qkv = torch.randn(b, t, s, 3 * h * d, generator=g).to(dtype).to(device)
        return qkv.view(b, t, s, 3, h, d).unbind(3)
    q = torch.randn(b, t, s, h, d, generator=g)
    k, v = (torch.randn(b, tk, s, h, d, generator=g) for _ in range(2))
    out = [x.to(dtype).to(device) for x in (q, k, v)]
    if layout == "transposed":  # same values, (H, D)-transposed storage: the head dim is strided
        out = [x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in out]
    return out


def make_norm(d, dtype, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    w = (1 + 0.3 * torch.randn(d, generator=g)).to(dtype).to(device)
    b = (0.2 * torch.randn(d, generator=g)).to(dtype).to(device)
    return w, b


def ref_attention(axis, q, k, v, causal, w=None, b=None, eps=1e-5):
    if w is not None:
        q, k = F.layer_norm(q, q.shape[-1:], w, b, eps), F.layer_norm(k, k.shape[-1:], w, b, eps)
    if axis == "spatial":
        return ref.spatial_attention(q, k, v)
    return ref.temporal_attention(q, k, v, causal)


def run(axis, q, k, v, causal, backend, w=None, b=None):
    kw = dict(qk_norm_weight=w, qk_norm_bias=b, backend=backend)
    if axis == "spatial":
        return wmkernels.spatial_attention(q, k, v, **kw)
    return wmkernels.temporal_attention(q, k, v, causal, **kw)


def assert_rule(out, ref64, ref_x, factor, what, magnitude=1.0):
    err = (out.double() - ref64).abs().max().item()
    ref_err = (ref_x.double() - ref64).abs().max().item()
    # An additive rounding term, as FlashAttention's own tests have: a few roundings of the accumulation type
    # (fp32 for fp16/bf16/fp32) at the case's scale. Without it, a reference that is exact by cancellation
    # (ref_err = 0) would demand bit-exactness from a kernel that sums in another order.
    acc_eps = torch.finfo(torch.float64 if out.dtype == torch.float64 else torch.float32).eps
    rounding = 16 * acc_eps * max(magnitude, ref64.abs().max().item())
    bound = factor * ref_err + rounding
    assert err <= bound, f"{what}: max error {err:.3g} > {factor} x reference-in-{out.dtype} error {ref_err:.3g}"


def cases():
    for p in BACKENDS:
        for axis, table in (("spatial", SPATIAL), ("temporal", TEMPORAL)):
            for shape in table.get(p.id, table["cpu-triton"]):
                yield pytest.param(*p.values, axis, shape, marks=p.marks, id=f"{p.id}-{axis}-{shape}")


@pytest.mark.parametrize("device,backend,axis,shape", list(cases()))
@pytest.mark.parametrize("layout", ["fused", "contiguous", "transposed"])
@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk_norm"])
def test_forward_and_backward_match_reference(device, backend, axis, shape, layout, qk_norm):
    dtypes = DTYPES.get(f"{device}-{'cpp' if backend == 'auto' else backend}", [torch.float32, torch.float16])
    check_forward_and_backward(device, backend, axis, shape, layout, qk_norm, dtypes)


def cpu_isas():
    """The CPU kernels' instruction sets ($WMK_ATTN_ISA); one this CPU lacks skips with the reason."""
    params = []
    for isa in ("avx512", "avx2", "portable"):
        reason = None
        try:
            with _isa(isa):
                wmkernels.spatial_attention(*(torch.ones(1, 1, 1, 1, 8),) * 3)
        except RuntimeError as e:
            reason = str(e).splitlines()[0]
        params.append(pytest.param(isa, id=isa, marks=pytest.mark.skipif(reason is not None, reason=str(reason))))
    return params


class _isa:
    def __init__(self, isa):
        self.isa, self.old = isa, None

    def __enter__(self):
        import os

        self.old = os.environ.get("WMK_ATTN_ISA")
        os.environ["WMK_ATTN_ISA"] = self.isa

    def __exit__(self, *exc):
        import os

        if self.old is None:
            os.environ.pop("WMK_ATTN_ISA", None)
        else:
            os.environ["WMK_ATTN_ISA"] = self.old


# Shapes that reach every path of each instruction set: whole and partial key blocks, the short (<= 16 frame)
# temporal path and the general one, head dims below, at and above one register row.
ISA_CASES = [("spatial", (2, 1, 257, 2, 32)), ("spatial", (1, 2, 7, 3, 40)), ("spatial", (1, 1, 33, 2, 16)),
             ("temporal", (2, 16, 9, 3, 32)), ("temporal", (1, 17, 3, 2, 64)), ("temporal", (1, 5, 4, 2, 24))]


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("axis,shape", ISA_CASES, ids=[f"{a}-{s}" for a, s in ISA_CASES])
@pytest.mark.parametrize("layout", ["fused", "transposed"])
@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk_norm"])
def test_every_cpu_isa_matches_reference(isa, axis, shape, layout, qk_norm):
    with _isa(isa):
        check_forward_and_backward("cpu", "auto", axis, shape, layout, qk_norm, [torch.float32])


def test_unknown_isa_is_refused(monkeypatch):
    monkeypatch.setenv("WMK_ATTN_ISA", "sse9")
    q = torch.ones(1, 1, 2, 1, 8)
    with pytest.raises(ValueError, match="WMK_ATTN_ISA must be portable, avx2 or avx512, got 'sse9'"):
        wmkernels.spatial_attention(q, q, q)


def check_forward_and_backward(device, backend, axis, shape, layout, qk_norm, dtypes):
    causal = axis == "temporal"
    for dtype in dtypes:
        q, k, v = make_qkv(shape, dtype, layout, device=device)
        w, b = make_norm(shape[-1], dtype, device=device) if qk_norm else (None, None)
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)] + (
            [w.clone().requires_grad_(), b.clone().requires_grad_()] if qk_norm else []
        )
        originals = [t.clone() for t in (q, k, v)]
        out = run(axis, *leaves[:3], causal, backend, *leaves[3:])
        assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
        as64 = [t.detach().cpu().double().requires_grad_() for t in leaves]
        ref64 = ref_attention(axis, *as64[:3], causal, *as64[3:])
        asx = [t.detach().cpu().clone().requires_grad_() for t in leaves]
        ref_x = ref_attention(axis, *asx[:3], causal, *asx[3:])
        assert_rule(out.cpu(), ref64, ref_x, 2, f"{axis} forward {dtype}")
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
        out.backward(grad.to(device))
        ref64.backward(grad.double())
        ref_x.backward(grad)
        magnitude = max(t.grad.abs().max().item() for t in as64)
        for name, t, t64, tx in zip("qkvwb", leaves, as64, asx):
            assert_rule(t.grad.cpu(), t64.grad, tx.grad, 3, f"{axis} d{name} {dtype}", magnitude)
        for t, o in zip((q, k, v), originals):
            assert torch.equal(t, o), "an input was modified"


def fused_qkv(shape, dtype, layout, seed=0):
    """One (B, T, S, 3, H, D) projection: a Linear's output viewed so, or a copy with the head dim strided."""
    b, t, s, h, d = shape
    x = torch.randn(b, t, s, 3 * h * d, generator=torch.Generator().manual_seed(seed)).to(dtype)
    qkv = x.view(b, t, s, 3, h, d)
    return qkv.transpose(-1, -2).contiguous().transpose(-1, -2) if layout == "transposed" else qkv


FUSED_CASES = [("spatial", (2, 3, 7, 2, 16)), ("spatial", (1, 1, 257, 2, 32)), ("temporal", (2, 16, 5, 3, 32)),
               ("temporal", (1, 17, 3, 2, 40))]


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("axis,shape", FUSED_CASES, ids=[f"{a}-{s}" for a, s in FUSED_CASES])
@pytest.mark.parametrize("layout", ["view", "transposed"])
@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk_norm"])
def test_fused_qkv_matches_reference(device, backend, axis, shape, layout, qk_norm):
    if backend == "triton" and device == "cpu" and shape[2] > 64:
        pytest.skip("kept small under the Triton interpreter (slow); the fused op runs the Triton kernels tested above")
    causal = axis == "temporal"
    for dtype in DTYPES.get(f"{device}-{'cpp' if backend == 'auto' else backend}", [torch.float32]):
        qkv = fused_qkv(shape, dtype, layout).to(device).requires_grad_()
        w, b = make_norm(shape[-1], dtype, device=device) if qk_norm else (None, None)
        extra = [w.clone().requires_grad_(), b.clone().requires_grad_()] if qk_norm else []
        kw = dict(qk_norm_weight=extra[0], qk_norm_bias=extra[1]) if qk_norm else {}
        if axis == "spatial":
            out = wmkernels.spatial_attention_qkv(qkv, backend=backend, **kw)
        else:
            out = wmkernels.temporal_attention_qkv(qkv, causal, backend=backend, **kw)
        assert out.shape == shape and out.is_contiguous()
        as64 = [qkv.detach().cpu().double().requires_grad_()] + [t.detach().cpu().double().requires_grad_()
                                                                for t in extra]
        asx = [qkv.detach().cpu().clone().requires_grad_()] + [t.detach().cpu().clone().requires_grad_() for t in extra]
        ref64 = ref_attention(axis, *as64[0].unbind(3), causal, *as64[1:])
        ref_x = ref_attention(axis, *asx[0].unbind(3), causal, *asx[1:])
        assert_rule(out.detach().cpu(), ref64, ref_x, 2, f"{axis} fused forward {dtype}")
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
        out.backward(grad.to(device)), ref64.backward(grad.double()), ref_x.backward(grad)
        assert qkv.grad.shape == qkv.shape
        magnitude = max(t.grad.abs().max().item() for t in as64)
        for name, t, t64, tx in zip(["qkv", "w", "b"], [qkv] + extra, as64, asx):
            assert_rule(t.grad.cpu(), t64.grad, tx.grad, 3, f"{axis} fused d{name} {dtype}", magnitude)


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("axis,shape", FUSED_CASES[:3], ids=[f"{a}-{s}" for a, s in FUSED_CASES[:3]])
def test_fused_qkv_every_cpu_isa(isa, axis, shape):
    with _isa(isa):
        test_fused_qkv_matches_reference("cpu", "auto", axis, shape, "view", True)


def test_fused_qkv_gradcheck_opcheck_and_errors():
    qkv = torch.randn(2, 3, 4, 3, 2, 6, dtype=torch.float64, requires_grad=True)
    w, b = (t.requires_grad_() for t in make_norm(6, torch.float64))
    assert torch.autograd.gradcheck(lambda x, w, b: wmkernels.spatial_attention_qkv(x, qk_norm_weight=w, qk_norm_bias=b),
                                    (qkv, w, b))
    assert torch.autograd.gradcheck(lambda x: wmkernels.temporal_attention_qkv(x, True), (qkv,))
    x = torch.randn(2, 3, 5, 3, 2, 8, requires_grad=True)
    w32, b32 = make_norm(8, torch.float32)
    torch.library.opcheck(torch.ops.wmk.spatial_attention_qkv, (x, 0.3, w32, b32, 1e-5))
    torch.library.opcheck(torch.ops.wmk.temporal_attention_qkv, (x, True, 0.3, None, None, 1e-5))
    xd = x.detach()
    out, lse = torch.ops.wmk.spatial_attention_qkv(xd, 0.3, w32, b32, 1e-5)
    g = torch.randn_like(out)
    torch.library.opcheck(torch.ops.wmk.spatial_attention_qkv_backward, (g, xd, out, lse, 0.3, w32, b32, 1e-5))
    out, lse = torch.ops.wmk.temporal_attention_qkv(xd, False, 0.3, None, None, 1e-5)
    torch.library.opcheck(torch.ops.wmk.temporal_attention_qkv_backward, (g, xd, out, lse, False, 0.3, None, None, 1e-5))
    with pytest.raises(ValueError, match=r"qkv must be a 6-D \(B, T, S, 3, H, D\) tensor"):
        wmkernels.spatial_attention_qkv(torch.randn(2, 3, 5, 2, 2, 8))
    with pytest.raises(ValueError, match=r"qkv must be a 6-D \(B, T, S, 3, H, D\) tensor"):
        torch.ops.wmk.temporal_attention_qkv(torch.randn(2, 3, 5, 6, 8), True, 0.5)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tq,tk", [(1, 16), (3, 17), (16, 16), (5, 9)])
def test_temporal_more_key_frames(device, backend, causal, tq, tk):
    shape = (2, tq, 3, 2, 16)
    q, _, _ = make_qkv(shape, torch.float32, "contiguous", device=device)
    _, k, v = make_qkv(shape, torch.float32, "contiguous", tk=tk, seed=3, device=device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = wmkernels.temporal_attention(*leaves, causal, backend=backend)
    as64 = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    asx = [t.detach().cpu().clone().requires_grad_() for t in (q, k, v)]
    ref64, ref_x = ref.temporal_attention(*as64, causal), ref.temporal_attention(*asx, causal)
    assert_rule(out.cpu(), ref64, ref_x, 2, "forward")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(grad.to(device)), ref64.backward(grad.double()), ref_x.backward(grad)
    for t, t64, tx in zip(leaves, as64, asx):
        assert_rule(t.grad.cpu(), t64.grad, tx.grad, 3, "grad")


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk_norm"])
def test_gradcheck_float64(axis, qk_norm):
    q, k, v = (t.requires_grad_() for t in make_qkv((2, 3, 4, 2, 6), torch.float64, "contiguous"))
    extra = [t.requires_grad_() for t in make_norm(6, torch.float64)] if qk_norm else []
    fn = lambda q, k, v, *wb: run(axis, q, k, v, True, None, *wb)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, *extra))


@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk_norm"])
def test_opcheck(qk_norm):
    q, k, v = make_qkv((2, 3, 5, 2, 8), torch.float32, "fused")
    _, k2, v2 = make_qkv((2, 3, 5, 2, 8), torch.float32, "contiguous", tk=4)
    w, b = make_norm(8, torch.float32) if qk_norm else (None, None)
    q, k, v, k2, v2 = (t.clone().requires_grad_() for t in (q, k, v, k2, v2))
    torch.library.opcheck(torch.ops.wmk.spatial_attention, (q, k, v, 0.3, w, b, 1e-5))
    torch.library.opcheck(torch.ops.wmk.temporal_attention, (q, k2, v2, True, 0.3, w, b, 1e-5))
    # The backward ops are not differentiable themselves: check them on plain tensors.
    q, k, v, k2, v2 = (t.detach() for t in (q, k, v, k2, v2))
    out, lse = torch.ops.wmk.spatial_attention(q, k, v, 0.3, w, b, 1e-5)
    g = torch.randn_like(out)
    torch.library.opcheck(torch.ops.wmk.spatial_attention_backward, (g, q, k, v, out, lse, 0.3, w, b, 1e-5))
    out, lse = torch.ops.wmk.temporal_attention(q, k2, v2, True, 0.3, w, b, 1e-5)
    args = (g, q, k2, v2, out, lse, True, 0.3, w, b, 1e-5)
    torch.library.opcheck(torch.ops.wmk.temporal_attention_backward, args)
    kc, vc = (torch.randn(2, 6, 5, 2, 8) for _ in range(2))
    torch.library.opcheck(torch.ops.wmk.frame_decode_attention, (q[:, 0], kc, vc, torch.tensor([2, 6]), 0.3))


def test_compile_fullgraph_forward_and_backward():
    b, t, s, h, d = 2, 4, 6, 2, 8
    w, bias = (x.requires_grad_() for x in make_norm(d, torch.float32))

    def block(qkv):
        q, k, v = qkv.view(b, t, s, 3, h, d).unbind(3)
        x = wmkernels.spatial_attention(q, k, v, qk_norm_weight=w, qk_norm_bias=bias)
        y = wmkernels.temporal_attention(x, k, v, causal=True)
        return y.reshape(b, t, s, h * d)

    qkv = torch.randn(b, t, s, 3 * h * d, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(qkv)
    expected = block(qkv)
    torch.testing.assert_close(out, expected)
    (gc,) = torch.autograd.grad(out.sum(), qkv)
    (ge,) = torch.autograd.grad(expected.sum(), qkv)
    torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("per_batch", [False, True])
def test_frame_decode_every_cpu_isa(isa, per_batch):
    with _isa(isa):
        test_frame_decode_matches_reference("cpu", "auto", per_batch)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("per_batch", [False, True])
def test_frame_decode_matches_reference(device, backend, per_batch):
    dtypes = DTYPES.get(f"{device}-{'cpp' if backend == 'auto' else backend}", [torch.float32])
    for dtype, d in [(dtype, d) for dtype in dtypes for d in (16, 40)]:
        b, t_max, s, h = 3, 5, 4, 2
        g = torch.Generator().manual_seed(0)
        q = torch.randn(b, s, h, d, generator=g)
        kc, vc = (torch.randn(b, t_max, s, h, d, generator=g) for _ in range(2))
        nf = torch.tensor([1, 5, 3]) if per_batch else torch.tensor(4)
        out = wmkernels.frame_decode_attention(*(x.to(dtype).to(device) for x in (q, kc, vc)), nf.to(device),
                                               backend=backend)
        ref64 = ref.frame_decode_attention(q.double(), kc.double(), vc.double(), nf)
        ref_x = ref.frame_decode_attention(*(x.to(dtype) for x in (q, kc, vc)), nf)
        assert out.shape == q.shape and out.dtype == dtype
        assert_rule(out.cpu(), ref64, ref_x, 2, f"frame decode {dtype}")


def _decode_step_case(dtype, d, per_batch, qk_norm, device="cpu"):
    b, t_max, s, h = 3, 5, 4, 2
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(b, s, 3, h, d, generator=g)  # the layers pass views of one fused projection
    kc, vc = (torch.randn(b, t_max, s, h, d, generator=g) for _ in range(2))
    nf = torch.tensor([1, 5, 3]) if per_batch else torch.tensor(4)
    w, bias = make_norm(d, torch.float64) if qk_norm else (None, None)
    return qkv, kc, vc, nf, w, bias


def _decode_step_reference(q, k, v, kc, vc, nf, w, bias):
    """The step composed of reference ops: LayerNorm, the write into slot nf - 1, frame decoding."""
    if w is not None:
        q, k = (F.layer_norm(x, x.shape[-1:], w, bias, 1e-5) for x in (q, k))
    kc, vc = kc.clone(), vc.clone()
    for i, n in enumerate(nf.expand(q.shape[0]).tolist()):
        kc[i, n - 1], vc[i, n - 1] = k[i], v[i]
    return ref.frame_decode_attention(q, kc, vc, nf), kc, vc


def check_decode_step(device, backend, per_batch, qk_norm, dtypes):
    for dtype, d in [(dtype, d) for dtype in dtypes for d in (16, 40)]:
        qkv, kc, vc, nf, w, bias = _decode_step_case(dtype, d, per_batch, qk_norm)
        x = [t.to(dtype).to(device) for t in (qkv, kc, vc)]
        q, k, v = x[0].unbind(2)
        kc_x, vc_x = x[1].clone(), x[2].clone()
        wx, bx = (None, None) if w is None else (w.to(dtype).to(device), bias.to(dtype).to(device))
        originals = [t.clone() for t in (q, k, v)]
        out = wmkernels.frame_decode_step(q, k, v, kc_x, vc_x, nf.to(device), qk_norm_weight=wx, qk_norm_bias=bx,
                                          backend=backend)
        assert out.shape == q.shape and out.dtype == dtype
        q64, k64, v64 = (t.cpu().double() for t in (q, k, v))
        w64, b64 = (None, None) if w is None else (wx.cpu().double(), bx.cpu().double())
        ref64, kc64, vc64 = _decode_step_reference(q64, k64, v64, x[1].cpu().double(), x[2].cpu().double(), nf, w64,
                                                   b64)
        ref_x, kcx, vcx = _decode_step_reference(*(t.cpu() for t in (q, k, v, x[1], x[2])), nf, *(
            (None, None) if w is None else (wx.cpu(), bx.cpu())))
        assert_rule(out.cpu(), ref64, ref_x, 2, f"decode step {dtype}")
        assert_rule(kc_x.cpu(), kc64, kcx, 2, f"written keys {dtype}")
        assert torch.equal(vc_x.cpu(), vcx), "the values must be stored as given"
        for t, o in zip((q, k, v), originals):
            assert torch.equal(t, o), "an input was modified"


@pytest.mark.parametrize("device,backend", BACKENDS + [pytest.param("cpu", "reference", id="cpu-reference")])
@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk_norm"])
def test_frame_decode_step_matches_reference(device, backend, per_batch, qk_norm):
    dtypes = DTYPES.get(f"{device}-{'cpp' if backend == 'auto' else backend}", [torch.float32])
    check_decode_step(device, backend, per_batch, qk_norm, dtypes)


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk_norm"])
def test_frame_decode_step_every_cpu_isa(isa, qk_norm):
    with _isa(isa):
        check_decode_step("cpu", "auto", True, qk_norm, [torch.float32])


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("d", [13, 32])
def test_frame_decode_step_full_cache_every_cpu_isa(isa, d):
    """T_max = 16, the model's, with counts past 8 (the vector kernels take keys 8 at a time), nine heads (the AVX2
    kernels decode eight at a time, then one) and a head size that is not a multiple of 8 or 16 (the kernels'
    tails); what lies past each count must not be read."""
    b, t_max, s, h = 3, 16, 5, 9
    g = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(3, b, s, h, d, generator=g).unbind(0)
    kc, vc = (torch.randn(b, t_max, s, h, d, generator=g) for _ in range(2))
    nf = torch.tensor([9, 16, 8])
    w, bias = make_norm(d, torch.float64)
    ref64, kc64, _ = _decode_step_reference(q.double(), k.double(), v.double(), kc.double(), vc.double(), nf, w, bias)
    ref_x, kcx, vcx = _decode_step_reference(q, k, v, kc, vc, nf, w.float(), bias.float())
    for i, n in enumerate(nf.tolist()):  # the uninitialized part of a FrameKVCache
        kc[i, n:], vc[i, n:] = float("nan"), float("inf")
    with _isa(isa):
        out = wmkernels.frame_decode_step(q, k, v, kc, vc, nf, qk_norm_weight=w.float(), qk_norm_bias=bias.float())
        plain = wmkernels.frame_decode_attention(q, kc, vc, nf)
    assert_rule(out, ref64, ref_x, 2, f"decode step, {isa}, d={d}")
    for i, n in enumerate(nf.tolist()):
        assert_rule(kc[i, :n], kc64[i, :n], kcx[i, :n], 2, f"written keys, {isa}, d={d}")
        assert torch.equal(vc[i, :n], vcx[i, :n])
    # The same cache, already written, without the LayerNorm on q.
    kc_ref = torch.where(torch.isfinite(kc), kc, torch.zeros(()))
    vc_ref = torch.where(torch.isfinite(vc), vc, torch.zeros(()))
    want64 = ref.frame_decode_attention(q.double(), kc_ref.double(), vc_ref.double(), nf)
    assert_rule(plain, want64, ref.frame_decode_attention(q, kc_ref, vc_ref, nf), 2, f"frame decode, {isa}, d={d}")


@pytest.mark.parametrize("isa", [p for p in cpu_isas() if p.values[0] == "avx2"])
def test_frame_decode_step_keys_normalized_as_the_general_path(isa):
    """The AVX2 decode normalizes the keys of all heads of a position together (Avx2Kernels::layer_norm_rows); it
    must store exactly what the row-by-row LayerNorm of the general path (T_max > 16) stores."""
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(3, 2, 7, 9, 32, generator=g).unbind(0)
    w, bias = torch.randn(32, generator=g), torch.randn(32, generator=g)
    written = []
    with _isa(isa):
        for t_max in (16, 17):
            kc, vc = torch.zeros(2, t_max, 7, 9, 32), torch.zeros(2, t_max, 7, 9, 32)
            wmkernels.frame_decode_step(q, k, v, kc, vc, torch.tensor([3, 1]), qk_norm_weight=w, qk_norm_bias=bias)
            written.append(kc[:, :3])
    assert torch.equal(written[0], written[1])


def test_frame_decode_step_opcheck_and_compile():
    qkv, kc, vc, nf, w, bias = _decode_step_case(torch.float32, 8, True, True)
    q, k, v = qkv.unbind(2)
    w, bias = w.float(), bias.float()
    torch.library.opcheck(torch.ops.wmk.frame_decode_step, (q, k, v, kc.clone(), vc.clone(), nf, 0.3, w, bias, 1e-5))
    step = torch.compile(lambda q, k, v, kc, vc, n: wmkernels.frame_decode_step(q, k, v, kc, vc, n, qk_norm_weight=w,
                                                                                 qk_norm_bias=bias), fullgraph=True)
    for n in (torch.tensor(1), torch.tensor(5)):  # one graph for every step: the count is data
        kc1, vc1, kc2, vc2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
        got = step(q, k, v, kc1, vc1, n)
        want = wmkernels.frame_decode_step(q, k, v, kc2, vc2, n, qk_norm_weight=w, qk_norm_bias=bias)
        torch.testing.assert_close(got, want)
        assert torch.equal(kc1, kc2) and torch.equal(vc1, vc2)


def test_frame_decode_step_bad_inputs():
    q = torch.randn(2, 4, 2, 8)
    kc = torch.randn(2, 5, 4, 2, 8)
    with pytest.raises(ValueError, match=r"k \(the current frames'\) must have q's shape"):
        wmkernels.frame_decode_step(q, q[:, :3], q, kc, kc.clone(), torch.tensor(2))
    with pytest.raises(TypeError, match="v has dtype torch.float64"):
        wmkernels.frame_decode_step(q, q, q.double(), kc, kc.clone(), torch.tensor(2))
    with pytest.raises(ValueError, match=r"num_frames must lie in \[1, T_max = 5\]"):
        wmkernels.frame_decode_step(q, q, q, kc, kc.clone(), torch.tensor([2, 6]))
    with pytest.raises(ValueError, match=r"qk_norm_weight must have shape \(D,\) = \(8,\)"):
        wmkernels.frame_decode_step(q, q, q, kc, kc.clone(), torch.tensor(2), qk_norm_weight=torch.ones(3))
    # The op itself checks too (direct torch.ops calls skip the Python checks).
    with pytest.raises(ValueError, match="k and v \\(the current frames'\\) must have q's shape"):
        torch.ops.wmk.frame_decode_step(q, q[:, :3], q, kc, kc.clone(), torch.tensor(2), 0.5)
    with pytest.raises(ValueError, match=r"frame_decode_step: num_frames must lie in \[1, T_max = 5\]"):
        torch.ops.wmk.frame_decode_step(q, q, q, kc, kc.clone(), torch.tensor(0), 0.5)


def _frame_run_case(t_max, d, dtype=torch.float32, b=3, n=3, s=5, h=9):
    """n consecutive frames as views of one fused (B, n, S, 3, H, D) projection, caches with NaN/inf past the
    counts (the uninitialized part of a FrameKVCache), per-batch counts with the last run ending at T_max."""
    g = torch.Generator().manual_seed(6)
    qkv = torch.randn(b, n, s, 3, h, d, generator=g).to(dtype)
    kc, vc = (torch.randn(b, t_max, s, h, d, generator=g).to(dtype) for _ in range(2))
    nf = torch.tensor([1, t_max - n + 1, 4][:b])
    for i, c in enumerate(nf.tolist()):
        kc[i, c - 1:], vc[i, c - 1:] = float("nan"), float("inf")
    w, bias = (x.to(dtype) for x in make_norm(d, torch.float64))
    return qkv.unbind(3), kc, vc, nf, w, bias


def _frame_by_frame(q, k, v, kc, vc, nf, w, bias, backend="auto"):
    """The n frames of a run as n one-frame steps, in order."""
    return torch.stack([wmkernels.frame_decode_step(q[:, i], k[:, i], v[:, i], kc, vc, nf + i, qk_norm_weight=w,
                                                    qk_norm_bias=bias, backend=backend) for i in range(q.shape[1])], 1)


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("t_max", [16, 17], ids=["decode-kernel", "general-engine"])
@pytest.mark.parametrize("d", [13, 32])
def test_frame_decode_step_run_of_frames_equals_frame_by_frame(isa, t_max, d):
    """q, k, v (B, n, S, H, D): one call writes and decodes n consecutive frames (the sampler's commit plus next
    step), frame i over the counts' first num_frames + i slots. It must give exactly what n one-frame calls give,
    outputs and caches, on the one-row decode kernels (T_max <= 16, which read the cache once for all n frames)
    and on the general engine; nothing past each frame's count may be read."""
    (q, k, v), kc, vc, nf, w, bias = _frame_run_case(t_max, d)
    kc1, vc1 = kc.clone(), vc.clone()
    originals = [t.clone() for t in (q, k, v)]
    with _isa(isa):
        out = wmkernels.frame_decode_step(q, k, v, kc, vc, nf, qk_norm_weight=w, qk_norm_bias=bias)
        want = _frame_by_frame(q, k, v, kc1, vc1, nf, w, bias)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert torch.equal(out, want), f"{isa}: the run differs from frame-by-frame steps"
    # (NaN != NaN: the untouched slots past the counts compare through nan_to_num.)
    assert torch.equal(kc.nan_to_num(), kc1.nan_to_num()) and torch.equal(vc.nan_to_num(), vc1.nan_to_num())
    for t, o in zip((q, k, v), originals):
        assert torch.equal(t, o), "an input was modified"
    # And the numerics rule against the reference composed step by step in float64.
    kc64, vc64, outs = kc.double().clone(), vc.double().clone(), []
    for i in range(q.shape[1]):
        o64, kc64, vc64 = _decode_step_reference(q[:, i].double(), k[:, i].double(), v[:, i].double(),
                                                 torch.nan_to_num(kc64, nan=0.0, posinf=0.0), torch.nan_to_num(
                                                     vc64, nan=0.0, posinf=0.0), nf + i, w.double(), bias.double())
        outs.append(o64)
    torch.testing.assert_close(out.double(), torch.stack(outs, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("t_max", [16, 17], ids=["decode-kernel", "general-engine"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("d", [13, 32])
def test_frame_decode_step_store_last_false(isa, t_max, n, d):
    """store_last=False (a MaskGIT step, whose own K/V nobody reads again): the same output as store_last=True, the
    other frames' K/V stored as before; the last frame's slot may be left unwritten. The float one-row decode kernels
    (AVX2 / AVX-512, T_max <= 16) leave it as it was, NaN here, which also shows they never read it (NaN would spread
    into the output); the general engine stores it."""
    (q, k, v), kc, vc, nf, w, bias = _frame_run_case(t_max, d, n=n)
    kc1, vc1, kc_before, vc_before = kc.clone(), vc.clone(), kc.clone(), vc.clone()
    with _isa(isa):
        out = wmkernels.frame_decode_step(q, k, v, kc, vc, nf, qk_norm_weight=w, qk_norm_bias=bias, store_last=False)
        want = wmkernels.frame_decode_step(q, k, v, kc1, vc1, nf, qk_norm_weight=w, qk_norm_bias=bias)
    assert torch.isfinite(out).all() and torch.equal(out, want)
    skipped = isa != "portable" and t_max <= 16
    for i, c in enumerate(nf.tolist()):
        last = c - 1 + n - 1
        for got, stored, before in ((kc, kc1, kc_before), (vc, vc1, vc_before)):
            assert torch.equal(got[i, :last].nan_to_num(), stored[i, :last].nan_to_num()), "a committed frame's K/V"
            assert torch.equal(got[i, last].nan_to_num(), (before if skipped else stored)[i, last].nan_to_num())
    with pytest.raises(TypeError, match="store_last must be a bool"):
        wmkernels.frame_decode_step(q, k, v, kc, vc, nf, store_last=1)


@pytest.mark.parametrize("device,backend", BACKENDS + [pytest.param("cpu", "reference", id="cpu-reference")])
def test_frame_decode_step_run_of_frames_every_backend(device, backend):
    dtype = torch.float64 if backend == "reference" else torch.float32
    (q, k, v), kc, vc, nf, w, bias = _frame_run_case(6, 16, dtype, b=2, n=2, s=3, h=2)
    x = [t.to(device) for t in (q, k, v, kc, vc, nf, w, bias)]
    kc1, vc1 = x[3].clone(), x[4].clone()
    out = wmkernels.frame_decode_step(*x[:3], x[3], x[4], x[5], qk_norm_weight=x[6], qk_norm_bias=x[7],
                                      backend=backend)
    want = _frame_by_frame(*x[:3], kc1, vc1, x[5], x[6], x[7], backend=backend)
    assert out.shape == q.shape
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x[3].nan_to_num(), kc1.nan_to_num(), atol=0, rtol=0)
    torch.testing.assert_close(x[4].nan_to_num(), vc1.nan_to_num(), atol=0, rtol=0)
    # store_last=False: the same output on every backend (each may or may not store the last frame)
    (q, k, v), kc, vc, nf, w, bias = _frame_run_case(6, 16, dtype, b=2, n=2, s=3, h=2)
    x = [t.to(device) for t in (q, k, v, kc, vc, nf, w, bias)]
    got = wmkernels.frame_decode_step(*x[:3], x[3], x[4], x[5], qk_norm_weight=x[6], qk_norm_bias=x[7],
                                      store_last=False, backend=backend)
    torch.testing.assert_close(got, out, atol=0, rtol=0)


def test_frame_decode_step_run_of_frames_float64_and_compile():
    (q, k, v), kc, vc, nf, w, bias = _frame_run_case(7, 8, torch.float64, b=2, n=2, s=3, h=2)
    kc1, vc1 = kc.clone(), vc.clone()
    out = wmkernels.frame_decode_step(q, k, v, kc, vc, nf, qk_norm_weight=w, qk_norm_bias=bias)
    assert torch.equal(out, _frame_by_frame(q, k, v, kc1, vc1, nf, w, bias))
    qf, kf, vf, kcf, vcf, wf, bf = (t.float() for t in (q, k, v, kc, vc, w, bias))
    torch.library.opcheck(torch.ops.wmk.frame_decode_step, (qf, kf, vf, kcf.clone(), vcf.clone(), nf, 0.3, wf, bf,
                                                            1e-5))
    step = torch.compile(lambda q, k, v, kc, vc, n: wmkernels.frame_decode_step(q, k, v, kc, vc, n, qk_norm_weight=wf,
                                                                                 qk_norm_bias=bf), fullgraph=True)
    kc2, vc2, kc3, vc3 = kcf.clone(), vcf.clone(), kcf.clone(), vcf.clone()
    got = step(qf, kf, vf, kc2, vc2, nf)
    assert torch.equal(got, wmkernels.frame_decode_step(qf, kf, vf, kc3, vc3, nf, qk_norm_weight=wf, qk_norm_bias=bf))
    assert torch.equal(kc2.nan_to_num(), kc3.nan_to_num())


def test_frame_decode_step_run_of_frames_bad_inputs():
    q = torch.randn(2, 3, 4, 2, 8)  # (B, n = 3, S, H, D)
    kc = torch.randn(2, 5, 4, 2, 8)
    for call in (wmkernels.frame_decode_step, lambda *a: torch.ops.wmk.frame_decode_step(*a, 0.5)):
        # slots num_frames - 1 .. num_frames + 1 must exist: num_frames <= T_max - n + 1 = 3
        with pytest.raises(ValueError, match=r"num_frames must lie in \[1, T_max - n \+ 1 = 3\] \(n = 3 frames, "
                                             r"T_max = 5\), got 4"):
            call(q, q, q, kc, kc.clone(), torch.tensor([1, 4]))
        with pytest.raises(ValueError, match=r"q holds no frame \(n = 0\)"):
            call(q[:, :0], q[:, :0], q[:, :0], kc, kc.clone(), torch.tensor(1))
        with pytest.raises(ValueError, match=r"q must be a 4-D \(B, S, H, D\) tensor \(one frame\) or a 5-D"):
            call(q[0, 0], q[0, 0], q[0, 0], kc, kc.clone(), torch.tensor(1))
        with pytest.raises(ValueError, match=r"k \(the current frames'\) must have q's shape|k and v \(the current "
                                             r"frames'\) must have q's shape"):
            call(q, q[:, :2], q, kc, kc.clone(), torch.tensor(1))
    with pytest.raises(ValueError, match=r"num_frames must lie in \[1, T_max - n \+ 1 = 3\]"):
        wmkernels.frame_decode_step(q, q, q, kc, kc.clone(), torch.tensor(4), backend="reference")


@pytest.mark.parametrize("device,backend", BACKENDS + [pytest.param("cpu", "reference", id="cpu-reference")])
def test_frame_decode_ignores_slots_past_the_count(device, backend):
    # FrameKVCache is uninitialized: whatever lies past num_frames (NaN, inf) must not reach the output.
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 2, 16, generator=g)
    kc, vc = (torch.randn(2, 6, 4, 2, 16, generator=g) for _ in range(2))
    nf = torch.tensor([2, 5])
    clean = ref.frame_decode_attention(q.double(), kc.double(), vc.double(), nf)
    for i, n in enumerate(nf.tolist()):
        kc[i, n:], vc[i, n:] = float("nan"), float("inf")
    out = wmkernels.frame_decode_attention(q.to(device), kc.to(device), vc.to(device), nf.to(device), backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.cpu().double(), clean, atol=1e-5, rtol=1e-5)


def test_frame_decode_equals_last_row_of_temporal_attention():
    q, k, v = make_qkv((2, 6, 5, 2, 16), torch.float32, "fused")
    full = wmkernels.temporal_attention(q, k, v, causal=True)
    kc = torch.zeros(2, 9, 5, 2, 16)
    vc = torch.zeros(2, 9, 5, 2, 16)
    kc[:, :6], vc[:, :6] = k, v
    out = wmkernels.frame_decode_attention(q[:, 5], kc, vc, torch.tensor(6, dtype=torch.int32))
    torch.testing.assert_close(out, full[:, 5])


def test_frame_decode_compiles_fullgraph():
    q, kc, vc = torch.randn(2, 4, 2, 8), torch.randn(2, 5, 4, 2, 8), torch.randn(2, 5, 4, 2, 8)
    step = torch.compile(lambda q, n: wmkernels.frame_decode_attention(q, kc, vc, n), fullgraph=True)
    for n in (1, 3, 5):  # the frame count is data: one graph serves every step
        torch.testing.assert_close(step(q, torch.tensor(n)), ref.frame_decode_attention(q, kc, vc, torch.tensor(n)))


@pytest.mark.parametrize("bad", [0, 6, -1])
def test_frame_decode_out_of_range_raises_on_cpu(bad):
    q, kc = torch.randn(2, 4, 2, 8), torch.randn(2, 5, 4, 2, 8)
    with pytest.raises(ValueError, match=r"num_frames must lie in \[1, T_max = 5\]"):
        wmkernels.frame_decode_attention(q, kc, kc, torch.tensor([3, bad]))


@needs_triton
def test_gpu_kernels_fall_back_on_odd_head_dims_with_one_warning():
    q, k, v = make_qkv((1, 2, 5, 1, 12), torch.float32, "fused")
    with pytest.warns(UserWarning, match="head dim 12 runs on the pure-PyTorch reference"):
        out = wmkernels.spatial_attention(q, k, v, backend="triton")
    torch.testing.assert_close(out, ref.spatial_attention(q, k, v))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call stays silent
        wmkernels.spatial_attention(q, k, v, backend="triton")
    # The C++ CPU kernel takes any head dim, without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(wmkernels.spatial_attention(q, k, v), out)


@needs_triton
def test_frame_decode_gpu_kernels_clamp_num_frames():
    # Triton (the interpreter here) cannot raise on a device value without a sync: it clamps to [1, T_max].
    q, kc, vc = torch.randn(2, 4, 2, 16), torch.randn(2, 5, 4, 2, 16), torch.randn(2, 5, 4, 2, 16)
    out = wmkernels.frame_decode_attention(q, kc, vc, torch.tensor([0, 9]), backend="triton")
    expected = ref.frame_decode_attention(q, kc, vc, torch.tensor([1, 5]))
    torch.testing.assert_close(out, expected)


def test_empty_inputs():
    q = torch.randn(0, 3, 4, 2, 8)
    assert wmkernels.spatial_attention(q, q, q).shape == q.shape
    assert wmkernels.temporal_attention(q, q, q).shape == q.shape
    q = torch.randn(2, 3, 0, 2, 8, requires_grad=True)
    out = wmkernels.temporal_attention(q, q, q)
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_bad_inputs_raise_clearly():
    q = torch.randn(2, 3, 4, 2, 8)
    with pytest.raises(ValueError, match="must be a 5-D"):
        wmkernels.spatial_attention(q[0], q, q)
    with pytest.raises(ValueError, match="k and v must have q's shape"):
        wmkernels.spatial_attention(q, q[:, :2], q[:, :2])
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        wmkernels.temporal_attention(q, q, q[:, :2])
    with pytest.raises(TypeError, match="k has dtype torch.float64 but q has torch.float32"):
        wmkernels.spatial_attention(q, q.double(), q)
    with pytest.raises(ValueError, match="v is on meta but q is on cpu"):
        wmkernels.spatial_attention(q, q, q.to("meta"))
    with pytest.raises(ValueError, match="Tk = 2 < Tq = 3"):
        wmkernels.temporal_attention(q, q[:, :2], q[:, :2], causal=True)
    with pytest.raises(ValueError, match=r"qk_norm_weight must have shape \(D,\) = \(8,\)"):
        wmkernels.spatial_attention(q, q, q, qk_norm_weight=torch.ones(4))
    with pytest.raises(ValueError, match="qk_norm_bias was given without qk_norm_weight"):
        wmkernels.spatial_attention(q, q, q, qk_norm_bias=torch.ones(8))
    with pytest.raises(TypeError, match="float32, float16, bfloat16 or float64"):
        wmkernels.spatial_attention(*(q.long(),) * 3)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        wmkernels.spatial_attention(q.tolist(), q, q)
    # The ops themselves check too (direct torch.ops calls skip the Python checks).
    with pytest.raises(ValueError, match="k and v must have q's shape"):
        torch.ops.wmk.spatial_attention(q, q[:, :2], q[:, :2], 0.5)
    with pytest.raises(TypeError, match="k has dtype"):
        torch.ops.wmk.temporal_attention(q, q.half(), q.half(), True, 0.5)
    kc = torch.randn(2, 5, 4, 2, 8)
    with pytest.raises(TypeError, match="num_frames must be an int32 or int64 tensor"):
        wmkernels.frame_decode_attention(q[:, 0], kc, kc, torch.tensor(2.0))
    with pytest.raises(ValueError, match=r"num_frames must have shape \(\) or \(B,\)"):
        wmkernels.frame_decode_attention(q[:, 0], kc, kc, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="the caches must be"):
        wmkernels.frame_decode_attention(q[:, 0], kc[:, :, :3], kc[:, :, :3], torch.tensor(2))
