"""Compiles the select Triton kernels to real GPU code (sm_90 and sm_80) without a GPU, like
tests/test_fused_unmask_triton_compile.py: the statistics kernels in select's modes (caller's flags or
every position, per-sequence temperature from the float64 pack) and the rule kernel."""
import textwrap

import pytest

from triton_compile import UNMASK_KERNELS, run_compile_script

_SCRIPT = UNMASK_KERNELS + textwrap.dedent(r"""
    from dllm_kernels import triton_select as stt
    from dllm_kernels import triton_fused_unmask as tu  # the statistics kernels select shares

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
        build(stt.select_kernel, "fp32", policy_consts(rule, random_rank, rank_u, 64, 0, READ_FROM=1 if rule % 2 else 2),
              8, flags_ty="*i8" if rule % 2 else None)
        n += 1
    # The sorted ranking at a 1,024-position row.
    build(stt.select_kernel, "fp32", policy_consts(1, False, False, 64, 1024, READ_FROM=1), 8, flags_ty="*i8")
    n += 1
    print("compiled", n)
""")


@pytest.mark.parametrize("arch", [90, 80])
def test_select_kernels_compile(arch):
    stdout = run_compile_script(_SCRIPT, arch, timeout=900)
    assert ("compiled 9" if arch == 90 else "compiled 4") in stdout
