"""Compiles the speculative_verify Triton kernel to real GPU code (sm_90 and sm_80) without a GPU:
catches what the interpreter cannot (typing of the data-dependent while loop and the nested ifs,
uint32 Philox arithmetic, the lowering of the tile the launcher picks)."""
import textwrap

import pytest

from triton_compile import run_compile_script

_SCRIPT = textwrap.dedent(r"""
    from dllm_kernels import triton_speculative_verify as tv

    kernel = tv.speculative_verify_kernel

    def arg_type(name, logits_ty, q_ty):
        if name == "logits_ptr":
            return "*" + logits_ty
        if name == "q_ptr":
            return "*" + q_ty
        if name.endswith("_ptr"):
            return "*i64"
        if name == "temperature":
            return "fp32"
        return "i64" if name.startswith("s_") else "i32"

    n = 0
    variants = [("bf16", "fp32", False, True), ("fp16", "fp16", False, False), ("fp32", "bf16", True, False)]
    for logits_ty, q_ty, greedy, q_logits in variants if arch == 90 else variants[:1]:
        consts = dict(GREEDY=greedy, Q_LOGITS=q_logits, BLOCK_V=2048)
        ptx = compile_ptx(kernel, lambda name: arg_type(name, logits_ty, q_ty), consts, 8)
        if not greedy:
            assert "mul.hi.u32" in ptx, "expected Philox's 32-bit high multiplies"
        n += 1
    print("compiled", n)
""")


@pytest.mark.parametrize("arch", [90, 80])
def test_speculative_verify_kernel_compiles(arch):
    stdout = run_compile_script(_SCRIPT, arch, timeout=600)
    assert ("compiled 3" if arch == 90 else "compiled 1") in stdout
