"""What `import dllm_kernels` loads: the runtime (ops, policies, decoder, models), never the tools
(the tiny-model training recipes, the eager baseline decoder)."""
import subprocess
import sys


def test_import_loads_no_tools():
    code = ("import sys, dllm_kernels\n"
            "tools = ('dllm_kernels.training', 'dllm_kernels.eager_decoder')\n"
            "print(sorted(m for m in sys.modules if m.startswith(tools)))\n"
            "print('dllm_kernels.decoding.caches' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", out[0]
    assert out[1] == "True"  # the probe sees modules the import does load
