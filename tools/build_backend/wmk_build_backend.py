"""PEP 517 backend: scikit-build-core, plus a build requirement on the torch the user has.

A torch extension must be compiled against exactly the torch it will run with. In an isolated
build (plain `pip install .`) the build environment starts empty, so we look up the torch installed
in the target environment and require that same release there; only when none is installed do we
fall back to an unpinned `torch`. `WMK_TORCH_REQUIREMENT` overrides the choice.
"""
from __future__ import annotations

import os
import subprocess
import sys

from scikit_build_core import build as _skbuild
from scikit_build_core.build import *  # noqa: F401,F403  (re-export the PEP 517/660 hooks)

_PROBE = "import torch; print(torch.__version__)"


def _installed_torch() -> str | None:
    # pip isolates the build through PYTHONPATH/PYTHONNOUSERSITE; without them the same interpreter
    # sees the target environment's site-packages again.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _torch_requirement() -> list[str]:
    override = os.environ.get("WMK_TORCH_REQUIREMENT")
    if override:
        return [override]
    try:
        import torch  # noqa: F401  (already importable here: a --no-build-isolation build)

        return []
    except ImportError:
        pass
    version = _installed_torch()
    return [f"torch=={version}"] if version else ["torch"]


def get_requires_for_build_wheel(config_settings=None):
    return [*_skbuild.get_requires_for_build_wheel(config_settings), *_torch_requirement()]


def get_requires_for_build_editable(config_settings=None):
    return [*_skbuild.get_requires_for_build_editable(config_settings), *_torch_requirement()]


def get_requires_for_build_sdist(config_settings=None):
    return _skbuild.get_requires_for_build_sdist(config_settings)
