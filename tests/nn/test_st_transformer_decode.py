"""wmk::st_transformer_decode: STTransformer.forward_decode as one C++ op, bitwise the module path.

The op issues the layers' ops in the module path's order, so every check here is exact equality (outputs and the
K/V written into the caches), over the configurations GENIE checkpoints use and the sampler's pass shapes.
"""
import copy
import os

import pytest
import torch

from wmkernels._extension import build_info
from wmkernels.nn import FrameKVCache, SelfAttention, STTransformer, packed_linear

D_MODEL, HEADS, LAYERS = 32, 4, 3
B, T, S = 2, 6, 33  # a frame is B * S = 66 rows: MKL's packed product serves 64 .. 1,024 (nn.packed_linear)


def _model(seed=0, dtype=torch.float32, d_model=D_MODEL, heads=HEADS, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = STTransformer(LAYERS, d_model, heads, **kwargs)
        with torch.no_grad():  # random LayerNorm weights and biases too, so that every parameter matters
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    return model.to(dtype).eval()


def _filled_cache(model, x, frames):
    cache = FrameKVCache(LAYERS, B, T, S, HEADS, D_MODEL // HEADS, dtype=x.dtype)
    if frames:
        with torch.no_grad():
            model.forward_prefill(x[:, :frames], cache, need_output=False)
    return cache


def _both_paths(model, x, cache, position, **kwargs):
    """(output, k, v) of forward_decode through the op and through the layers, each on its own copy of the cache."""
    results = []
    for fused in (True, False):
        model.fused_decode = fused
        c = copy.deepcopy(cache)
        with torch.inference_mode():
            out = model.forward_decode(x, c, position, **kwargs)
        results.append((out, c.k, c.v))
    model.fused_decode = True
    return results


CONFIGS = {
    "genie": dict(qk_norm=True),  # GENIE's default: Identity pre-norms, qk LayerNorm, no qkv bias
    "layernorm": dict(qk_norm=False),  # pre-norm LayerNorms, no qk norm
    "all_biases": dict(qk_norm=True, qkv_bias=True, proj_bias=True, mlp_bias=True, use_mup=True),
    "no_biases": dict(qk_norm=False, qkv_bias=False, proj_bias=False, mlp_bias=False),
}


@pytest.fixture(params=["panels", "mkl", None], ids=["panels", "mkl_packed", "unpacked"])
def packed_linears(request, monkeypatch):
    """The Linears through each packing (wmkernels.nn.packed_linear): the package's panels, MKL's packed product, or
    none (all through F.linear)."""
    if request.param == "panels" and not packed_linear.packed_linear_available():
        pytest.skip("no AVX2+FMA packed Linear kernel on this CPU")
    if request.param == "mkl" and not packed_linear.mkl_packed_linear_available():
        pytest.skip("this torch has no MKL packed sgemm")
    monkeypatch.setattr(packed_linear, "kind", request.param)
    monkeypatch.setattr(packed_linear, "enabled", request.param is not None)
    return request.param


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("start, n, need_output, last_only", [(2, 1, True, False), (2, 2, True, True),
                                                              (2, 3, True, False), (2, 1, False, False),
                                                              (2, 2, False, False),
                                                              (0, 4, True, True)])  # the sampler's first pass
def test_op_is_bitwise_the_module_path(config, dtype, start, n, need_output, last_only, packed_linears):
    model = _model(dtype=dtype, **CONFIGS[config])
    x = torch.randn(B, T, S, D_MODEL, generator=torch.Generator().manual_seed(1), dtype=dtype)
    cache = _filled_cache(model, x, start)
    frames = x[:, start:start + n]
    before = frames.clone()
    (out, k, v), (want, want_k, want_v) = _both_paths(model, frames, cache, torch.tensor([start]),
                                                      need_output=need_output, last_only=last_only)
    assert torch.equal(frames, before)  # the residual sums go in place, but never into the input
    written = start + n  # the cache is uninitialized (torch.empty) past the written slots
    assert torch.equal(k[:, :, :written], want_k[:, :, :written]) and torch.equal(v[:, :, :written],
                                                                                   want_v[:, :, :written])
    if not need_output:
        assert out is None and want is None
        return
    assert out.shape == want.shape == (B, 1 if last_only else n, S, D_MODEL)
    assert torch.equal(out, want)


@pytest.mark.parametrize("config", ["genie", "layernorm"])
@pytest.mark.parametrize("start, n, last_only", [(2, 1, True), (2, 2, True), (0, 4, True), (2, 2, False)])
def test_op_without_storing_the_last_frame(config, start, n, last_only, packed_linears):
    """store_last=False (the sampler's MaskGIT steps): the output and the other frames' K/V are bitwise the module
    path's (which stores every frame). The last frame's slot is NaN beforehand, so a kernel that read it would spread
    NaN into the output; with the AVX2 / AVX-512 decode kernels it stays NaN (not written)."""
    model = _model(**CONFIGS[config])
    x = torch.randn(B, T, S, D_MODEL, generator=torch.Generator().manual_seed(1))
    cache = _filled_cache(model, x, start)
    last = start + n - 1
    cache.k[:, :, last], cache.v[:, :, last] = float("nan"), float("nan")
    (out, k, v), (want, want_k, want_v) = _both_paths(model, x[:, start:start + n], cache, torch.tensor([start]),
                                                      last_only=last_only, store_last=False)
    assert torch.isfinite(out).all() and torch.equal(out, want)
    assert torch.equal(k[:, :, :last], want_k[:, :, :last]) and torch.equal(v[:, :, :last], want_v[:, :, :last])
    assert torch.isfinite(want_k[:, :, last]).all()  # the module path stored it
    if {"avx2", "fma"} <= set(build_info()["cpu_features"]) and os.environ.get("WMK_ATTN_ISA") != "portable":
        assert torch.isnan(k[:, :, last]).all() and torch.isnan(v[:, :, last]).all()


def test_op_gets_the_packed_weights_where_the_layers_use_them(packed_linears):
    model = _model()
    x = torch.randn(B, 1, S, D_MODEL)
    with torch.no_grad():
        packed = model._decode_op_args(x)[-1]
        assert len(packed) == (6 * LAYERS if packed_linears else 0)
        if packed_linears:  # the copies the layers' own Linears use
            fc1 = model.layers[1].mlp.fc1
            assert packed[6 + 4] is packed_linear.packed_weight(fc1.weight)
        assert model._decode_op_args(x.double())[-1] == []  # float64: MKL


def test_op_runs_instead_of_the_layers(monkeypatch):
    model = _model()
    x = torch.randn(B, 1, S, D_MODEL)
    cache = _filled_cache(model, torch.randn(B, T, S, D_MODEL), 3)

    def module_path(*args, **kwargs):
        raise AssertionError("the module path ran")

    monkeypatch.setattr(SelfAttention, "forward_decode", module_path)
    with torch.inference_mode():
        out = model.forward_decode(x, cache, torch.tensor([3]))  # the op: no SelfAttention.forward_decode call
        assert out.shape == (B, 1, S, D_MODEL)
        model.fused_decode = False
        with pytest.raises(AssertionError, match="module path ran"):
            model.forward_decode(x, cache, torch.tensor([3]))


def test_hooks_autograd_and_other_backends_take_the_module_path():
    model = _model()
    x = torch.randn(B, 1, S, D_MODEL)
    assert model._decode_op_args(x) is None  # autograd on
    with torch.no_grad():
        assert model._decode_op_args(x) is not None
        cache = _filled_cache(model, torch.randn(B, T, S, D_MODEL), 3)
        calls = []
        handle = model.layers[1].mlp.fc1.register_forward_hook(lambda *args: calls.append(1))
        assert model._decode_op_args(x) is None
        model.forward_decode(x, cache, torch.tensor([3]))
        assert calls == [1]  # the hook ran: the layers ran
        handle.remove()
        model.layers[0].temporal_attn.backend = "reference"
        assert model._decode_op_args(x) is None
        model.layers[0].temporal_attn.backend = None
        assert model._decode_op_args(x) is not None
        handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda *args: None)  # a global hook
        try:
            assert model._decode_op_args(x) is None
        finally:
            handle.remove()
        assert model._decode_op_args(x) is not None
        model.layers[2].norm2 = torch.nn.Dropout(0.0)  # not a module the op knows
        assert model._decode_op_args(x) is None


def test_reuse_decode_args_builds_them_once_per_block(packed_linears, monkeypatch):
    """Inside reuse_decode_args the op's arguments are built at the first call and reused; outside, at every call.
    A weight changed in place inside the block is still seen (its packed copy is looked up at every call)."""
    model = _model()
    x = torch.randn(B, 1, S, D_MODEL)
    cache = _filled_cache(model, torch.randn(B, T, S, D_MODEL), 3)
    builds = []
    build = STTransformer._build_decode_op_args
    monkeypatch.setattr(STTransformer, "_build_decode_op_args", lambda self, t: builds.append(1) or build(self, t))
    step = lambda: model.forward_decode(x, copy.deepcopy(cache), torch.tensor([3]))  # noqa: E731
    with torch.inference_mode():
        want = step()
        assert len(builds) == 1
        with model.reuse_decode_args():
            for _ in range(3):
                assert torch.equal(step(), want)
            assert len(builds) == 2
            with torch.no_grad():
                model.layers[1].mlp.fc1.weight.mul_(1.5)
            changed = step()
            assert len(builds) == 2 and not torch.equal(changed, want)
        assert model._decode_args_memo is None
        assert torch.equal(step(), changed)  # the same as rebuilt outside the block
        assert len(builds) == 3
        model.fused_decode = False
        assert torch.equal(step(), changed)  # and as the module path
        model.fused_decode = True


def _op_args(dtype=torch.float32):
    model = _model(dtype=dtype)
    x = torch.randn(B, T, S, D_MODEL, dtype=dtype)
    cache = _filled_cache(model, x, 2)
    for buf in (cache.k, cache.v):  # defined values past the written slots (opcheck compares whole tensors)
        buf[:, :, 2:] = 0
    with torch.no_grad():
        params, heads, scales, eps, approximate, packed = model._decode_op_args(x)
    return model, x[:, 2:4].contiguous(), params, cache, (heads, scales, eps, packed, approximate)


def test_opcheck_and_compile():
    model, x, params, cache, (heads, scales, eps, packed, approximate) = _op_args()
    # Detached: the op is inference-only, so a backward through it raises (tests/reliability/test_inference_only_ops.py)
    # and opcheck's autograd checks, which run one for inputs that require grad, do not apply.
    params = [None if p is None else p.detach() for p in params]
    position = torch.tensor([2])
    args = (x, params, cache.k.clone(), cache.v.clone(), position, heads, scales, eps, packed, approximate, True, True)
    torch.library.opcheck(torch.ops.wmk.st_transformer_decode, args)
    step = torch.compile(lambda x, k, v, p: torch.ops.wmk.st_transformer_decode(x, params, k, v, p, heads, scales, eps,
                                                                              packed, approximate, True, True),
                         fullgraph=True)
    k1, v1, k2, v2 = cache.k.clone(), cache.v.clone(), cache.k.clone(), cache.v.clone()
    with torch.no_grad():
        got = step(x, k1, v1, position)
        want = torch.ops.wmk.st_transformer_decode(x, params, k2, v2, position, heads, scales, eps, packed,
                                                   approximate, True, True)
    assert torch.equal(got, want)
    assert torch.equal(k1[:, :, :4], k2[:, :, :4]) and torch.equal(v1[:, :, :4], v2[:, :, :4])


def test_bad_arguments_name_what_is_wrong():
    model, x, params, cache, (heads, scales, eps, packed, approximate) = _op_args()
    op = torch.ops.wmk.st_transformer_decode
    position = torch.tensor([2])
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"params must hold 20 entries per layer \(60 for the caches' 3 layers\), "
                                             r"got 59"):
            op(x, params[:-1], cache.k, cache.v, position, heads, scales, eps, packed)
        with pytest.raises(ValueError, match="scales must hold 2 per layer"):
            op(x, params, cache.k, cache.v, position, heads, scales[:-1], eps, packed)
        with pytest.raises(ValueError, match="position must be an int64 tensor of one element"):
            op(x, params, cache.k, cache.v, torch.tensor([2, 3]), heads, scales, eps, packed)
        with pytest.raises(ValueError, match="num_heads must divide C = 32, got 5"):
            op(x, params, cache.k, cache.v, position, 5, scales, eps, packed)
        with pytest.raises(ValueError, match=r"x must be \(B, n, S, C\)"):
            op(x[0], params, cache.k, cache.v, position, heads, scales, eps, packed)
        missing = list(params)
        missing[20 + 2] = None  # layer 1's spatial qkv weight
        with pytest.raises(ValueError, match="layer 1 has no spatial_attn.qkv.weight"):
            op(x, missing, cache.k, cache.v, position, heads, scales, eps, packed)
        with pytest.raises(ValueError, match="num_frames must lie in"):  # the decode op's own check, past T_max
            op(x, params, cache.k, cache.v, torch.tensor([T - 1]), heads, scales, eps, packed)


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _op_threads(model, x, cache, position, split, monkeypatch, **kwargs):
    """(output, k, v, threads) of forward_decode through the op on a copy of the cache, with the split pass forced on
    or off ($WMK_DECODE_SPLIT); threads: how many threads ran wmk::linear_prepacked (the profiler's view)."""
    monkeypatch.setenv("WMK_DECODE_SPLIT", "1" if split else "0")
    c = copy.deepcopy(cache)
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = model.forward_decode(x, c, position, **kwargs)
    threads = {e.thread for e in prof.events() if e.name == "wmk::linear_prepacked"}
    return out, c.k, c.v, len(threads)


