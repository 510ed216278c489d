"""wmk::pack_linear_weight / wmk::linear_prepacked, and the GENIE layers' rule for using them
(wmkernels.nn.packed_linear)."""
import os

import pytest
import torch
import torch.nn.functional as F

from wmkernels._extension import build_info
from wmkernels.nn import Mlp, SelfAttention, packed_linear
from wmkernels.ops import linear_prepacked, pack_linear_weight, pack_linear_weight_mkl
from wmkernels.ops.linear import mkl_packed_linear_available, packed_linear_available

needs_kernel = pytest.mark.skipif(not packed_linear_available(),
                                  reason="this CPU (or build) has no AVX2+FMA packed kernel: linear_prepacked is "
                                         "F.linear here, which test_falls_back_to_torch_linear covers")

# (leading shape of x, in_features, out_features): odd sizes, a partial last panel, one row, GENIE's products, and few
# rows against many k, where MKL's own fp32 sum is most accurate (single chains of 256 k failed the 2x rule there).
SHAPES = [((1,), 1, 1), ((7,), 33, 17), ((2, 3, 5), 16, 40), ((6,), 5, 16), ((13,), 1024, 256), ((1, 1, 256), 256, 768),
          ((4100,), 64, 24), ((4,), 512, 256), ((3,), 100, 33), ((1,), 64, 256), ((2,), 3000, 40)]


def _isa_reason(isa):
    """None if this CPU and build run the packed kernel for `isa` ($WMK_LINEAR_ISA), else why not."""
    if not packed_linear_available():
        return "this CPU (or build) has no packed kernel"
    old = os.environ.get("WMK_LINEAR_ISA")
    os.environ["WMK_LINEAR_ISA"] = isa
    try:
        w = torch.ones(1, 1)
        linear_prepacked(torch.ones(1, 1), w, None, pack_linear_weight(w))
        return None
    except RuntimeError as e:
        return str(e).splitlines()[0]
    finally:
        if old is None:
            os.environ.pop("WMK_LINEAR_ISA", None)
        else:
            os.environ["WMK_LINEAR_ISA"] = old


ISA_REASONS = {isa: _isa_reason(isa) for isa in ("avx512", "avx2")}  # None where the kernel runs
ISAS = [pytest.param(isa, id=isa, marks=pytest.mark.skipif(why is not None, reason=str(why)))
        for isa, why in ISA_REASONS.items()]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Each packed kernel this CPU runs, forced through $WMK_LINEAR_ISA."""
    monkeypatch.setenv("WMK_LINEAR_ISA", request.param)
    return request.param


class _threads:
    """torch's thread count set to n inside the block."""
    def __init__(self, n):
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _weights(n, k, bias=True, seed=1):
    g = _gen(seed)
    return torch.randn(n, k, generator=g), (torch.randn(n, generator=g) if bias else None)


def _errors(got, x, weight, bias):
    """Max error of `got` and of torch's fp32 F.linear, against F.linear in float64."""
    want = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    ref = F.linear(x, weight, bias)
    return (got.double() - want).abs().max().item(), (ref.double() - want).abs().max().item()


