"""GENIE-compatible layers: names and layout, parity with the reference GENIE block, cached paths, compile."""
import copy
import statistics

import pytest
import torch

from wmkernels.nn import FrameKVCache, SelfAttention, STBlock, STTransformer
from wmkernels.nn.st_block import Mlp
from wmkernels.reference.genie import GenieSelfAttention, GenieSTBlock, GenieSTTransformer

D_MODEL, HEADS = 32, 4


def _perturb_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (LayerNorm weights and biases included), so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


def _seeded(build) -> torch.nn.Module:
    """build() under the global generator seeded to 0 (its initialisation no longer depends on the tests run before),
    then perturbed (_perturb_)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _perturb_(build())


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _assert_within_rule(errs, ref_errs):
    """DESIGN.md's 2x rule over several fixed inputs: perturbed multi-layer models amplify rounding chaotically, so
    on one input the float32 reference can land far closer to float64 than usual and a 2x rule on a single input
    fails by chance. The rule applies to the median of the per-input ratios, and every input must stay within 2x
    the float32 reference's worst error."""
    ratios = [e / max(r, 1e-30) for e, r in zip(errs, ref_errs)]
    assert statistics.median(ratios) <= 2, f"error / reference-in-float32 error per input: {ratios}"
    assert max(errs) <= 2 * max(ref_errs), f"errors {errs} vs the float32 reference's {ref_errs}"


def test_parameter_names_match_genie():
    for qk_norm in (True, False):
        ours = STTransformer(2, D_MODEL, HEADS, qk_norm=qk_norm, qkv_bias=True)
        ref = GenieSTTransformer(2, num_heads=HEADS, d_model=D_MODEL, qk_norm=qk_norm, qkv_bias=True)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    names = set(STBlock(D_MODEL, HEADS, qk_norm=True).state_dict())
    assert "spatial_attn.norm.weight" in names and "temporal_attn.qkv.weight" in names and "mlp.fc2.bias" in names
    assert not any(n.startswith("norm1") for n in names)  # Identity pre-norms with qk_norm, as in GENIE
    assert "norm1.weight" in STBlock(D_MODEL, HEADS, qk_norm=False).state_dict()


@pytest.mark.parametrize("axis", ["space", "time"])
@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("use_mup", [False, True])
def test_self_attention_matches_genie_layout(axis, qk_norm, use_mup):
    # GENIE runs attention on (B*T, S, C) (space) or (B*S, T, C) (time, causal); ours on (B, T, S, C) directly.
    b, t, s = 2, 5, 7
    ref = _perturb_(GenieSelfAttention(HEADS, D_MODEL, qkv_bias=True, qk_norm=qk_norm, use_mup=use_mup)).double()
    ours = SelfAttention(D_MODEL, HEADS, qkv_bias=True, qk_norm=qk_norm, use_mup=use_mup, axis=axis).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(b, t, s, D_MODEL, dtype=torch.float64)
    if axis == "space":
        want = ref(x.reshape(b * t, s, D_MODEL)).reshape(b, t, s, D_MODEL)
    else:
        xt = x.permute(0, 2, 1, 3).reshape(b * s, t, D_MODEL)
        want = ref(xt, causal=True).reshape(b, s, t, D_MODEL).permute(0, 2, 1, 3)
    assert _max_err(ours(x), want) < 1e-12


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 7), (3, 17, 5)])
def test_st_block_matches_reference(qk_norm, shape):
    b, t, s = shape
    # Seeded weights and inputs, the 2x rule over 8 inputs (as the STTransformer tests below). With qk_norm off
    # (LayerNorms of perturbed weights before and after the attentions) one input's fp32 error swings ~3x around the
    # reference's, on the pure-PyTorch reference attention backend as much: the 2x rule on one input failed in 12 and
    # 4 of 300 input draws for (2, 3, 7) and (3, 17, 5), and, that input fixed, in 15 and 3 of 300 draws of the
    # weights, which came from the global generator (so from the tests run before) until seeded here.
    ref = _seeded(lambda: GenieSTBlock(num_heads=HEADS, d_model=D_MODEL, qk_norm=qk_norm, qkv_bias=True))
    ours = STBlock(D_MODEL, HEADS, qk_norm=qk_norm, qkv_bias=True)
    ours.load_state_dict(ref.state_dict())
    ref64, ours64 = copy.deepcopy(ref).double(), copy.deepcopy(ours).double()
    errs, ref_errs = [], []
    for seed in range(8):
        x = torch.randn(b, t, s, D_MODEL, generator=torch.Generator().manual_seed(seed))
        want64 = ref64(x.double())
        errs.append(_max_err(ours(x), want64))
        ref_errs.append(_max_err(ref(x), want64))
        assert _max_err(ours64(x.double()), want64) < 1e-12
    _assert_within_rule(errs, ref_errs)


def test_st_block_backward_matches_reference():
    ref = _perturb_(GenieSTBlock(num_heads=HEADS, d_model=D_MODEL, qk_norm=True)).double()
    ours = STBlock(D_MODEL, HEADS, qk_norm=True).double()
    ours.load_state_dict(ref.state_dict())
    x1 = torch.randn(2, 4, 6, D_MODEL, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ref(x1).square().sum().backward()
    ours(x2).square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-10, atol=1e-10 * x1.grad.abs().max().item())
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-10, atol=1e-10 * p1.grad.abs().max().item())


