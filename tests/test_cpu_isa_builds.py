"""Every instruction-set build of the CPU kernel (AVX-512, AVX2, baseline) against the reference.

The process picks the widest build the CPU supports, so the rest of the suite tests only that one;
here each narrower build runs the C++ op's reference tests in a child process with DLLM_CPU_ISA set."""
import os
import subprocess
import sys

import pytest
import torch

import dllm_kernels  # noqa: F401  (loads the op)

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["base", "avx2", "avx512"]


def _isa_in_child(isa):
    out = subprocess.run([sys.executable, "-c", "import dllm_kernels, torch; print(torch.ops.dllm.cpu_kernel_isa())"],
                         env=dict(os.environ, DLLM_CPU_ISA=isa), capture_output=True, text=True)
    return out


def test_default_is_the_widest_build_and_a_cap_lowers_it():
    best = torch.ops.dllm.cpu_kernel_isa()
    assert best in ORDER
    for isa in ORDER:
        out = _isa_in_child(isa)
        assert out.returncode == 0, out.stderr
        # A cap above what the CPU has gives the CPU's best; at or below it gives the cap.
        assert out.stdout.strip() == ORDER[min(ORDER.index(isa), ORDER.index(best))]


def test_unknown_isa_is_a_clear_error():
    out = _isa_in_child("sse9")
    assert out.returncode != 0 and "DLLM_CPU_ISA must be base, avx2 or avx512" in out.stderr


NARROWER = ORDER[:ORDER.index(torch.ops.dllm.cpu_kernel_isa())]


@pytest.fixture(scope="module")
def reference_runs(request):
    """The reference tests under every selected narrower build, started together: the runs are
    independent and mostly Python, so a second core halves the wait. One OpenMP thread each, or
    the two runs' thread pools spin against each other; the op's steps there are all below its
    fan-out size (cpu_threads.h), so they run on the calling thread either way."""
    selected = {item.callspec.params["isa"] for item in request.session.items
                if item.originalname == "test_narrower_build_matches_the_reference"}
    runs = {isa: subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   os.path.join(HERE, "test_fused_unmask_cpu.py")],
                                  env=dict(os.environ, DLLM_CPU_ISA=isa, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(HERE))
            for isa in sorted(selected)}
    yield runs
    for proc in runs.values():  # an interrupted session leaves none running
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.skipif(not NARROWER, reason="the CPU has only the baseline build")
@pytest.mark.parametrize("isa", NARROWER)
def test_narrower_build_matches_the_reference(isa, reference_runs):
    stdout, stderr = reference_runs[isa].communicate()
    assert reference_runs[isa].returncode == 0, stdout[-4000:] + stderr[-2000:]
    assert " passed" in stdout and "failed" not in stdout
