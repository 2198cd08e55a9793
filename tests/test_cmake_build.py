"""CMakeLists.txt builds the same native library as setup.py, and it registers the ops."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_builds_and_library_registers_ops(tmp_path):
    build = tmp_path / "build"
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="2")
    subprocess.run(["cmake", "-S", ROOT, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DDLLM_OPT_FLAG=-O0",  # what is checked is the build and the registration, not speed
                    # One translation unit for the torch-including sources: torch's headers are parsed
                    # once instead of once a file (setup.py's build compiles each file on its own).
                    "-DCMAKE_UNITY_BUILD=ON", "-DCMAKE_UNITY_BUILD_BATCH_SIZE=0",
                    f"-DPython3_EXECUTABLE={sys.executable}"], check=True, capture_output=True, env=env)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, env=env)
    lib = build / "libdllm_ops.so"
    assert lib.exists()
    # A fresh interpreter (without dllm_kernels) loads it and runs the op.
    check = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(lib)!r})
        x = torch.full((1, 3), 9); conf = torch.zeros(1, 3); state = torch.zeros(1, 11, dtype=torch.long)
        state[0, 1] = 3; state[0, 7] = 3
        # Seeded, and the mask id never wins the argmax: a row predicting mask_id would commit
        # it and leave x unchanged (the contract allows that), which made an unseeded check flaky.
        logits = torch.randn(1, 3, 10, generator=torch.Generator().manual_seed(0))
        logits[..., 9] = -float("inf")
        probs = logits.softmax(-1)
        best = int(probs.amax(-1).argmax())
        names, defaults, _ = torch.ops.dllm.fused_unmask_param_columns()
        row = dict(zip(names, defaults), steps=3, block_length=3)
        params = torch.tensor([[row[n] for n in names]], dtype=torch.float64)
        torch.ops.dllm.fused_unmask(logits, x, conf, state, 9, 8, params=params)
        expected = torch.full((1, 3), 9); expected[0, best] = int(logits[0, best].argmax())
        assert torch.equal(x, expected), (x, expected)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
