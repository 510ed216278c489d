"""Fuzz spatial / temporal / frame-decode attention: random (B, T, S, H, D) with 0 and 1, dtypes, per-tensor
layouts (fused qkv views, transposed, sliced, expanded), causal masks with Tk >= Tq, qk_norm, scales, frame counts."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import wmkernels
from tests.fuzz.strategies import FLOATS, LAYOUTS, arrange, assert_rule, expect_clear_error, randint, randn
from wmkernels.reference import attention as ref

SMALL = st.sampled_from([0, 1, 1, 2, 3])
SEQ = st.sampled_from([1, 1, 2, 3, 5, 9, 17])
HEAD_DIMS = st.sampled_from([1, 3, 8, 16, 33])


@st.composite
def attention_case(draw):
    axis = draw(st.sampled_from(["spatial", "temporal"]))
    b, h = draw(SMALL), draw(st.sampled_from([1, 1, 2, 3]))
    t, s, d = draw(SEQ), draw(SEQ), draw(HEAD_DIMS)
    if axis == "spatial":
        t = draw(SMALL)
    else:
        s = draw(SMALL)
    causal = axis == "temporal" and draw(st.booleans())
    tk = t + draw(st.sampled_from([0, 0, 1, 4])) if axis == "temporal" else t
    return dict(axis=axis, shape=(b, t, s, h, d), tk=tk, causal=causal, dtype=draw(st.sampled_from(FLOATS)),
                layouts=[draw(st.sampled_from(LAYOUTS + ("fused",))) for _ in range(3)],
                qk_norm=draw(st.sampled_from([None, "weight", "both"])),
                scale=draw(st.sampled_from([None, 0.0, 0.37, -1.0, 3.0])), seed=draw(st.integers(0, 2**31)),
                fused_op=tk == t and draw(st.booleans()))


def make_inputs(c):
    b, t, s, h, d = c["shape"]
    tk = c["tk"]
    fused = randn((b, t, s, 3, h, d), c["dtype"], c["seed"]) if tk == t else None
    out = []
    for i, layout in enumerate(c["layouts"]):
        shape = (b, t if i == 0 else tk, s, h, d)
        if layout == "fused" and fused is not None:
            out.append(fused[:, :, :, i])
        else:
            out.append(arrange(randn(shape, c["dtype"], c["seed"] + 10 + i), layout if layout != "fused" else
                               "contiguous", c["seed"] + i))
    return out


def reference(c, q, k, v, w, bias):
    if w is not None:
        dim = q.shape[-1]
        q = F.layer_norm(q, (dim,), w.to(q.dtype), None if bias is None else bias.to(q.dtype), 1e-5)
        k = F.layer_norm(k, (dim,), w.to(k.dtype), None if bias is None else bias.to(k.dtype), 1e-5)
    scale = c["scale"]
    if c["axis"] == "spatial":
        return ref.spatial_attention(q, k, v, scale)
    return ref.temporal_attention(q, k, v, c["causal"], scale)


def call(c, q, k, v, w, bias):
    kw = dict(qk_norm_weight=w, qk_norm_bias=bias)
    if c["fused_op"]:  # the fused-projection ops, on the three stacked (gradients flow back through the stack)
        qkv = torch.stack((q, k, v), 3)
        if c["axis"] == "spatial":
            return wmkernels.spatial_attention_qkv(qkv, c["scale"], **kw)
        return wmkernels.temporal_attention_qkv(qkv, c["causal"], c["scale"], **kw)
    if c["axis"] == "spatial":
        return wmkernels.spatial_attention(q, k, v, c["scale"], **kw)
    return wmkernels.temporal_attention(q, k, v, c["causal"], c["scale"], **kw)


@given(case=attention_case())
def test_attention_forward_backward_match_reference(case):
    c = case
    q, k, v = make_inputs(c)
    d = c["shape"][-1]
    w = bias = None
    if c["qk_norm"]:
        w = (1 + 0.3 * randn((d,), torch.float64, c["seed"] + 5)).to(c["dtype"])
        bias = (0.2 * randn((d,), torch.float64, c["seed"] + 6)).to(c["dtype"]) if c["qk_norm"] == "both" else None
    if c["axis"] == "temporal" and c["tk"] == 0 and q.numel() > 0:
        expect_clear_error(lambda: call(c, q, k, v, w, bias), "k and v", "Tk")
        return
    originals = [t.clone() for t in (q, k, v)]
    params = [t for t in (w, bias) if t is not None]
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, *params)]
    lw, lb = (leaves[3] if w is not None else None), (leaves[4] if bias is not None else None)
    out = call(c, *leaves[:3], lw, lb)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    as64 = [t.detach().double().requires_grad_() for t in leaves]
    asx = [t.detach().clone().requires_grad_() for t in leaves]
    unpack = lambda ts: (*ts[:3], ts[3] if w is not None else None, ts[4] if bias is not None else None)  # noqa: E731
    ref64, ref_x = reference(c, *unpack(as64)), reference(c, *unpack(asx))
    # Rounding allowance: exp(s) carries a relative error of about |s| ulps, so it grows with the largest score
    # (this is all that is left of the rule in float64, where the reference-in-dtype IS the float64 reference).
    def row_norm(t):
        return t.detach().double().norm(dim=-1).max().item() if t.numel() else 0.0

    if w is not None:  # LayerNorm output rows have norm <= sqrt(D) max|w| + |b|
        qn = kn = d**0.5 * w.double().abs().max().item() + (row_norm(bias) if bias is not None else 0.0)
    else:
        qn, kn = row_norm(q), row_norm(k)
    s_max = abs(c["scale"] if c["scale"] is not None else d**-0.5) * qn * kn
    v_max = v.detach().double().abs().max().item() if v.numel() else 1.0
    assert_rule(out.detach(), ref64.detach(), ref_x.detach(), 2, f"{c['axis']} forward {c['dtype']}",
                magnitude=max(1.0, s_max) * v_max)
    if out.numel() == 0:
        return
    grad = randn(out.shape, c["dtype"], c["seed"] + 3)
    out.backward(grad)
    ref64.backward(grad.double())
    ref_x.backward(grad)
    # Where the reference's gradient cancels exactly (one key, or equal keys), the kernel keeps roundings of the D-term
    # dot product dO.V, carried into dq/dk by the scale and (with qk_norm) by the LayerNorm's 1/std: the
    # allowance grows with all three.
    amplify = max(1.0, abs(c["scale"] if c["scale"] is not None else 1.0)) * max(1.0, d**0.5) * max(1, c["tk"])
    if w is not None:  # the LayerNorm backward multiplies by |w| / std of the row (up to 1 / sqrt(eps))
        rstd = max((t.detach().double().var(-1, unbiased=False) + 1e-5).rsqrt().max().item() if t.numel() else 1.0
                   for t in (q, k))
        amplify *= max(1.0, rstd) * max(1.0, w.double().abs().max().item())
    magnitude = amplify * max(t.grad.abs().max().item() for t in as64 if t.grad is not None and t.grad.numel())
    for name, t, t64, tx in zip(["q", "k", "v", "w", "b"], leaves, as64, asx):
        assert_rule(t.grad, t64.grad, tx.grad, 3, f"{c['axis']} d{name} {c['dtype']}", magnitude)
    for t, o in zip((q, k, v), originals):
        assert torch.equal(t, o), "an input was modified"


@st.composite
def decode_case(draw):
    b, s, h, d = draw(st.sampled_from([1, 1, 2, 3])), draw(SMALL), draw(st.sampled_from([1, 2])), draw(HEAD_DIMS)
    t_max = draw(st.sampled_from([1, 2, 5, 16]))
    per_batch = draw(st.booleans())
    frames = draw(st.lists(st.integers(1, t_max), min_size=b, max_size=b))
    bad = draw(st.sampled_from([None, None, 0, -3, t_max + 1, 2**40]))
    return dict(shape=(b, s, h, d), t_max=t_max, per_batch=per_batch, frames=frames, bad=bad,
                dtype=draw(st.sampled_from(FLOATS)), nf_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
                layouts=[draw(st.sampled_from(LAYOUTS)) for _ in range(3)],
                scale=draw(st.sampled_from([None, 0.5, -2.0])), seed=draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("backend", ["auto", "reference"])
@given(case=decode_case())
def test_frame_decode_matches_reference_or_raises(backend, case):
    c = case
    b, s, h, d = c["shape"]
    q = arrange(randn(c["shape"], c["dtype"], c["seed"]), c["layouts"][0], c["seed"])
    kc = arrange(randn((b, c["t_max"], s, h, d), c["dtype"], c["seed"] + 1), c["layouts"][1], c["seed"])
    vc = arrange(randn((b, c["t_max"], s, h, d), c["dtype"], c["seed"] + 2), c["layouts"][2], c["seed"])
    frames = list(c["frames"]) if c["per_batch"] else c["frames"][:1]
    if c["bad"] is not None and not (c["nf_dtype"] == torch.int32 and c["bad"] > 2**31 - 1):
        frames[-1] = c["bad"]
    nf = torch.tensor(frames if c["per_batch"] else frames[0], dtype=c["nf_dtype"])
    if not all(1 <= f <= c["t_max"] for f in frames):
        expect_clear_error(lambda: wmkernels.frame_decode_attention(q, kc, vc, nf, c["scale"], backend=backend),
                           "num_frames")
        return
    out = wmkernels.frame_decode_attention(q, kc, vc, nf, c["scale"], backend=backend)
    ref64 = ref.frame_decode_attention(q.double(), kc.double(), vc.double(), nf, c["scale"])
    ref_x = ref.frame_decode_attention(q, kc, vc, nf, c["scale"])
    assert_rule(out, ref64, ref_x, 2, f"frame decode {c['dtype']}")


@pytest.mark.parametrize("backend", ["auto", "reference"])
@given(case=decode_case(), qk_norm=st.booleans())
def test_frame_decode_step_matches_reference_or_raises(backend, case, qk_norm):
    c = case
    b, s, h, d = c["shape"]
    q, k, v = (arrange(randn(c["shape"], c["dtype"], c["seed"] + i), c["layouts"][i], c["seed"]) for i in range(3))
    # The caches are written in place: any layout but an expanded (self-overlapping) one.
    cache_layout = "contiguous" if c["layouts"][1] == "expanded" else c["layouts"][1]
    kc, vc = (arrange(randn((b, c["t_max"], s, h, d), c["dtype"], c["seed"] + i), cache_layout, c["seed"])
              for i in (3, 4))
    w, bias = (randn((d,), c["dtype"], c["seed"] + 5), randn((d,), c["dtype"], c["seed"] + 6)) if qk_norm else (None,
                                                                                                                None)
    frames = list(c["frames"]) if c["per_batch"] else c["frames"][:1]
    if c["bad"] is not None and not (c["nf_dtype"] == torch.int32 and c["bad"] > 2**31 - 1):
        frames[-1] = c["bad"]
    nf = torch.tensor(frames if c["per_batch"] else frames[0], dtype=c["nf_dtype"])
    call = lambda kc, vc: wmkernels.frame_decode_step(q, k, v, kc, vc, nf, c["scale"], qk_norm_weight=w,  # noqa: E731
                                                      qk_norm_bias=bias, backend=backend)
    if not all(1 <= f <= c["t_max"] for f in frames):
        expect_clear_error(lambda: call(kc.clone(), vc.clone()), "num_frames")
        return
    kc_out, vc_out = kc.clone(), vc.clone()
    out = call(kc_out, vc_out)

    def reference(dtype):
        qn, kn = q.to(dtype), k.to(dtype)
        if w is not None:
            qn, kn = (F.layer_norm(x, (d,), w.to(dtype), bias.to(dtype), 1e-5) for x in (qn, kn))
        kc_r, vc_r = kc.to(dtype).clone(), vc.to(dtype).clone()
        for i, n in enumerate(nf.expand(b).tolist()):
            kc_r[i, n - 1], vc_r[i, n - 1] = kn[i], v[i].to(dtype)
        return ref.frame_decode_attention(qn, kc_r, vc_r, nf, c["scale"]), kc_r

    (ref64, kc64), (ref_x, kc_x) = reference(torch.float64), reference(c["dtype"])
    assert_rule(out, ref64, ref_x, 2, f"decode step {c['dtype']}")
    assert_rule(kc_out, kc64, kc_x, 2, f"written keys {c['dtype']}")


def _q(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD_ARGS = [
    ("q", lambda: wmkernels.spatial_attention(_q(2, 3, 4, 8), _q(2, 3, 4, 8), _q(2, 3, 4, 8))),
    ("q", lambda: wmkernels.spatial_attention(*(_q(1, 2, 3, 1, 4).long(),) * 3)),
    ("k", lambda: wmkernels.spatial_attention(_q(1, 2, 3, 1, 4), _q(1, 2, 4, 1, 4), _q(1, 2, 4, 1, 4))),
    ("k", lambda: wmkernels.temporal_attention(_q(1, 3, 3, 1, 4), _q(1, 2, 3, 1, 4), _q(1, 2, 3, 1, 4))),
    ("v", lambda: wmkernels.spatial_attention(_q(1, 2, 3, 1, 4), _q(1, 2, 3, 1, 4), _q(1, 2, 3, 1, 4).double())),
    ("head dim", lambda: wmkernels.spatial_attention(*(_q(1, 2, 3, 1, 0),) * 3)),
    ("qk_norm_weight", lambda: wmkernels.spatial_attention(*(_q(1, 2, 3, 1, 4),) * 3, qk_norm_weight=_q(5))),
    ("qk_norm_weight", lambda: wmkernels.spatial_attention(*(_q(1, 2, 3, 1, 4),) * 3,
                                                           qk_norm_weight=torch.ones(4, dtype=torch.long))),
    ("qk_norm_bias", lambda: wmkernels.spatial_attention(*(_q(1, 2, 3, 1, 4),) * 3, qk_norm_bias=_q(4))),
    ("qk_norm_eps", lambda: wmkernels.spatial_attention(*(_q(1, 2, 3, 1, 4),) * 3, qk_norm_weight=_q(4),
                                                        qk_norm_eps=-1.0)),
    ("scale", lambda: wmkernels.spatial_attention(*(_q(1, 2, 3, 1, 4),) * 3, scale="big")),
    ("scale", lambda: wmkernels.spatial_attention(*(_q(1, 2, 3, 1, 4),) * 3, scale=float("nan"))),
    ("scale", lambda: wmkernels.temporal_attention(*(_q(1, 2, 3, 1, 4),) * 3, scale=float("inf"))),
    ("causal", lambda: wmkernels.temporal_attention(*(_q(1, 2, 3, 1, 4),) * 3, causal="yes")),
    ("qkv", lambda: wmkernels.spatial_attention_qkv(_q(1, 2, 3, 1, 4))),
    ("qkv", lambda: wmkernels.temporal_attention_qkv(_q(1, 2, 3, 2, 1, 4))),
    ("qkv", lambda: torch.ops.wmk.spatial_attention_qkv(_q(1, 2, 3, 4, 1, 4), 1.0)),
    ("num_frames", lambda: wmkernels.frame_decode_attention(_q(1, 3, 1, 4), _q(1, 2, 3, 1, 4), _q(1, 2, 3, 1, 4),
                                                            torch.tensor(1.0))),
    ("num_frames", lambda: wmkernels.frame_decode_attention(_q(1, 3, 1, 4), _q(1, 2, 3, 1, 4), _q(1, 2, 3, 1, 4),
                                                            3)),
    ("T_max", lambda: wmkernels.frame_decode_attention(_q(1, 3, 1, 4), _q(1, 0, 3, 1, 4), _q(1, 0, 3, 1, 4),
                                                       torch.tensor(1))),
    ("k_cache", lambda: wmkernels.frame_decode_attention(_q(1, 3, 1, 4), _q(1, 2, 3, 1, 4).half(),
                                                         _q(1, 2, 3, 1, 4), torch.tensor(1))),
    # the compiled ops directly, without the Python checks
    ("scale", lambda: torch.ops.wmk.spatial_attention(*(_q(1, 2, 3, 1, 4),) * 3, float("nan"))),
    ("lse", lambda: torch.ops.wmk.spatial_attention_backward(*(_q(1, 2, 3, 1, 4),) * 5, _q(1, 2, 3, 9), 1.0, None,
                                                             None, 1e-5)),
    ("grad_out", lambda: torch.ops.wmk.temporal_attention_backward(_q(1, 2, 3, 1, 5), *(_q(1, 2, 3, 1, 4),) * 4,
                                                                   _q(1, 2, 3, 1), True, 1.0, None, None, 1e-5)),
    ("num_frames", lambda: torch.ops.wmk.frame_decode_attention(_q(1, 3, 1, 4), _q(1, 2, 3, 1, 4),
                                                                _q(1, 2, 3, 1, 4), torch.tensor(3), 1.0)),
    ("k_cache", lambda: wmkernels.frame_decode_step(*(_q(1, 3, 1, 4),) * 3, _q(1, 1, 3, 1, 4).expand(1, 2, 3, 1, 4),
                                                    _q(1, 2, 3, 1, 4), torch.tensor(1))),
    ("v_cache", lambda: torch.ops.wmk.frame_decode_step(*(_q(1, 3, 1, 4),) * 3, _q(1, 2, 3, 1, 4),
                                                        _q(1, 1, 3, 1, 4).expand(1, 2, 3, 1, 4), torch.tensor(1), 1.0)),
    ("k", lambda: wmkernels.frame_decode_step(_q(1, 3, 1, 4), _q(1, 3, 1, 5), _q(1, 3, 1, 4), _q(1, 2, 3, 1, 4),
                                              _q(1, 2, 3, 1, 4), torch.tensor(1))),
]


@pytest.mark.parametrize("name,call", BAD_ARGS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_ARGS)])
def test_bad_arguments_name_the_argument(name, call):
    expect_clear_error(call, name)