# (S, heads): even and odd frame sizes (a frame of S = 33 splits 16 / 17), and 5 heads (a split frame's heads
# split 2 / 3)
@pytest.mark.parametrize("s, heads", [(32, 4), (33, 4), (66, 5)])
@pytest.mark.parametrize("config", ["genie", "layernorm", "all_biases"])
@pytest.mark.parametrize("start, n, last_only, store_last", [
    (2, 1, True, False),  # a MaskGIT step
    (2, 2, True, False),  # a commit and the next step
    (0, 4, True, False),  # the first pass: prompt and first step (halves end at a frame's end)
    (0, 3, True, False),  # ... with a frame split between the halves
    (1, 3, False, True),  # all frames' rows out, every frame stored
])
def test_split_pass_is_bitwise_the_unsplit_pass(s, heads, config, start, n, last_only, store_last, packed_linears,
                                                two_threads, monkeypatch):
    """Batch 1 on 2 threads: the pass as two tasks, each on half of the rows (csrc/models/st_transformer_decode_cpu.cpp,
    split_pass), gives bitwise the unsplit pass's output and K/V; and it does run split (the products on 2 threads,
    where the unsplit pass calls every op from one)."""
    c = heads * 8
    model = _model(seed=3, d_model=c, heads=heads, **CONFIGS[config])
    x = torch.randn(1, T, s, c, generator=torch.Generator().manual_seed(1))
    cache = FrameKVCache(LAYERS, 1, T, s, heads, 8)
    if start:
        with torch.no_grad():
            model.forward_prefill(x[:, :start], cache, need_output=False)
    frames = x[:, start:start + n]
    if n == 3:  # a non-contiguous input: the same values, frames and positions strided
        frames = frames.transpose(1, 2).contiguous().transpose(1, 2)
    before = frames.clone()
    position = torch.tensor([start])
    kwargs = dict(last_only=last_only, store_last=store_last)
    out, k, v, split_threads = _op_threads(model, frames, cache, position, True, monkeypatch, **kwargs)
    want, want_k, want_v, threads = _op_threads(model, frames, cache, position, False, monkeypatch, **kwargs)
    assert (split_threads, threads) == (2, 1)
    assert torch.equal(frames, before)
    assert out.shape == want.shape == (1, 1 if last_only else n, s, c)
    assert torch.equal(out, want)
    stored = start + n if store_last else start + n - 1
    assert torch.equal(k[:, :, :stored], want_k[:, :, :stored]) and torch.equal(v[:, :, :stored],
                                                                                want_v[:, :, :stored])


