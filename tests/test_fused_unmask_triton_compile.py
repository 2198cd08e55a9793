"""Compiles the fused_unmask Triton kernels to real GPU code (sm_90 and sm_80) without a GPU
(docs/building.md): catches what the interpreter cannot (typing of scalar control flow, uint32
Philox arithmetic, int1 stores, float64 sums, register-level lowering of the tiles the launcher
picks)."""
import textwrap

import pytest

from triton_compile import UNMASK_KERNELS, run_compile_script

# Not under the interpreter (the kernels must be JIT objects for the real backend): a subprocess
# with TRITON_INTERPRET unset.
_SCRIPT = UNMASK_KERNELS + textwrap.dedent(r"""
    from dllm_kernels import triton_fused_unmask as tu

    # Every kernel for every logits dtype on both targets; the constexpr variants (conf kind, Philox or
    # explicit noise, rule) rotate over them, all of them on sm_90 (each compile takes seconds).
    full = arch == 90
    n = 0
    variants = [(0, False, False), (1, True, False), (2, True, True)]  # CONF_KIND, SAMPLING, EXPLICIT_NOISE
    for i, ty in enumerate(("bf16", "fp16", "fp32")):
        for kernel, (kind, sampling, explicit) in ((tu.row_stats_kernel, variants[i]),
                                                    (tu.split_stats_kernel, variants[(i + 1) % 3])):
            consts = dict(HAS_ROW_START=True, CONF_KIND=kind, SAMPLING=sampling, EXPLICIT_NOISE=explicit,
                          BLOCK_V=2048, READ_FROM=0, TEMP_COL=6)
            if kernel is tu.split_stats_kernel:
                consts["N_SPLITS"] = 8
            ptx = build(kernel, ty, consts, 8)
            if sampling and not explicit:
                assert "mul.hi.u32" in ptx, "expected Philox's 32-bit high multiplies"
            n += 1
    for kind in range(3) if full else (1,):
        build(tu.merge_stats_kernel, "fp32", dict(N_SPLITS=5, SPLITS_PAD=8, HAS_ROW_START=False,
                                                  CONF_KIND=kind, SAMPLING=kind > 0, READ_FROM=0,
                                                  TEMP_COL=6), 1)
        n += 1
    rules = [(0, False, False), (0, True, False), (1, False, False), (2, False, False), (3, False, False),
             (4, True, True)]
    for rule, random_rank, rank_u in rules if full else rules[-2:]:
        tile = 32 if rule == 1 else 64  # as the launcher: 4 warps for 32-wide tiles, 8 for 64
        build(tu.policy_kernel, "fp32", policy_consts(rule, random_rank, rank_u, tile, 0), 4 if tile == 32 else 8)
        n += 1
    # The sorted ranking (bitonic tl.sort of int64 words, LocalLeap's scans) at a 1,024-position row.
    sorted_rules = [(0, True, False), (2, False, False), (3, False, False), (4, True, True)]
    for rule, random_rank, rank_u in sorted_rules if full else sorted_rules[2:3]:
        build(tu.policy_kernel, "fp32", policy_consts(rule, random_rank, rank_u, 64, 1024), 8)
        n += 1
    print("compiled", n)
""")


@pytest.mark.parametrize("arch", [90, 80])
def test_fused_unmask_kernels_compile(arch):
    stdout = run_compile_script(_SCRIPT, arch, timeout=900)
    assert ("compiled 19" if arch == 90 else "compiled 10") in stdout
