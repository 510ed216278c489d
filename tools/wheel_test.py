"""Install the built wheels and the sdist as a user would, outside the source tree, and smoke-test them.

1. The CPU wheel: its name, its metadata (torch pinned to the release it was built against) and that it carries
   none of torch's or CUDA's libraries; then a fresh virtual environment with only torch, the wheel installed
   there, and `python -I -m wmkernels` (show_config and each op family against its reference) run from /tmp.
2. The CUDA wheel: installed into the torch 2.14.1+cu130 environment; every registered op has a CUDA kernel and
   the library holds the expected device code (tools/check_cuda_build.py).
3. The CPU wheel next to a torch it was not built for: importing raises the clear IncompatibleTorchError.
4. The sdist: built and installed from source (isolated build, no flags) into a fresh environment, then smoked.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
FOREIGN_LIBS = ("libtorch", "libc10", "libcudart", "libnvrtc", "libcublas", "libgomp")


class Failed(Exception):
    pass


def sh(cmd, cwd=None, check=True, **kw):
    print("  $ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, **kw)
    if check and done.returncode != 0:
        raise Failed(f"{cmd[0]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def one(pattern: str) -> str:
    found = glob.glob(pattern)
    if len(found) != 1:
        raise Failed(f"expected exactly one file matching {pattern}, found {found}")
    return found[0]


def pip_install(py: str, *what: str) -> None:
    """pip install into the environment of `py`, keeping nothing in pip's cache (CI's disk is shared)."""
    sh([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir", *what])


@contextlib.contextmanager
def fresh_venv(python: str, path: str, torch_version: str):
    """A new virtual environment holding only torch; removed afterwards, pass or fail.

    Each one holds a copy of torch (about 1 GB): CI's disk is shared and has run out during this step, so no two
    of them exist at once.
    """
    shutil.rmtree(path, ignore_errors=True)
    try:
        sh([python, "-m", "venv", path])
        py = os.path.join(path, "bin", "python")
        pip_install(py, f"torch=={torch_version}")
        yield py
    finally:
        shutil.rmtree(path, ignore_errors=True)


def smoke(py: str) -> None:
    """Import from site-packages (nothing of the checkout on sys.path) and run the demo's self-test."""
    with tempfile.TemporaryDirectory() as elsewhere:
        where = sh([py, "-I", "-c", "import wmkernels; print(wmkernels.__file__)"], cwd=elsewhere).stdout.strip()
        if "site-packages" not in where:
            raise Failed(f"wmkernels was imported from {where}, not from the environment's site-packages")
        out = sh([py, "-I", "-m", "wmkernels"], cwd=elsewhere).stdout
        print("\n".join("    " + line for line in out.splitlines()))
        if "all match" not in out:
            raise Failed("the self-test did not match its references")


def check_wheel_contents(wheel: str, torch_pin: str, label: str) -> None:
    name = os.path.basename(wheel)
    if f"+{label}-" not in name or "manylinux" not in name:
        raise Failed(f"{name}: expected a +{label} manylinux wheel")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    foreign = [n for n in names if os.path.basename(n).startswith(FOREIGN_LIBS)]
    if foreign:
        raise Failed(f"{name} carries libraries that torch provides: {foreign}")
    if f"Requires-Dist: torch=={torch_pin}" not in metadata:
        raise Failed(f"{name} does not pin torch=={torch_pin} in its metadata")
    print(f"  {name}: +{label}, manylinux, pins torch=={torch_pin}, no torch/CUDA libraries inside")


def test_cpu_wheel(args, work):
    wheel = one(os.path.join(args.dist, "wmkernels-*+cpu-*.whl"))
    check_wheel_contents(wheel, args.torch_cpu, "cpu")
    with fresh_venv(args.python, os.path.join(work, "cpu-wheel-venv"), args.torch_cpu) as py:
        pip_install(py, wheel)
        smoke(py)


def test_cuda_wheel(args, work):
    wheel = one(os.path.join(args.dist, "wmkernels-*+cu*-*.whl"))
    torch_cuda = sh([args.cuda_python, "-c", "import torch; print(torch.__version__.split('+')[0])"]).stdout.strip()
    check_wheel_contents(wheel, torch_cuda, os.path.basename(wheel).split("+")[1].split("-")[0])
    sh([args.cuda_python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall", "--no-deps", wheel])
    with tempfile.TemporaryDirectory() as elsewhere:
        out = sh([args.cuda_python, "-I", os.path.join(HERE, "check_cuda_build.py"), "--archs", args.cuda_archs,
                  "--ptx", args.cuda_archs.split(",")[0]],
                 cwd=elsewhere).stdout
    print("\n".join("    " + line for line in out.splitlines()))


def test_mismatch_error(args, work):
    wheel = one(os.path.join(args.dist, "wmkernels-*+cpu-*.whl"))
    target = os.path.join(work, "mismatch")
    shutil.rmtree(target, ignore_errors=True)
    sh([args.cuda_python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--target", target, wheel])
    code = f"import sys; sys.path.insert(0, {target!r}); import wmkernels"
    with tempfile.TemporaryDirectory() as elsewhere:
        done = sh([args.cuda_python, "-I", "-c", code], cwd=elsewhere, check=False)
    message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    print(f"    {message}")
    expected = ("IncompatibleTorchError", f"compiled against torch {args.torch_cpu}", "pip install")
    if done.returncode == 0 or not all(part in done.stderr for part in expected):
        raise Failed(f"importing the CPU wheel next to another torch did not give the clear error:\n{done.stderr[-2000:]}")


def test_sdist(args, work):
    sdist = one(os.path.join(args.dist, "wmkernels-*.tar.gz"))
    with fresh_venv(args.python, os.path.join(work, "sdist-venv"), args.torch_cpu) as py:
        pip_install(py, sdist)
        smoke(py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dist", default="dist")
    parser.add_argument("--python", default="python3", help="base interpreter for the fresh environments")
    parser.add_argument("--torch-cpu", default="2.13.0")
    parser.add_argument("--cuda-python", default=".venv-cuda/bin/python", help="an environment with torch 2.14.1+cu130")
    parser.add_argument("--cuda-archs", default="80,90a")
    parser.add_argument("--work", default="build/wheel-test")
    args = parser.parse_args()
    args.dist = os.path.abspath(args.dist)
    args.cuda_python = os.path.abspath(args.cuda_python) if os.sep in args.cuda_python else args.cuda_python
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)

    tests = [test_cpu_wheel, test_cuda_wheel, test_mismatch_error, test_sdist]
    failed = 0
    for test in tests:
        print(f"{test.__name__}:", flush=True)
        try:
            test(args, work)
            print(f"{test.__name__}: PASSED", flush=True)
        except Failed as exc:
            failed += 1
            print(f"{test.__name__}: FAILED\n{exc}", flush=True)
    print(f"wheel tests: {len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