def test_split_pass_only_where_it_applies(two_threads, monkeypatch):
    """Batch 2, one thread, float64 and a pass without output take the unsplit pass, split forced on or not; and
    the split is off with $WMK_DECODE_SPLIT=0."""
    model = _model()
    x = torch.randn(2, T, S, D_MODEL)
    cache = _filled_cache(model, x, 2)
    position = torch.tensor([2])
    assert _op_threads(model, x[:1, 2:3], _one(cache), position, True, monkeypatch)[3] == 2
    assert _op_threads(model, x[:, 2:3], cache, position, True, monkeypatch)[3] == 1  # batch 2
    torch.set_num_threads(1)
    assert _op_threads(model, x[:1, 2:3], _one(cache), position, True, monkeypatch)[3] == 1
    torch.set_num_threads(2)
    for split in (True, False):  # no output: the commit-only pass; with $WMK_DECODE_SPLIT=0 the op calls from one
        assert _op_threads(model, x[:1, 2:3], _one(cache), position, split, monkeypatch, need_output=False)[3] == 1
    model64, x64 = _model(dtype=torch.float64), x.double()
    cache64 = _filled_cache(model64, x64, 2)
    with torch.no_grad():
        assert _op_threads(model64, x64[:1, 2:3], _one(cache64), position, True, monkeypatch)[3] == 1


