"""Print CMake `set()` lines describing the installed torch.

CMake runs this with the Python it builds for. We read paths from the installed torch instead of
using its CMake package: that package probes for a GPU when no arch list is set and needs a full
CUDA toolkit layout, while the pip wheels put CUDA headers and libraries under site-packages/nvidia.
"""
import glob
import os

import torch

torch_dir = os.path.dirname(torch.__file__)
site = os.path.dirname(torch_dir)


def cmake_list(paths):
    return ";".join(p.replace("\\", "/") for p in paths)


nvidia_root = os.path.join(site, "nvidia")
nvidia_includes = sorted(p for p in glob.glob(os.path.join(nvidia_root, "*", "include")) if os.path.isdir(p))
nvidia_libs = sorted(p for p in glob.glob(os.path.join(nvidia_root, "*", "lib")) if os.path.isdir(p))
nvidia_bins = sorted(p for p in glob.glob(os.path.join(nvidia_root, "*", "bin")) if os.path.isdir(p))

values = {
    "WMK_TORCH_VERSION": torch.__version__,
    "WMK_TORCH_CUDA_VERSION": torch.version.cuda or "",
    "WMK_TORCH_INCLUDE_DIRS": cmake_list(
        [os.path.join(torch_dir, "include"), os.path.join(torch_dir, "include", "torch", "csrc", "api", "include")]
    ),
    "WMK_TORCH_LIBRARY_DIR": os.path.join(torch_dir, "lib"),
    "WMK_TORCH_CXX11_ABI": str(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
    "WMK_NVIDIA_INCLUDE_DIRS": cmake_list(nvidia_includes),
    "WMK_NVIDIA_LIBRARY_DIRS": cmake_list(nvidia_libs),
    "WMK_NVIDIA_BIN_DIRS": cmake_list(nvidia_bins),
}
for key, value in values.items():
    print(f'set({key} "{value}")')
