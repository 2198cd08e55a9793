"""Builds dllm_kernels._C (the C++ ops) and, where nvcc is found, dllm_kernels._C_cuda.

The package's metadata lives in pyproject.toml; this file holds only what the build computes
(the extension modules and the package map). Install with `pip install --no-build-isolation .`
(or `-e .`) into an environment that already has torch: torch is deliberately not a build
requirement (pip would fetch a multi-GB CUDA wheel).
"""
import glob
import os
import re
import shutil

import setuptools
from setuptools import find_packages, setup
from torch.utils import cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))
CXX_FLAGS = ["-O3", "-std=c++20", "-fno-math-errno"]


def require_build_setuptools():
    """With --no-build-isolation pip builds with this environment's setuptools, not the one
    pyproject.toml asks for; an older one rejects the SPDX `license` string with a schema dump, so
    say what to upgrade instead. The minimum is read from pyproject.toml, where it is written."""
    with open(os.path.join(HERE, "pyproject.toml")) as f:
        minimum = re.search(r'"setuptools>=([0-9.]+)"', f.read()).group(1)
    have = tuple(int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2])
    if have < tuple(int(p) for p in minimum.split(".")[:2]):
        raise SystemExit(f"dllm-kernels: building needs setuptools>={minimum} (PEP 639 license metadata); "
                         f"this environment has {setuptools.__version__}, which pip uses under "
                         f"--no-build-isolation. Upgrade it: pip install -U 'setuptools>={minimum}'")


require_build_setuptools()


def cuda_home():
    """CPU torch leaves CUDA_HOME unset; find nvcc ourselves (docs/building.md)."""
    for cand in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "bin", "nvcc")):
            return cand
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(nvcc)) if nvcc else None


def want_cuda():
    flag = os.environ.get("DLLM_BUILD_CUDA", "auto")
    if flag == "0":
        return False
    found = cuda_home() is not None and bool(glob.glob(os.path.join(HERE, "csrc/cuda/*.cu")))
    if flag == "1" and not found:
        raise RuntimeError("DLLM_BUILD_CUDA=1 but nvcc or csrc/cuda/*.cu was not found")
    return found


def rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def openmp_flags():
    """at::parallel_for runs its loop serially unless the extension itself is compiled with OpenMP
    (ATen/ParallelOpenMP.h is header-only behind `#ifdef _OPENMP`). Linking names libgomp.so.1, the
    SONAME of the runtime torch has already loaded, so the process keeps one OpenMP runtime."""
    import torch

    return ["-fopenmp"] if torch.backends.openmp.is_available() else []


ext_modules = [
    CppExtension(
        "dllm_kernels._C",
        rel(glob.glob(os.path.join(HERE, "csrc/*.cpp")) + glob.glob(os.path.join(HERE, "csrc/cpu/*.cpp"))),
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": CXX_FLAGS + openmp_flags()},
        extra_link_args=openmp_flags(),
    )
]

if want_cuda():
    home = cuda_home()
    cpp_extension.CUDA_HOME = home
    archs = os.environ.get("DLLM_CUDA_ARCHS", "80;90a").split(";")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    ext_modules.append(
        CppExtension(
            "dllm_kernels._C_cuda",
            rel(glob.glob(os.path.join(HERE, "csrc/cuda/*.cpp")) + glob.glob(os.path.join(HERE, "csrc/cuda/*.cu"))),
            include_dirs=[os.path.join(HERE, "csrc"), os.path.join(home, "include")],
            library_dirs=[os.path.join(home, "lib64")],
            libraries=["cudart"],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr"] + gencode},
        )
    )

class BuildExtensionInTree(BuildExtension.with_options(use_ninja=True)):
    """Objects always go to build/temp: pip's editable install would otherwise compile into a
    throw-away directory, and the Makefile's `build_ext --inplace` would compile everything again."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(HERE, "build", "temp")


setup(
    packages=find_packages(include=["dllm_kernels", "dllm_kernels.*"]) + ["dllm_kernels.triton_kernels"],
    package_dir={"dllm_kernels.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtensionInTree},
)