def _one(cache):
    """The first batch entry of a FrameKVCache, as a cache of batch 1."""
    one = FrameKVCache(LAYERS, 1, T, S, HEADS, D_MODEL // HEADS, dtype=cache.k.dtype)
    one.k.copy_(cache.k[:, :1])
    one.v.copy_(cache.v[:, :1])
    one.num_frames.copy_(cache.num_frames)
    one.host_frames = cache.host_frames
    return one


def test_split_pass_raises_the_tasks_error(two_threads, monkeypatch):
    """An error inside the tasks (here a layer without its weight, found by both) comes out as the op's error."""
    model, x, params, cache, (heads, scales, eps, packed, approximate) = _op_args()
    monkeypatch.setenv("WMK_DECODE_SPLIT", "1")
    k, v = cache.k[:, :1].clone(), cache.v[:, :1].clone()
    missing = list(params)
    missing[20 + 2] = None  # layer 1's spatial qkv weight
    with torch.no_grad(), pytest.raises(ValueError, match="layer 1 has no spatial_attn.qkv.weight"):
        torch.ops.wmk.st_transformer_decode(x[:1], missing, k, v, torch.tensor([2]), heads, scales, eps, packed,
                                            approximate, True, True)
    # A bias of the wrong size on a product written into a shared buffer (2 frames of 66 rows: MKL's packed product,
    # where the Linears take it): linear_prepacked's error, not a read past the bias
    model = _model(qkv_bias=True)
    x66 = torch.randn(1, 2, 66, D_MODEL)
    cache = FrameKVCache(LAYERS, 1, T, 66, HEADS, D_MODEL // HEADS)
    with torch.no_grad():
        params, heads, scales, eps, approximate, packed = model._decode_op_args(x66)
    wrong = list(params)
    wrong[20 + 9] = torch.zeros(3 * D_MODEL - 1)  # layer 1's temporal qkv bias
    with torch.no_grad(), pytest.raises(ValueError, match="bias must be"):
        torch.ops.wmk.st_transformer_decode(x66, wrong, cache.k, cache.v, torch.tensor([0]), heads, scales, eps,
                                            packed, approximate, True, True)


def test_split_pass_opcheck(two_threads, monkeypatch):
    """torch.library.opcheck on a batch-1 pass with the split forced on (the CPU kernel then runs as two tasks)."""
    model, x, params, cache, (heads, scales, eps, packed, approximate) = _op_args()
    monkeypatch.setenv("WMK_DECODE_SPLIT", "1")
    params = [None if p is None else p.detach() for p in params]
    for n, last_only in ((1, False), (2, True)):
        args = (x[:1, :n].contiguous(), params, cache.k[:, :1].clone(), cache.v[:, :1].clone(), torch.tensor([2]),
                heads, scales, eps, packed, approximate, True, last_only)
        torch.library.opcheck(torch.ops.wmk.st_transformer_decode, args)
