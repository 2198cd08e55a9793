"""CI hook for scripts/sanitize_cpu.sh: the C++ CPU path built with AddressSanitizer +
UndefinedBehaviorSanitizer, its canaries, the every-ISA row-kernel harness and the op tests under it.

Opt-in (the sanitized build of the extension alone takes minutes on 2 cores from a fresh clone):

    DLLM_SANITIZE=1 python -m pytest -q tests/test_sanitizers.py      # or: bash scripts/sanitize_cpu.sh

The build is incremental (build/sanitize/), so later runs take about 1.5 minutes. The test fails
on any sanitizer report or failing op test, and prints the end of the script's output.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(os.environ.get("DLLM_SANITIZE") != "1",
                                reason="opt-in: DLLM_SANITIZE=1 runs scripts/sanitize_cpu.sh (ASan + UBSan)")


def test_asan_ubsan_cpu_path_has_no_findings():
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", sys.executable))
    env.pop("LD_PRELOAD", None)
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "sanitize_cpu.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    out = res.stdout + res.stderr
    print(out[-6000:])
    assert res.returncode == 0, f"sanitize_cpu.sh exited {res.returncode}:\n{out[-6000:]}"
    assert "sanitize_cpu: no sanitizer findings" in out
