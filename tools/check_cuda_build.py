"""Verify a CUDA build of wmkernels on a machine without a GPU.

Run with the Python of an environment where wmkernels was built with WMK_CUDA=ON. Checks that:
  * the extension was built with CUDA, for the expected architectures;
  * every op the registry declares has a CUDA kernel registered;
  * the shared library holds device code (cubin) for each expected real architecture (cuobjdump).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys


def find_cuobjdump() -> str:
    import torch

    site = os.path.dirname(os.path.dirname(torch.__file__))
    candidates = glob.glob(os.path.join(site, "nvidia", "*", "bin", "cuobjdump"))
    found = candidates[0] if candidates else shutil.which("cuobjdump")
    if not found:
        sys.exit("cuobjdump not found: pip install nvidia-cuda-cuobjdump")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="90a", help="comma-separated real architectures expected, e.g. 80,90a")
    parser.add_argument("--ptx", default="", help="comma-separated virtual architectures whose PTX is expected")
    args = parser.parse_args()

    import torch

    import wmkernels
    from wmkernels._extension import build_info, registered_ops

    failures = []
    info = build_info()
    print(f"wmkernels {wmkernels.__version__} at {os.path.dirname(wmkernels.__file__)}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); built against {info['torch_version']}, "
          f"CUDA {info['cuda_version']}, archs {info['cuda_archs']}")
    if not info["with_cuda"]:
        failures.append("the extension was built without CUDA kernels")

    ops = registered_ops()
    if not ops:
        failures.append("no op is registered in torch.ops.wmk")
    for name in ops:
        has = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
        print(f"  {name:40s} CUDA kernel: {'yes' if has else 'NO'}")
        if not has:
            failures.append(f"{name} has no CUDA kernel")

    library = wmkernels._C.__file__
    listing = subprocess.run([find_cuobjdump(), "--list-elf", library], capture_output=True, text=True)
    print(listing.stdout.strip())
    for arch in args.archs.split(","):
        if f".sm_{arch}." not in listing.stdout:
            failures.append(f"{os.path.basename(library)} holds no sm_{arch} device code ({listing.stderr.strip()})")

    if args.ptx:
        ptx = subprocess.run([find_cuobjdump(), "--list-ptx", library], capture_output=True, text=True)
        print(ptx.stdout.strip())
        for arch in args.ptx.split(","):
            if f".sm_{arch}." not in ptx.stdout:
                failures.append(f"{os.path.basename(library)} holds no compute_{arch} PTX for newer GPUs")

    for failure in failures:
        print(f"FAIL: {failure}")
    print("CUDA build check: " + ("FAILED" if failures else f"OK ({len(ops)} ops, archs {args.archs})"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
