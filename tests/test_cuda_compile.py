"""Compile checks for the CUDA sources on machines without a GPU (docs/building.md).

Every csrc/cuda/*.cu file must compile with nvcc for Hopper (sm_90a) and Ampere (sm_80) without a
warning; the device kernels must stay free of torch headers; and where the CUDA extension was built,
it must load and register the CUDA implementation of the op. Where setup.py built the extension from
these sources (it compiles both architectures), the warning check compiles sm_90a only: nvcc's
warnings come from the front end, which both architectures share, and each architecture costs about
30 s of CPU here.
"""
import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
CU_FILES = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
ARCHS = ["90a", "80"]
BUILT = glob.glob(os.path.join(ROOT, "dllm_kernels", "_C_cuda*.so"))


def built_from_current_sources() -> bool:
    sources = CU_FILES + glob.glob(os.path.join(CSRC, "cuda", "*")) + glob.glob(os.path.join(CSRC, "kernels", "*")) \
        + glob.glob(os.path.join(CSRC, "include", "dllm", "*"))
    return bool(BUILT) and min(os.path.getmtime(p) for p in BUILT) >= max(os.path.getmtime(p) for p in sources)


def nvcc_path():
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


NVCC = nvcc_path()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def test_there_are_cuda_sources():
    assert CU_FILES, "no csrc/cuda/*.cu files"


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("source", [os.path.relpath(p, ROOT) for p in CU_FILES])
def test_cu_file_compiles(source, tmp_path):
    """One nvcc run builds every architecture (--threads: the architectures compile in parallel)."""
    out = tmp_path / "out.o"
    archs = ARCHS[:1] if built_from_current_sources() else ARCHS
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    cmd = [NVCC, "-std=c++17", "-O3", "--expt-relaxed-constexpr", f"-I{CSRC}", *gencode,
           f"--threads={len(archs)}", "-Werror=all-warnings", "-c", os.path.join(ROOT, source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nvcc failed for {source} (sm_{', sm_'.join(archs)}):\n{proc.stderr[-4000:]}"
    assert out.stat().st_size > 0


def test_device_kernels_have_no_torch_headers():
    headers = glob.glob(os.path.join(CSRC, "kernels", "*"))
    assert headers
    include = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
    for path in headers + CU_FILES:
        with open(path) as f:
            for inc in include.findall(f.read()):
                assert not inc.startswith(("torch/", "ATen/", "c10/")), f"{path} includes {inc}"


def test_cuda_extension_loads_where_built():
    if not BUILT:
        pytest.skip("dllm_kernels._C_cuda was not built (no nvcc at build time)")
    from dllm_kernels import _native

    if not _native.HAS_CUDA_KERNELS:
        # Loading needs the CUDA runtime library; a CPU machine without it may legitimately fail,
        # but only for that reason.
        assert "libcudart" in _native.CUDA_KERNELS_ERROR, _native.CUDA_KERNELS_ERROR
        pytest.skip("libcudart not loadable here: " + _native.CUDA_KERNELS_ERROR)
    # The CUDA kernel is the native one: the Triton launcher was not registered in its place.
    assert _native.has_native_kernel("fused_unmask", "CUDA") and not _native.TRITON_FALLBACK
