"""`show_config()`: what this installation of wmkernels was built with and can run."""
from __future__ import annotations

import importlib.util
import os

import torch

from wmkernels._extension import build_info, registered_ops


def config() -> dict:
    """The configuration `show_config` prints, as a dict."""
    info = build_info()
    info.update(
        torch_version_running=torch.__version__,
        torch_threads=torch.get_num_threads(),
        cuda_available=torch.cuda.is_available(),
        triton_importable=importlib.util.find_spec("triton") is not None,
        triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
        default_backend=os.environ.get("WMK_BACKEND", "auto"),
        ops=registered_ops(),
    )
    if info["cuda_available"]:
        info["gpu"] = torch.cuda.get_device_name()
    return info


def show_config(file=None) -> None:
    """Print the build and runtime configuration of wmkernels."""
    from wmkernels import __version__

    info = config()
    rows = [
        ("wmkernels", f"{__version__} ({info['variant']} build)"),
        ("torch (built against)", info["torch_version"]),
        ("torch (running)", info["torch_version_running"]),
        ("CUDA kernels", f"yes, CUDA {info['cuda_version']}" if info["with_cuda"] else "no (CPU build)"),
        ("CUDA architectures", info["cuda_archs"] or "-"),
        ("GPU", info.get("gpu", "none visible")),
        ("compiler", f"{info['cxx_compiler']} (C++ {info['cxx_standard']})"),
        ("-march=native", "yes" if info["native_build"] else "no (portable)"),
        ("CPU features", ", ".join(info["cpu_features"]) or "-"),
        ("OpenMP threads", info["openmp_max_threads"]),
        ("torch threads", info["torch_threads"]),
        ("Triton", ("importable" if info["triton_importable"] else "not installed")
         + (" (interpreter: TRITON_INTERPRET=1)" if info["triton_interpret"] else "")),
        ("default backend", f"{info['default_backend']} (WMK_BACKEND)"),
        ("ops", ", ".join(info["ops"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=file)