@needs_kernel
@pytest.mark.parametrize("lead,k,n", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_reference_within_twice_torch_error(isa, lead, k, n, bias):
    x = torch.randn(*lead, k, generator=_gen())
    weight, b = _weights(n, k, bias)
    original = x.clone(), weight.clone()
    got = linear_prepacked(x, weight, b, pack_linear_weight(weight))
    assert got.shape == (*lead, n) and got.dtype == torch.float32 and got.is_contiguous()
    err, ref_err = _errors(got, x, weight, b)
    assert err <= 2 * ref_err, f"max error {err} against torch's fp32 {ref_err}"
    assert torch.equal(x, original[0]) and torch.equal(weight, original[1]), "an input was modified"


@needs_kernel
def _check_strided_inputs(packed, weight, bias, positions):
    """Transposed, sliced and broadcast x (positions to 2 x positions rows, in_features 24): the contiguous x's
    result, within the 2x rule."""
    base = torch.randn(2, 24, positions, generator=_gen())
    for x in (base.transpose(1, 2), base[:, :, ::2].transpose(1, 2),
              torch.randn(positions, 48, generator=_gen())[:, ::2],
              torch.randn(1, 24, generator=_gen()).expand(positions, 24)):
        got = linear_prepacked(x, weight, bias, packed)
        assert torch.equal(got, linear_prepacked(x.contiguous(), weight, bias, packed))
        err, ref_err = _errors(got, x, weight, bias)
        assert err <= 2 * ref_err


def test_strided_inputs(isa):
    weight, bias = _weights(40, 24)
    packed = pack_linear_weight(weight.t().contiguous().t())  # a column-major weight packs to the same panels
    assert torch.equal(packed, pack_linear_weight(weight))
    _check_strided_inputs(packed, weight, bias, 6)


@needs_kernel
def test_each_row_is_independent_of_row_count_and_threads(isa):
    """One sum order for every row: the sampler's one-frame and two-frame passes agree bitwise."""
    weight, bias = _weights(72, 256)
    packed = pack_linear_weight(weight)
    x = torch.randn(300, 256, generator=_gen())
    full = linear_prepacked(x, weight, bias, packed)
    for rows in (1, 5, 6, 7, 150):
        assert torch.equal(linear_prepacked(x[:rows], weight, bias, packed), full[:rows])
    with _threads(1):
        assert torch.equal(linear_prepacked(x, weight, bias, packed), full)


# Shapes that reach every tiling of the AVX-512 kernel: groups of 1-4 panels (and splits of them over threads), a
# partial last panel, whole and short row tiles, k past one sum block of 256, and a thread split by rows (few panels).
ISA_SHAPES = [(1, 1, 1), (7, 33, 17), (13, 300, 72), (97, 512, 1000), (300, 1024, 256), (256, 256, 768), (61, 20, 48)]


@pytest.mark.skipif(any(why is not None for why in ISA_REASONS.values()),
                    reason="needs both the AVX2 and the AVX-512 packed kernel (an AVX-512 CPU); this one lacks "
                           f"one: {ISA_REASONS['avx512'] or ISA_REASONS['avx2']}")
@pytest.mark.parametrize("m,k,n", ISA_SHAPES, ids=str)
def test_avx2_and_avx512_kernels_agree_bitwise(monkeypatch, m, k, n):
    """The two kernels sum every output in the same order: the layers' results do not depend on the CPU's ISA."""
    x = torch.randn(m, k, generator=_gen())
    weight, bias = _weights(n, k)
    packed = pack_linear_weight(weight)
    got = {}
    for isa in ("avx2", "avx512"):
        monkeypatch.setenv("WMK_LINEAR_ISA", isa)
        for threads in (1, 2):
            with _threads(threads):
                got[isa, threads] = linear_prepacked(x, weight, bias, packed)
    first = got["avx2", 1]
    assert all(torch.equal(first, v) for v in got.values())
    err, ref_err = _errors(first, x, weight, bias)
    assert err <= 2 * ref_err


@needs_kernel
def test_unaligned_packed_weight_is_copied(isa):
    """The kernels load whole aligned vectors; a packed weight that starts off a 64-byte boundary is copied first."""
    weight, bias = _weights(40, 24)
    packed = pack_linear_weight(weight)
    storage = torch.empty(packed.numel() + 1)
    shifted = storage[1:].view(packed.shape)  # 4 bytes past torch's 64-byte aligned allocation
    shifted.copy_(packed)
    assert shifted.data_ptr() % 64 != 0
    x = torch.randn(9, 24, generator=_gen())
    assert torch.equal(linear_prepacked(x, weight, bias, shifted), linear_prepacked(x, weight, bias, packed))


def test_unknown_isa_is_refused(monkeypatch):
    monkeypatch.setenv("WMK_LINEAR_ISA", "sse9")
    weight = torch.ones(2, 3)
    with pytest.raises(ValueError, match="WMK_LINEAR_ISA must be avx2 or avx512, got 'sse9'"):
        linear_prepacked(torch.ones(1, 3), weight, None, pack_linear_weight(weight))


@pytest.mark.parametrize("case", ["no_packed", "float64", "no_rows", "no_features"])
def test_falls_back_to_torch_linear(case):
    weight, bias = _weights(0 if case == "no_features" else 24, 16)
    x = torch.randn(0 if case == "no_rows" else 9, 16, generator=_gen())
    packed = None if case == "no_packed" else pack_linear_weight(weight)
    if case == "float64":  # float64 input and weight: MKL, even with a (float32) packed weight at hand
        x, weight, bias, packed = x.double(), weight.double(), bias.double(), packed.double()
    assert torch.equal(linear_prepacked(x, weight, bias, packed), F.linear(x, weight, bias))


def test_opcheck_and_compile():
    weight, bias = _weights(40, 24)
    x = torch.randn(2, 5, 24, generator=_gen())
    torch.library.opcheck(torch.ops.wmk.pack_linear_weight, (weight,))
    packed = pack_linear_weight(weight)
    torch.library.opcheck(torch.ops.wmk.linear_prepacked, (x, weight, bias, packed))
    torch.library.opcheck(torch.ops.wmk.linear_prepacked, (x, weight, None, None))
    compiled = torch.compile(lambda x: torch.ops.wmk.linear_prepacked(x, weight, bias, packed), fullgraph=True)
    assert torch.equal(compiled(x), linear_prepacked(x, weight, bias, packed))


def test_bad_arguments_name_what_is_wrong():
    weight, bias = _weights(40, 24)
    packed = pack_linear_weight(weight)
    x = torch.randn(3, 24)
    with pytest.raises(ValueError, match=r"weight must be \(out_features, in_features\), got shape \[40\]"):
        linear_prepacked(x, weight[:, 0], bias, packed)
    with pytest.raises(ValueError, match="x must end in in_features = 24, got shape"):
        linear_prepacked(torch.randn(3, 23), weight, bias, packed)
    with pytest.raises(ValueError, match=r"bias must be \(40,\), got shape \[39\]"):
        linear_prepacked(x, weight, bias[:-1], packed)
    with pytest.raises(ValueError, match=r"packed must be pack_linear_weight\(weight\), of shape \(3, 24, 16\)"):
        linear_prepacked(x, weight, bias, pack_linear_weight(weight[:, :20]))
    with pytest.raises(ValueError, match="packed must have weight's dtype and device"):
        linear_prepacked(x, weight, bias, packed.double())
    with pytest.raises(ValueError, match="pack_linear_weight: weight must be float32, got Double"):
        pack_linear_weight(weight.double())
    with pytest.raises(ValueError, match=r"pack_linear_weight: weight must be \(out_features, in_features\)"):
        pack_linear_weight(torch.randn(2, 3, 4))


# ---- MKL's packed product (pack_linear_weight_mkl) ----------------------------------------------------------------

needs_mkl = pytest.mark.skipif(not mkl_packed_linear_available(),
                               reason="this torch has no MKL packed sgemm (x86-64 builds with MKL have it)")
MKL_MIN_ROWS, MKL_MAX_ROWS = 64, 1024  # csrc/linear/mkl_pack.h
_VENDOR = build_info()["cpu_vendor"]
# Row- and thread-count independence are MKL's, checked on Intel CPUs (where the layers use the packing by default);
# MKL runs other code on other vendors' CPUs, where they are not assumed.
needs_mkl_on_intel = pytest.mark.skipif(
    not mkl_packed_linear_available() or _VENDOR != "intel",
    reason=f"MKL's packed product is checked for row- and thread-count independence on Intel CPUs only (this CPU: "
           f"{_VENDOR}; MKL packed sgemm available: {mkl_packed_linear_available()})")
# (rows, in_features, out_features): GENIE's products at the sampler's row counts, the range's ends, odd sizes.
MKL_SHAPES = [(256, 256, 768), (512, 1024, 256), (64, 33, 17), (1024, 256, 1024), (97, 1000, 40), (300, 5, 3)]


@needs_mkl
@pytest.mark.parametrize("m,k,n", MKL_SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("order", ["row_major", "column_major"])
def test_mkl_matches_reference_within_twice_torch_error(m, k, n, bias, order):
    x = torch.randn(m, k, generator=_gen())
    weight, b = _weights(n, k, bias)
    stored = weight if order == "row_major" else weight.t().contiguous().t()  # the GENIE layers' order
    original = x.clone(), weight.clone()
    got = linear_prepacked(x, stored, b, pack_linear_weight_mkl(stored))
    assert got.shape == (m, n) and got.dtype == torch.float32 and got.is_contiguous()
    err, ref_err = _errors(got, x, weight, b)
    assert err <= 2 * ref_err, f"max error {err} against torch's fp32 {ref_err}"
    assert torch.equal(x, original[0]) and torch.equal(weight, original[1]), "an input was modified"


@needs_mkl
@pytest.mark.parametrize("rows", [1, 5, MKL_MIN_ROWS - 1, MKL_MAX_ROWS + 1, 2304])
def test_mkl_other_row_counts_are_torch_linear(rows):
    """Outside 64 .. 1,024 rows the product is F.linear itself (MKL's plain sgemm is as fast or more accurate)."""
    weight, bias = _weights(256, 1024)
    x = torch.randn(rows, 1024, generator=_gen())
    assert torch.equal(linear_prepacked(x, weight, bias, pack_linear_weight_mkl(weight)), F.linear(x, weight, bias))


@needs_mkl_on_intel
def test_mkl_rows_are_independent_of_row_count_and_threads():
    """Within the range a row's result depends on neither the number of rows nor the threads: the sampler's one- and
    two-frame passes agree bitwise."""
    weight, bias = _weights(256, 1024)
    packed = pack_linear_weight_mkl(weight)
    x = torch.randn(MKL_MAX_ROWS, 1024, generator=_gen())
    full = linear_prepacked(x, weight, bias, packed)
    for rows in (MKL_MIN_ROWS, 100, 256, 512):
        assert torch.equal(linear_prepacked(x[:rows], weight, bias, packed), full[:rows])
    with _threads(1):
        assert torch.equal(linear_prepacked(x, weight, bias, packed), full)
        packed_on_one = pack_linear_weight_mkl(weight)
    assert torch.equal(linear_prepacked(x, weight, bias, packed_on_one), full)


@needs_mkl
def test_mkl_strided_inputs():
    weight, bias = _weights(40, 24)
    _check_strided_inputs(pack_linear_weight_mkl(weight), weight, bias, 70)  # 70 to 140 rows: MKL's packed path


@needs_mkl
def test_mkl_copy_of_the_packing_falls_back_to_torch_linear():
    """MKL's packing is valid only where it was written (a copy gave wrong results, or a crash): a copied packing
    is detected and the product is F.linear's."""
    weight, bias = _weights(256, 1024)
    x = torch.randn(256, 1024, generator=_gen())
    packed = pack_linear_weight_mkl(weight)
    for copy in (packed.clone(), torch.empty(packed.numel() + 64, dtype=torch.uint8)[64:].copy_(packed)):
        assert torch.equal(linear_prepacked(x, weight, bias, copy), F.linear(x, weight, bias))
    err, ref_err = _errors(linear_prepacked(x, weight, bias, packed), x, weight, bias)  # the original still serves
    assert err <= 2 * ref_err


@needs_mkl
def test_mkl_bad_arguments_name_what_is_wrong():
    weight, bias = _weights(40, 24)
    packed = pack_linear_weight_mkl(weight)
    x = torch.randn(70, 24)
    with pytest.raises(ValueError, match=r"packed is pack_linear_weight_mkl of a \(40, 20\) weight, but weight is "
                                         r"\(40, 24\)"):
        linear_prepacked(x, weight, bias, pack_linear_weight_mkl(weight[:, :20].contiguous()))
    with pytest.raises(ValueError, match=f"packed holds {packed.numel() - 1} bytes, expected {packed.numel()}"):
        linear_prepacked(x, weight, bias, packed[:-1])
    with pytest.raises(ValueError, match="pack_linear_weight_mkl: weight must be float32, got Double"):
        pack_linear_weight_mkl(weight.double())
    with pytest.raises(ValueError, match=r"pack_linear_weight_mkl: weight must be \(out_features, in_features\)"):
        pack_linear_weight_mkl(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="pack_linear_weight_mkl: weight must have 1 to"):
        pack_linear_weight_mkl(torch.randn(0, 3))


@needs_mkl
def test_mkl_opcheck_and_compile():
    weight, bias = _weights(40, 24)
    x = torch.randn(2, 50, 24, generator=_gen())  # 100 rows: MKL's packed product
    # Not test_aot_dispatch_dynamic for the packing: its bytes record the buffer's address (MKL's packing is valid
    # only there), so two runs never give equal bytes. Its fake kernel's size is checked against the real one.
    torch.library.opcheck(torch.ops.wmk.pack_linear_weight_mkl, (weight,),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    packed = pack_linear_weight_mkl(weight)
    packs = torch.compile(lambda w: torch.ops.wmk.pack_linear_weight_mkl(w), fullgraph=True)(weight)
    assert packs.shape == packed.shape and packs.dtype == torch.uint8
    assert torch.equal(linear_prepacked(x, weight, bias, packs), linear_prepacked(x, weight, bias, packed))
    torch.library.opcheck(torch.ops.wmk.linear_prepacked, (x, weight, bias, packed))
    compiled = torch.compile(lambda x: torch.ops.wmk.linear_prepacked(x, weight, bias, packed), fullgraph=True)
    assert torch.equal(compiled(x), linear_prepacked(x, weight, bias, packed))


# ---- the layers' rule (wmkernels.nn.packed_linear) ---------------------------------------------------------------

@pytest.fixture
def packed_layers(monkeypatch):
    """The layers' packed path with the package's panels (on AVX-512 CPUs the default is MKL's packing)."""
    monkeypatch.setattr(packed_linear, "kind", "panels")
    monkeypatch.setattr(packed_linear, "enabled", True)


@needs_kernel
def test_layers_use_the_packed_kernel_at_inference_only(packed_layers, monkeypatch):
    torch.manual_seed(0)
    mlp = Mlp(16, mlp_ratio=2.0)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        got = mlp(x)
        hidden = F.gelu(linear_prepacked(x, mlp.fc1.weight, mlp.fc1.bias, pack_linear_weight(mlp.fc1.weight)))
        want = linear_prepacked(hidden, mlp.fc2.weight, mlp.fc2.bias, pack_linear_weight(mlp.fc2.weight))
        assert torch.equal(got, want)
        monkeypatch.setattr(packed_linear, "enabled", False)
        assert torch.equal(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))
        monkeypatch.setattr(packed_linear, "enabled", True)
    grad = mlp(x)  # autograd on: nn.Linear itself, differentiable
    assert grad.requires_grad and torch.equal(grad.detach(), mlp.fc2(F.gelu(mlp.fc1(x))).detach())


@needs_kernel
def test_packed_copy_follows_weight_updates(packed_layers):
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, axis="space")
    x = torch.randn(1, 2, 5, 16)
    with torch.no_grad():
        before = attn(x)
        assert packed_linear.packed_weight(attn.proj.weight) is packed_linear.packed_weight(attn.proj.weight)
        state = {k: torch.randn_like(v) for k, v in attn.state_dict().items()}
        attn.load_state_dict(state)  # in place: the version counter moves
        after = attn(x)
        fresh = SelfAttention(16, 2, axis="space")
        fresh.load_state_dict(state)
        assert not torch.equal(before, after) and torch.equal(after, fresh(x))
        attn.proj.weight = torch.nn.Parameter(torch.randn(16, 16))  # a new tensor
        fresh.proj.weight = torch.nn.Parameter(attn.proj.weight.detach().clone())
        assert torch.equal(attn(x), fresh(x))


@needs_kernel
def test_packed_weights_is_packed_weight_of_each(packed_layers, monkeypatch):
    """The batched lookup the decode pass uses: the same copies as packed_weight, remade after an in-place update or
    for a new tensor, None where a weight cannot be packed or packing is off."""
    torch.manual_seed(0)
    mlp = Mlp(16, mlp_ratio=2.0)
    with torch.inference_mode():
        frozen = torch.randn(4, 16)  # an inference tensor: never packed
    weights = [mlp.fc1.weight, mlp.fc2.weight, frozen]
    first = packed_linear.packed_weights(weights)
    assert first[0] is packed_linear.packed_weight(mlp.fc1.weight) and first[0] is not None
    assert first[1] is packed_linear.packed_weight(mlp.fc2.weight) and first[1] is not None
    assert first[2] is None
    again = packed_linear.packed_weights(weights)
    assert again[0] is first[0] and again[1] is first[1]
    with torch.no_grad():
        mlp.fc1.weight.add_(1.0)  # in place: the version counter moves
    updated = packed_linear.packed_weights(weights)
    assert updated[0] is not first[0] and updated[1] is first[1]
    x = torch.randn(3, 16)
    with torch.no_grad():
        fresh = pack_linear_weight(mlp.fc1.weight)  # the updated weight, packed anew
        assert torch.equal(linear_prepacked(x, mlp.fc1.weight, mlp.fc1.bias, updated[0]),
                           linear_prepacked(x, mlp.fc1.weight, mlp.fc1.bias, fresh))
    monkeypatch.setattr(packed_linear, "enabled", False)
    assert packed_linear.packed_weights(weights) == [None, None, None]


@needs_kernel
def test_hooks_keep_nn_linear(packed_layers):
    torch.manual_seed(0)
    mlp = Mlp(8, mlp_ratio=1.0)
    calls = []
    handle = mlp.fc1.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(4, 8)
    with torch.no_grad():
        hooked = mlp(x)
    handle.remove()
    assert calls == [1]
    with torch.no_grad():
        fc2 = mlp.fc2
        want = linear_prepacked(F.gelu(mlp.fc1(x)), fc2.weight, fc2.bias, pack_linear_weight(fc2.weight))
        assert torch.equal(hooked, want)  # the hooked fc1 ran as nn.Linear, fc2 packed


@needs_kernel
def test_inference_tensor_weights_keep_nn_linear(packed_layers):
    """A model made under torch.inference_mode has weights without a version counter: they are never packed."""
    with torch.inference_mode():
        torch.manual_seed(0)
        mlp = Mlp(8, mlp_ratio=1.0)
        x = torch.randn(4, 8)
        assert packed_linear.packed_weight(mlp.fc1.weight) is None
        assert torch.equal(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))


def test_packing_passes_gradients_through():
    """Autograd falls through to the packing's ATen ops: a backward pass gives the weight the unpacked gradient."""
    weight = torch.randn(20, 8, requires_grad=True)
    grad = torch.randn(2, 8, 16, generator=_gen())  # (panels, in_features, 16); outputs 20..31 are padding
    pack_linear_weight(weight).backward(grad)
    want = grad.transpose(1, 2).reshape(32, 8)[:20]
    assert torch.equal(weight.grad, want)


def test_refuses_autograd():
    weight, bias = _weights(8, 4)
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="linear_prepacked has no autograd"):
        linear_prepacked(x, weight, bias, pack_linear_weight(weight))
    with torch.no_grad():
        assert linear_prepacked(x, weight, bias, pack_linear_weight(weight)).shape == (3, 8)


@needs_mkl
def test_layers_use_mkl_packing_where_it_is_the_kind(monkeypatch):
    monkeypatch.setattr(packed_linear, "kind", "mkl")
    monkeypatch.setattr(packed_linear, "enabled", True)
    torch.manual_seed(0)
    mlp = Mlp(256, mlp_ratio=4.0)
    x = torch.randn(1, 256, 256)
    packed = []
    monkeypatch.setitem(packed_linear._PACKERS, "mkl", lambda w: packed.append(w) or pack_linear_weight_mkl(w))
    packed_linear.clear()
    with torch.no_grad():
        got = mlp(x)
        weights = [mlp.fc1.weight.data_ptr(), mlp.fc2.weight.data_ptr()]
        assert [w.data_ptr() for w in packed] == weights  # both packed in MKL's layout, once
        mlp(x)
        assert len(packed) == 2
        fc1, fc2 = mlp.fc1, mlp.fc2
        hidden = F.gelu(linear_prepacked(x, fc1.weight, fc1.bias, pack_linear_weight_mkl(fc1.weight)))
        assert torch.equal(got, linear_prepacked(hidden, fc2.weight, fc2.bias, pack_linear_weight_mkl(fc2.weight)))


def test_import_runs_nothing_that_a_fork_breaks():
    """Importing the layers must not run MKL or start torch's threads (the MKL check waits for the first product):
    a process that forks after importing (a forkserver) must get workers that can multiply. GNU OpenMP's threads do
    not survive a fork, so a worker forked after they started would hang in its first parallel product."""
    import subprocess
    import sys

    code = (
        "import os, torch\n"
        "from wmkernels.nn import Mlp, packed_linear\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    torch.manual_seed(0)\n"
        "    mlp = Mlp(256, mlp_ratio=4.0)\n"
        "    with torch.no_grad():\n"
        "        mlp(torch.randn(1, 256, 256))\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