@pytest.mark.parametrize("qk_norm", [True, False])
def test_st_transformer_matches_reference(qk_norm):
    # Seeded construction: with weights drawn from the global generator (which depends on the tests run before),
    # with qk_norm off 32 weight draws in 200 break the rule below (6 in 40 on our attention, 7 in 40 on the
    # pure-PyTorch reference attention: the statistic's spread, not a kernel's).
    ref = _seeded(lambda: GenieSTTransformer(3, num_heads=HEADS, d_model=D_MODEL, qk_norm=qk_norm, mlp_ratio=2.0))
    ours = STTransformer(3, D_MODEL, HEADS, qk_norm=qk_norm, mlp_ratio=2.0)
    ours.load_state_dict(ref.state_dict())  # GENIE names, unchanged
    ref64 = copy.deepcopy(ref).double()
    errs, ref_errs = [], []
    for seed in range(8):
        x = torch.randn(2, 6, 9, D_MODEL, generator=torch.Generator().manual_seed(seed))
        want64 = ref64(x.double())
        errs.append(_max_err(ours(x), want64))
        ref_errs.append(_max_err(ref(x), want64))
    _assert_within_rule(errs, ref_errs)


def test_st_block_compiles_fullgraph():
    block = _perturb_(STBlock(D_MODEL, HEADS, qk_norm=True))
    x = torch.randn(2, 3, 5, D_MODEL)
    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    with torch.no_grad():
        got, eager = compiled(x), block(x)
        want64 = STBlock(D_MODEL, HEADS, qk_norm=True).double()
        want64.load_state_dict(block.state_dict())
        want64 = want64(x.double())
    assert _max_err(got, want64) <= 2 * _max_err(eager, want64) + 1e-6


@pytest.mark.parametrize("qk_norm", [True, False])
def test_cached_paths_equal_full_forward(qk_norm):
    # prefill(frames 0..t0-1) then decode(frame t0) must give the full causal forward's outputs of those frames.
    b, t, s = 2, 5, 6
    model = _seeded(lambda: STTransformer(2, D_MODEL, HEADS, qk_norm=qk_norm))
    model64 = copy.deepcopy(model).double()
    errs, ref_errs = [], []
    for seed in range(8):
        x = torch.randn(b, t, s, D_MODEL, generator=torch.Generator().manual_seed(seed))
        cache = FrameKVCache(2, b, t, s, HEADS, D_MODEL // HEADS)
        # Only the last frame's rows out of the last layer (the sampler's passes): the same rows, every K/V written.
        cache_last = FrameKVCache(2, b, t, s, HEADS, D_MODEL // HEADS)
        with torch.no_grad():
            want64 = model64(x.double())
            full = model(x)
            pre = model.forward_prefill(x[:, :3], cache)
            dec = model.forward_decode(x[:, 3:4], cache, torch.tensor([3]))
            dec2 = model.forward_decode(x[:, 3:5], cache, torch.tensor([3]))  # two frames in one pass
            pre_last = model.forward_prefill(x[:, :3], cache_last, last_only=True)
            dec_last = model.forward_decode(x[:, 3:5], cache_last, torch.tensor([3]), last_only=True)
        assert pre_last.shape == dec_last.shape == (b, 1, s, D_MODEL)
        assert torch.equal(cache_last.k[:, :, :5], cache.k[:, :, :5])
        assert torch.equal(cache_last.v[:, :, :5], cache.v[:, :, :5])
        # Different kernels (full temporal attention vs frame decode) round differently: the float64 rule.
        errs.append(max(_max_err(pre, want64[:, :3]), _max_err(dec, want64[:, 3:4]), _max_err(dec2, want64[:, 3:5]),
                        _max_err(pre_last, want64[:, 2:3]), _max_err(dec_last, want64[:, 4:5])))
        ref_errs.append(_max_err(full, want64))
    _assert_within_rule(errs, ref_errs)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen"])
def test_mlp_without_autograd_equals_autograd_path(mode):
    # Without autograd the MLP applies GELU in place on fc1's output; it must give the autograd path's result,
    # leave its input alone, and still go back to the out-of-place GELU whenever a gradient is needed.
    mlp = _perturb_(Mlp(D_MODEL, mlp_ratio=4.0))
    x = torch.randn(3, 5, D_MODEL, requires_grad=True)
    want = mlp(x)
    want.sum().backward()  # the autograd path works
    ref64 = mlp.double()(x.detach().double())
    mlp.float()
    x0 = x.detach().clone()
    if mode == "no_grad":
        with torch.no_grad():
            got = mlp(x)
    elif mode == "inference_mode":
        with torch.inference_mode():
            got = mlp(x.detach())
    else:  # grad enabled, but neither the weights nor the input need it
        frozen = copy.deepcopy(mlp).requires_grad_(False)
        got = frozen(x.detach())
        assert not got.requires_grad
    assert torch.equal(x.detach(), x0)
    assert torch.equal(got, want.detach())
    assert _max_err(got, ref64) <= 1e-5 * ref64.abs().max().item()


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="axis"):
        SelfAttention(D_MODEL, HEADS, axis="channels")
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(30, 4)
    with pytest.raises(ValueError, match="causal"):
        SelfAttention(D_MODEL, HEADS, axis="space", causal=True)
    with pytest.raises(RuntimeError, match="temporal"):
        SelfAttention(D_MODEL, HEADS, axis="space").forward_decode(
            torch.zeros(1, 1, 2, D_MODEL), torch.zeros(1, 2, 2, HEADS, 8), torch.zeros(1, 2, 2, HEADS, 8),
            torch.tensor([0]))
