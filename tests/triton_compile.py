"""Runs a Triton compile-check script for one GPU architecture in a child process: the interpreter
must be off there (TRITON_INTERPRET is process-wide), and the repo must be importable. Every script
starts with PREAMBLE: `arch` (from argv) and `compile_ptx`, the compile and the checks every kernel's
code must pass."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PREAMBLE = textwrap.dedent(r'''
    import sys
    import torch  # noqa: F401  (before dllm_kernels: its native library links against torch)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arch = int(sys.argv[1])


    def compile_ptx(kernel, arg_type, consts, num_warps, target_arch=None, stores=True, **options):
        """PTX of `kernel` for sm_<target_arch or arch>: the constexprs `consts`, every other argument
        typed by arg_type(name); the code must load and (`stores`) store global memory and give a cubin."""
        target_arch = target_arch or arch
        sig = {n: ("constexpr" if n in consts else arg_type(n)) for n in kernel.arg_names}
        ck = triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", target_arch, 32),
                            options=dict(num_warps=num_warps, **options))
        ptx = ck.asm["ptx"]
        assert f".target sm_{target_arch}" in ptx, ptx[:400]
        assert "ld.global" in ptx, "expected global loads"
        assert not stores or "st.global" in ptx, "expected global stores"
        assert len(ck.asm["cubin"]) > 0
        return ptx
''')


def run_compile_script(script: str, arch: int, timeout: int) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", PREAMBLE + script, str(arch)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout
