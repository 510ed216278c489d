"""Every op the registry declares must be carried through every layer: kernels, fake, Python wrapper."""
import io

import pytest
import torch

import wmkernels
from wmkernels._extension import build_info, registered_ops

OPS = registered_ops()


def test_registry_is_not_empty():
    assert "wmk::factorize_tokens" in OPS and "wmk::unfactorize_tokens" in OPS


@pytest.mark.parametrize("name", OPS)
def test_op_has_cpu_kernel(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), f"{name} has no CPU kernel"


@pytest.mark.parametrize("name", OPS)
def test_op_has_fake_kernel(name):
    entry = torch._library.simple_registry.singleton.find(name)
    assert entry.fake_impl.kernel is not None, f"{name} has no register_fake"


@pytest.mark.parametrize("name", OPS)
def test_op_has_cuda_kernel_when_built_with_cuda(name):
    has = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
    assert has == bool(build_info()["with_cuda"]), f"{name}: CUDA kernel registered={has}, build with_cuda={build_info()['with_cuda']}"


def test_build_info_and_show_config():
    info = build_info()
    assert info["torch_version"] == torch.__version__
    assert info["openmp_max_threads"] >= 1
    assert isinstance(info["cpu_features"], list)
    assert info["cpu_vendor"] in ("intel", "amd", "other")
    out = io.StringIO()
    wmkernels.show_config(file=out)
    text = out.getvalue()
    for field in ("torch (built against)", "CUDA kernels", "CUDA architectures", "CPU features", "OpenMP threads",
                  "Triton", "wmk::factorize_tokens"):
        assert field in text, f"show_config() lacks {field!r}:\n{text}"


def test_module_entry_point_runs(capsys):
    from wmkernels.__main__ import main

    main()
    out = capsys.readouterr().out
    assert "all match" in out and "MISMATCH" not in out


def test_selftest_covers_every_op():
    from wmkernels import _selftest

    missing = set(OPS) - _selftest.covered_ops()
    assert not missing, f"ops without a smoke check in wmkernels/_selftest.py: {sorted(missing)}"
