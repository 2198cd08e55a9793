"""Compiles the select Triton kernels to real GPU code (sm_90 and sm_80) without a GPU, like
tests/test_fused_unmask_triton_compile.py: the statistics kernels in select's modes (caller's flags or
every position, per-sequence temperature from the float64 pack) and the rule kernel."""
import textwrap

import pytest

from triton_compile import run_compile_script

_SCRIPT = textwrap.dedent(r"""
    from dllm_kernels import triton_select as stt
    from dllm_kernels import triton_fused_unmask as tu  # the statistics kernels select shares

    FLOAT_ARGS = {"temperature", "block_window_fraction"}
    FLOAT_PTRS = {"gumbel_ptr", "conf_ptr", "pprob_ptr", "part_f_ptr", "rank_u_ptr", "w1_ptr", "b1_ptr",
                  "w2_ptr", "b2_ptr"}

    def arg_type(name, logits_ty, flags_ty):
        if name == "logits_ptr":
            return "*" + logits_ty
        if name in ("x_ptr", "flags_ptr") and flags_ty:
            return flags_ty  # the caller's candidates (int8 view of bool) where READ_FROM = 1
        if name == "transfer_ptr":
            return "*i1"
        if name == "part_i_ptr":
            return "*i32"
        if name == "params_ptr":
            return "*fp64"
        if name in FLOAT_PTRS:
            return "*fp32"
        if name.endswith("_ptr"):
            return "*i64"
        if name in FLOAT_ARGS:
            return "fp32"
        return "i64" if name.startswith("stride") else "i32"

    def build(kernel, logits_ty, consts, num_warps, flags_ty=None):
        return compile_ptx(kernel, lambda name: arg_type(name, logits_ty, flags_ty), consts, num_warps)

    full = arch == 90
    n = 0
    # Statistics: caller's flags with Philox sampling from the pack's temperature; every position with
    # explicit noise (split layout); the merge in select's mode.
    ptx = build(tu.row_stats_kernel, "bf16", dict(HAS_ROW_START=True, CONF_KIND=1, SAMPLING=True,
                                                  EXPLICIT_NOISE=False, BLOCK_V=2048, READ_FROM=1,
                                                  TEMP_COL=6), 8, flags_ty="*i8")
    assert "mul.hi.u32" in ptx, "expected Philox's 32-bit high multiplies"
    n += 1
    if full:
        build(tu.split_stats_kernel, "fp16", dict(HAS_ROW_START=False, CONF_KIND=2, SAMPLING=True,
                                                   EXPLICIT_NOISE=True, BLOCK_V=2048, N_SPLITS=8,
                                                   READ_FROM=2, TEMP_COL=6), 8)
        build(tu.merge_stats_kernel, "fp32", dict(N_SPLITS=5, SPLITS_PAD=8, HAS_ROW_START=True, CONF_KIND=0,
                                                   SAMPLING=True, READ_FROM=1, TEMP_COL=6), 1, flags_ty="*i8")
        n += 2
    rules = [(0, True, False), (1, False, False), (2, False, False), (3, False, False), (4, True, True)]
    for rule, random_rank, rank_u in rules if full else rules[-2:]:
        build(stt.select_kernel, "fp32", dict(RULE=rule, RANDOM_RANK=random_rank, HAS_RANK_U=rank_u,
                                             HAS_ROW_START=True, READ_FROM=1 if rule % 2 else 2, TILE=64,
                                             FW_PAD=128 if rule == 4 else 16, H_CHUNK=32, SORT_N=0, RANK_CHUNK=tu.POLICY_RANK_CHUNK), 8,
              flags_ty="*i8" if rule % 2 else None)
        n += 1
    # The sorted ranking at a 1,024-position row.
    build(stt.select_kernel, "fp32", dict(RULE=1, RANDOM_RANK=False, HAS_RANK_U=False, HAS_ROW_START=True,
                                         READ_FROM=1, TILE=64, FW_PAD=16, H_CHUNK=32, SORT_N=1024, RANK_CHUNK=tu.POLICY_RANK_CHUNK), 8,
          flags_ty="*i8")
    n += 1
    print("compiled", n)
""")


@pytest.mark.parametrize("arch", [90, 80])
def test_select_kernels_compile(arch):
    stdout = run_compile_script(_SCRIPT, arch, timeout=900)
    assert ("compiled 9" if arch == 90 else "compiled 4") in stdout
