"""What `import dllm_kernels` loads: the runtime (ops, policies, decoder, models), never the tools
(the tiny-model training recipes, the eager baseline decoder)."""
import os
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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_setup(fake_setuptools_version=None):
    """`setup.py --name` in a fresh interpreter, optionally with setuptools reporting an older version
    (what a new Python 3.11 venv brings: 65.5)."""
    fake = f"setuptools.__version__ = {fake_setuptools_version!r}\n" if fake_setuptools_version else ""
    code = ("import runpy, sys, setuptools\n" + fake +
            "sys.argv = ['setup.py', '--name']\n"
            "runpy.run_path('setup.py', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_setup_names_the_setuptools_it_needs():
    old = run_setup("65.5.0")
    assert old.returncode != 0
    assert "setuptools>=77" in old.stderr and "65.5.0" in old.stderr and "pip install -U" in old.stderr
    ok = run_setup()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "dllm-kernels"
