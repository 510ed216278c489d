"""Loads the compiled extension `wmkernels._C`, which registers the `torch.ops.wmk` ops."""
from __future__ import annotations

import torch  # noqa: F401  (torch's libraries must be loaded before the extension)

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
    return dict(_C.build_info())


def registered_ops() -> list[str]:
    """Qualified names (`wmk::name`) of every op the registry declares."""
    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("wmk::"))
