"""Compiles the lm_head_row_stats Triton kernels to real GPU code (sm_90 and sm_80) without a GPU,
like tests/test_fused_unmask_triton_compile.py, in one process: the fused head's partial kernel at the GPU tile sizes
(tensor-core dot in bf16 and fp16, the IEEE dot in fp32, Philox sampling, every confidence kind)
and the merge of a row's splits."""
import textwrap

from triton_compile import run_compile_script

_SCRIPT = textwrap.dedent(r"""
    from dllm_kernels import triton_lm_head_row_stats as tl_head

    kernels = tl_head._kernels

    def arg_type(name, dtype):
        if name in ("h_ptr", "w_ptr", "bias_ptr"):
            return "*" + dtype
        if name in ("temp_ptr", "part_ptr", "out_ptr"):
            return "*fp64"
        if name.endswith("_ptr"):
            return "*i64"
        return "i64" if name.startswith("stride") else "i32"

    def build(kernel, dtype, consts, num_warps, target_arch):
        return compile_ptx(kernel, lambda name: arg_type(name, dtype), consts, num_warps, target_arch)

    tiles = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64)
    cases = [("bf16", dict(HAS_BIAS=False, HAS_SEED=True, HAS_OFFSET=True, SAMPLING=True, CONF_KIND=1,
                           IEEE_DOT=False, UPCAST=False)),
             ("fp16", dict(HAS_BIAS=True, HAS_SEED=False, HAS_OFFSET=False, SAMPLING=False, CONF_KIND=2,
                           IEEE_DOT=False, UPCAST=False)),
             ("fp32", dict(HAS_BIAS=False, HAS_SEED=True, HAS_OFFSET=False, SAMPLING=True, CONF_KIND=0,
                           IEEE_DOT=True, UPCAST=False))]
    n = 0
    # Every case on sm_90 (wgmma); the bf16 one also on sm_80 (mma.sync): one process for both.
    for arch, dtype, consts in [(90, *case) for case in cases] + [(80, *cases[0])]:
        ptx = build(kernels.lm_head_partial_kernel, dtype, dict(consts, **tiles), 4, arch)
        if consts["SAMPLING"]:
            assert "mul.hi.u32" in ptx, "expected Philox's 32-bit high multiplies"
        if dtype != "fp32":
            assert "mma" in ptx, "expected tensor-core instructions for the head's dot"
        n += 1
    build(kernels.merge_partials_kernel, "fp32", dict(N_SPLITS=5, SPLITS_PAD=8, CONF_KIND=1), 1, 90)
    n += 1
    print("compiled", n)
""")


def test_lm_head_row_stats_kernels_compile():
    stdout = run_compile_script(_SCRIPT, 90, timeout=900)
    assert "compiled 5" in stdout
