"""PEP 517 backend: scikit-build-core, plus two things a torch extension needs.

1. The build requires the torch the user has. A torch extension must be compiled against exactly the torch it
   will run with. In an isolated build (plain `pip install .`) the build environment starts empty, so we look up
   the torch installed in the target environment and require that same release there; only when none is
   installed do we fall back to an unpinned `torch`. `WMK_TORCH_REQUIREMENT` overrides the choice.
2. Wheels name their variant and pin their torch. After scikit-build-core builds the wheel, its version gets a
   local label (`+cpu`, `+cu130`: from `wmkernels/_build_config.json`, which CMake writes) and its torch
   requirement becomes `torch==<the release it was built against>`. `prepare_metadata_for_build_wheel` is left
   out on purpose so that front-ends read the metadata from the finished wheel.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

from scikit_build_core import build as _skbuild
from scikit_build_core.build import build_editable, build_sdist, prepare_metadata_for_build_editable  # noqa: F401

_PROBE = "import torch; print(torch.__version__)"


def _installed_torch() -> str | None:
    # pip isolates the build through PYTHONPATH/PYTHONNOUSERSITE; without them the same interpreter
    # sees the target environment's site-packages again.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


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


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with tempfile.TemporaryDirectory() as scratch:
        built = _skbuild.build_wheel(scratch, config_settings, None)
        return label_wheel(os.path.join(scratch, built), wheel_directory)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def label_wheel(path: str, out_dir: str) -> str:
    """Copy the wheel at `path` into `out_dir` with the variant label and the torch pin; return its file name."""
    with zipfile.ZipFile(path) as source:
        config = json.loads(source.read("wmkernels/_build_config.json"))
        old_info = next(n.split("/")[0] for n in source.namelist() if n.split("/")[0].endswith(".dist-info"))
        dist, version = old_info[: -len(".dist-info")].rsplit("-", 1)
        new_version = f"{version.split('+')[0]}+{config['variant']}"
        new_info = f"{dist}-{new_version}.dist-info"
        torch_pin = config["torch_version"].split("+")[0]
        entries = []
        for info in source.infolist():
            data = source.read(info)
            name = info.filename
            if name.startswith(old_info + "/"):
                name = new_info + name[len(old_info):]
            if name == f"{new_info}/METADATA":
                text = re.sub(r"(?m)^Version: .*$", f"Version: {new_version}", data.decode("utf-8"))
                text = re.sub(r"(?m)^Requires-Dist: torch\b[^;\n]*", f"Requires-Dist: torch=={torch_pin}", text)
                data = text.encode("utf-8")
            if name != f"{new_info}/RECORD":
                entries.append((name, info, data))
    record = "".join(_record_line(name, data) + "\n" for name, _, data in entries) + f"{new_info}/RECORD,,\n"
    filename = os.path.basename(path).replace(f"-{version}-", f"-{new_version}-", 1)
    os.makedirs(out_dir, exist_ok=True)
    with zipfile.ZipFile(os.path.join(out_dir, filename), "w", zipfile.ZIP_DEFLATED) as target:
        for name, info, data in entries:
            copied = zipfile.ZipInfo(name, info.date_time)
            copied.external_attr = info.external_attr
            copied.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(copied, data)
        target.writestr(zipfile.ZipInfo(f"{new_info}/RECORD", (2020, 1, 1, 0, 0, 0)), record)
    return filename
