"""Loads the compiled extension `wmkernels._C`, which registers the `torch.ops.wmk` ops.

Before loading it, the torch it was built against (recorded in `_build_config.json` at build time) is compared
with the running torch: a mismatch would otherwise surface as an undefined-symbol error from the dynamic loader.
"""
from __future__ import annotations

import json
import os
import re

import torch  # torch's libraries must be loaded before the extension


class IncompatibleTorchError(ImportError):
    """The installed torch is not the release this wmkernels build was compiled against."""


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return tuple(int(part) for part in match.groups()) if match else ()


def load_build_config() -> dict:
    """What this build was compiled against: torch version, CUDA version, architectures, variant (cpu/cu130)."""
    path = os.path.join(os.path.dirname(__file__), "_build_config.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def check_torch_compatibility(config: dict, torch_version: str, torch_cuda: str | None) -> None:
    """Raise IncompatibleTorchError when the running torch cannot load this build's extension."""
    built = config["torch_version"]
    variant = config.get("variant", "cpu")
    base = built.split("+")[0]
    fix = (
        f"Install the torch it was built for (pip install 'torch=={base}'), or a wmkernels build for your torch "
        f"(pip install --no-binary wmkernels wmkernels, or `pip install .` from a checkout)."
    )
    if _release(built) != _release(torch_version):
        raise IncompatibleTorchError(
            f"wmkernels ({variant} build) was compiled against torch {built}, but torch {torch_version} is installed; "
            f"torch extensions only load into the torch minor release they were built with. {fix}"
        )
    if config.get("with_cuda"):
        built_cuda = config.get("torch_cuda_version") or ""
        if not torch_cuda:
            raise IncompatibleTorchError(
                f"wmkernels is the CUDA {built_cuda} build ({variant}), compiled against torch {built}, but the "
                f"installed torch {torch_version} is a CPU-only build. Install the CUDA build of torch {base} "
                f"(pip install 'torch=={base}'), or the CPU wheel of wmkernels."
            )
        if built_cuda.split(".")[0] != torch_cuda.split(".")[0]:
            raise IncompatibleTorchError(
                f"wmkernels was built for CUDA {built_cuda} ({variant}), but the installed torch {torch_version} "
                f"uses CUDA {torch_cuda}. {fix}"
            )


BUILD_CONFIG = load_build_config()
check_torch_compatibility(BUILD_CONFIG, torch.__version__, torch.version.cuda)

try:
    from wmkernels import _C
except ImportError as exc:  # pragma: no cover - exercised only by broken installs
    raise ImportError(
        f"wmkernels could not load its compiled extension ({exc}). It must be built against the installed "
        f"torch {torch.__version__}: reinstall wmkernels (`pip install --force-reinstall --no-deps wmkernels`, "
        "or `pip install .` from a checkout)."
    ) from exc


def build_info() -> dict:
    """How the extension was built: torch version, CUDA version and architectures, CPU features, OpenMP."""
    info = dict(_C.build_info())
    info["variant"] = BUILD_CONFIG.get("variant", "cpu")
    return info


def registered_ops() -> list[str]:
    """Qualified names (`wmk::name`) of every op the registry declares."""
    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("wmk::"))
