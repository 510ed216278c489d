"""The import-time check that turns a torch mismatch into a clear error (wheels built for another torch)."""
import pytest

from wmkernels._extension import BUILD_CONFIG, IncompatibleTorchError, check_torch_compatibility

CPU_BUILD = {"torch_version": "2.13.0+cpu", "torch_cuda_version": "", "with_cuda": False, "variant": "cpu"}
CUDA_BUILD = {"torch_version": "2.14.1+cu130", "torch_cuda_version": "13.0", "with_cuda": True, "variant": "cu130"}


def test_this_build_matches_the_running_torch():
    import torch

    check_torch_compatibility(BUILD_CONFIG, torch.__version__, torch.version.cuda)
    assert BUILD_CONFIG["variant"] in ("cpu",) or BUILD_CONFIG["variant"].startswith("cu")


@pytest.mark.parametrize("running", ["2.13.0+cpu", "2.13.1", "2.13.0+cu130"])
def test_same_minor_release_loads(running):
    check_torch_compatibility(CPU_BUILD, running, None)


@pytest.mark.parametrize("running", ["2.14.1+cu130", "2.12.0", "3.13.0"])
def test_other_minor_release_raises_with_versions_and_fix(running):
    with pytest.raises(IncompatibleTorchError) as info:
        check_torch_compatibility(CPU_BUILD, running, "13.0")
    message = str(info.value)
    assert "compiled against torch 2.13.0+cpu" in message and running in message
    assert "pip install 'torch==2.13.0'" in message


def test_cuda_build_on_cpu_torch_raises():
    with pytest.raises(IncompatibleTorchError, match=r"CUDA 13.0 build .*CPU-only build"):
        check_torch_compatibility(CUDA_BUILD, "2.14.1+cpu", None)


def test_cuda_build_on_other_cuda_major_raises():
    with pytest.raises(IncompatibleTorchError, match=r"built for CUDA 13.0 .* uses CUDA 12.8"):
        check_torch_compatibility(CUDA_BUILD, "2.14.1+cu128", "12.8")
    check_torch_compatibility(CUDA_BUILD, "2.14.1+cu131", "13.1")
