"""The CPU kernels give bitwise identical results across runs and across thread counts (1 and 2), forward and
backward, for every op. Sizes are large enough that every parallel loop is split between the two threads."""
import pytest
import torch

import wmkernels


def gen(seed):
    return torch.Generator().manual_seed(seed)


def with_threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def grads_of(fn, *inputs):
    """fn(*leaves) -> output; returns [output, grad of each leaf] for a fixed random output gradient."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    if out.requires_grad:
        grad = torch.randn(out.shape, generator=gen(99), dtype=torch.float64).to(out.dtype)
        out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves if t.grad is not None]


def attention_case(axis, dtype, qk_norm):
    q, k, v = (torch.randn(2, 16, 48, 4, 32, generator=gen(i)).to(dtype) for i in range(3))
    extra = [(1 + 0.3 * torch.randn(32, generator=gen(7))).to(dtype), (0.1 * torch.randn(32, generator=gen(8))).to(dtype)]
    extra = extra if qk_norm else []

    def fn(q, k, v, *wb):
        kw = dict(qk_norm_weight=wb[0], qk_norm_bias=wb[1]) if wb else {}
        if axis == "spatial":
            return wmkernels.spatial_attention(q, k, v, **kw)
        return wmkernels.temporal_attention(q, k, v, True, **kw)

    return fn, [q, k, v, *extra]


def fused_attention_case(axis, qk_norm):
    qkv = torch.randn(2, 16, 48, 3, 4, 32, generator=gen(0))
    w, b = 1 + 0.3 * torch.randn(32, generator=gen(7)), 0.1 * torch.randn(32, generator=gen(8))

    def fn(qkv, *wb):
        kw = dict(qk_norm_weight=wb[0], qk_norm_bias=wb[1]) if wb else {}
        if axis == "spatial":
            return wmkernels.spatial_attention_qkv(qkv, **kw)
        return wmkernels.temporal_attention_qkv(qkv, True, **kw)

    return fn, [qkv, w, b] if qk_norm else [qkv]


def frame_decode_case(dtype):
    q = torch.randn(3, 64, 4, 32, generator=gen(1)).to(dtype)
    kc, vc = (torch.randn(3, 16, 64, 4, 32, generator=gen(i)).to(dtype) for i in (2, 3))
    nf = torch.tensor([16, 5, 1])

    def fn(q, kc, vc):  # inference only: a backward through the op raises
        with torch.no_grad():
            return wmkernels.frame_decode_attention(q, kc, vc, nf)
    return fn, [q, kc, vc]


def frame_decode_step_case(dtype):
    q, k, v = (torch.randn(3, 64, 4, 32, generator=gen(i)).to(dtype) for i in (1, 4, 5))
    kc, vc = (torch.randn(3, 16, 64, 4, 32, generator=gen(i)).to(dtype) for i in (2, 3))
    w, b = (1 + 0.3 * torch.randn(32, generator=gen(7))).to(dtype), (0.1 * torch.randn(32, generator=gen(8))).to(dtype)
    nf = torch.tensor([16, 5, 1])

    def fn(q, k, v, kc, vc):  # the written caches are part of the result
        kc, vc = kc.detach().clone(), vc.detach().clone()
        out = wmkernels.frame_decode_step(q.detach(), k.detach(), v.detach(), kc, vc, nf, qk_norm_weight=w,
                                          qk_norm_bias=b)
        return torch.cat([out.flatten(), kc.flatten(), vc.flatten()])

    return fn, [q, k, v, kc, vc]


def linear_case(bias):
    x, w, b = torch.randn(600, 256, generator=gen(0)), torch.randn(200, 256, generator=gen(1)), torch.randn(200)

    def fn(x, w):  # inference only: no autograd through the op
        with torch.no_grad():
            return wmkernels.ops.linear_prepacked(x, w, b if bias else None, wmkernels.ops.pack_linear_weight(w))
    return fn, [x, w]


def mkl_linear_case():
    """MKL's packing and its product (600 rows, k = 1,024: MKL's packed path). The packing's own bytes record its
    address (MKL's packing is valid only there), so the case compares what it computes."""
    if not wmkernels.ops.linear.mkl_packed_linear_available():
        pytest.skip("this torch has no MKL packed sgemm")
    vendor = wmkernels._extension.build_info()["cpu_vendor"]
    if vendor != "intel":  # MKL's thread-count independence, checked where the layers use the packing by default
        pytest.skip(f"MKL's packed product is checked for thread-count independence on Intel CPUs only (this CPU: "
                    f"{vendor})")
    x, w, b = torch.randn(600, 1024, generator=gen(0)), torch.randn(256, 1024, generator=gen(1)), torch.randn(256)

    def fn(x, w):
        with torch.no_grad():
            return wmkernels.ops.linear_prepacked(x, w, b, wmkernels.ops.pack_linear_weight_mkl(w))
    return fn, [x, w]


CASES = {
    "factorize_tokens": lambda: (wmkernels.factorize_tokens, [torch.randint(0, 2**18, (64, 1024), generator=gen(0))]),
    "unfactorize_tokens": lambda: (wmkernels.unfactorize_tokens, [torch.randint(0, 512, (64, 1024, 2), generator=gen(0))]),
    "vq_encode": lambda: (lambda x, c: wmkernels.vq_encode(x, c)[1], [torch.randn(4096, 32, generator=gen(0)),
                                                                      torch.randn(1000, 32, generator=gen(1))]),
    "vq_encode_cosine": lambda: (lambda x, c: wmkernels.vq_encode(x, c, "cosine")[1],
                                 [torch.randn(4096, 32, generator=gen(0)).bfloat16(),
                                  torch.randn(1000, 32, generator=gen(1)).bfloat16()]),
    "vq_decode": lambda: (lambda i, c: wmkernels.vq_decode(i, c), [torch.randint(0, 1000, (8192,), generator=gen(0)),
                                                                   torch.randn(1000, 32, generator=gen(1))]),
    "lfq_encode": lambda: (wmkernels.lfq_encode, [torch.randn(65536, 18, generator=gen(0))]),
    "lfq_decode": lambda: (lambda i: wmkernels.lfq_decode(i, 18), [torch.randint(0, 2**18, (65536,), generator=gen(0))]),
    "lfq_entropy_loss_f32": lambda: (wmkernels.lfq_entropy_loss, [0.01 * torch.randn(3000, 16, generator=gen(0))]),
    "lfq_entropy_loss_f64": lambda: (wmkernels.lfq_entropy_loss,
                                     [0.01 * torch.randn(3000, 16, generator=gen(0), dtype=torch.float64)]),
    "fsq_quantize": lambda: (lambda z: wmkernels.fsq_quantize(z, [8, 8, 8, 5, 5, 5])[0],
                             [torch.randn(65536, 6, generator=gen(0))]),
    "fsq_decode": lambda: (lambda i: wmkernels.fsq_decode(i, [8, 8, 8, 5, 5, 5]),
                           [torch.randint(0, 64000, (65536,), generator=gen(0))]),
    "spatial_attention": lambda: attention_case("spatial", torch.float32, False),
    "spatial_attention_qk_norm": lambda: attention_case("spatial", torch.float32, True),
    "spatial_attention_bf16_qk_norm": lambda: attention_case("spatial", torch.bfloat16, True),
    "temporal_attention": lambda: attention_case("temporal", torch.float32, False),
    "temporal_attention_qk_norm": lambda: attention_case("temporal", torch.float32, True),
    "temporal_attention_f64_qk_norm": lambda: attention_case("temporal", torch.float64, True),
    "spatial_attention_qkv_qk_norm": lambda: fused_attention_case("spatial", True),
    "temporal_attention_qkv": lambda: fused_attention_case("temporal", False),
    "frame_decode_attention": lambda: frame_decode_case(torch.float32),
    "frame_decode_step": lambda: frame_decode_step_case(torch.float32),
    "pack_linear_weight": lambda: (wmkernels.ops.pack_linear_weight, [torch.randn(200, 96, generator=gen(0))]),
    "linear_prepacked": lambda: linear_case(True),
    "linear_prepacked_no_bias": lambda: linear_case(False),
    "pack_linear_weight_mkl": mkl_linear_case,
}


def test_every_public_op_is_covered():
    ops = {name for name in wmkernels.ops.__all__ if name not in ("BACKENDS", "BackendUnavailableError")}
    missing = {op for op in ops if not any(case == op or case.startswith(op + "_") for case in CASES)}
    assert not missing, f"ops without a determinism case: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bitwise_identical_across_runs_and_thread_counts(name):
    fn, inputs = CASES[name]()
    one = with_threads(1, lambda: grads_of(fn, *inputs))
    two = with_threads(2, lambda: grads_of(fn, *inputs))
    again = with_threads(2, lambda: grads_of(fn, *inputs))
    assert len(one) == len(two) == len(again)
    for i, (a, b, c) in enumerate(zip(one, two, again)):
        what = "output" if i == 0 else f"gradient of input {i - 1}"
        assert torch.equal(a, b), f"{name}: {what} differs between 1 and 2 threads"
        assert torch.equal(b, c), f"{name}: {what} differs between two runs"
