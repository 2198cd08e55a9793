"""The compute-sanitizer workload of block_attention (bench/sanitize_block_attention.py, run by
bench/device_check.sh on a GPU) also runs here, on the Triton interpreter, so it cannot rot."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_block_attention_sanitizer_workload_passes_on_the_interpreter():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "sanitize_block_attention.py")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "15/15 cases ok" in out.stdout, out.stdout[-3000:]
