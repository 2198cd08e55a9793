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


# For the scripts of the fused_unmask and select kernels (which share the statistics and policy
# code): the argument types of their kernels and the policy kernels' constexprs as the launchers pick
# them.
UNMASK_KERNELS = textwrap.dedent(r'''
    FLOAT_ARGS = {"temperature"}  # select's batch temperature; every other number is in the pack
    FLOAT_PTRS = {"gumbel_ptr", "conf_ptr", "pprob_ptr", "part_f_ptr", "rank_u_ptr", "window_stats_ptr",
                  "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr"}


    def unmask_arg_type(name, logits_ty, flags_ty=None):
        if name == "logits_ptr":
            return "*" + logits_ty
        if name in ("x_ptr", "flags_ptr") and flags_ty:
            return flags_ty  # the caller's candidates (int8 view of bool) where READ_FROM = 1
        if name == "transfer_ptr":
            return "*i1"  # torch.bool
        if name == "part_i_ptr":
            return "*i32"
        if name == "params_ptr":
            return "*fp64"  # the per-sequence parameter pack
        if name in FLOAT_PTRS:
            return "*fp32"
        if name.endswith("_ptr"):
            return "*i64"
        if name in FLOAT_ARGS:
            return "fp32"
        return "i64" if name.startswith("stride") else "i32"


    def build(kernel, logits_ty, consts, num_warps, flags_ty=None):
        return compile_ptx(kernel, lambda name: unmask_arg_type(name, logits_ty, flags_ty), consts, num_warps)


    def policy_consts(rule, random_rank, rank_u, tile, sort_n, **more):
        """A policy kernel's constexprs: SORT_N = 0 for the long rows' chunked ranking."""
        from dllm_kernels.triton_fused_unmask import POLICY_RANK_CHUNK
        return dict(RULE=rule, RANDOM_RANK=random_rank, HAS_RANK_U=rank_u, HAS_ROW_START=True, TILE=tile,
                    FW_PAD=128 if rule == 4 else 16, H_CHUNK=32, SORT_N=sort_n, RANK_CHUNK=POLICY_RANK_CHUNK,
                    **more)
''')


def run_compile_script(script: str, arch: int, timeout: int) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", PREAMBLE + script, str(arch)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout
