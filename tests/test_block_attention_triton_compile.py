"""Compiles the block_attention Triton kernels to real GPU code (sm_90 and sm_80) without a GPU
(docs/building.md): catches what the interpreter cannot (tl.dot shape/dtype rules, register-level
lowering of the tile configs the launcher actually picks)."""
import textwrap

import pytest

from triton_compile import run_compile_script

# The compile check must not run under the interpreter (the kernels would not be JIT objects
# for the real backend), so it runs in a subprocess with TRITON_INTERPRET unset.
_SCRIPT = textwrap.dedent(r"""
    from dllm_kernels.block_attention import triton_kernel_module

    mod = triton_kernel_module()
    TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}

    def build(kernel, sig, consts, num_warps, num_stages=3):
        return compile_ptx(kernel, sig.__getitem__, consts, num_warps, num_stages=num_stages)

    # (dtype, head dim, Qmax, GQA group, splits, mode): every tile config the launcher picks
    # (BLOCK_M 16/64/128, 4 and 8 warps), each mode, both the direct and the split-K path.
    full = arch == 90
    cases = [(torch.bfloat16, 128, 8, 1, 1, 0), (torch.bfloat16, 128, 16, 4, 4, 2),
             (torch.float16, 64, 64, 4, 1, 1)]
    if full:
        cases += [(torch.bfloat16, 128, 64, 1, 4, 1), (torch.bfloat16, 64, 1, 1, 1, 2),
                  (torch.float16, 128, 64, 4, 1, 0), (torch.float32, 64, 16, 4, 4, 2)]
    n = 0
    for dtype, d, q_max, group, splits, mode in cases:
        t = TY[dtype]
        cfg = mod.attention_config(q_max, group, d)
        sig = {"Q": "*" + t, "K": "*" + t, "V": "*" + t, "O": "*" + t,
               "O_PART": "*fp32", "M_PART": "*fp32", "L_PART": "*fp32",
               "block_start_ptr": "*i64", "block_len_ptr": "*i64", "kv_len_ptr": "*i64"}
        for s in ("s_qb", "s_ql", "s_qh", "s_kb", "s_kl", "s_kh", "s_vb", "s_vl", "s_vh",
                  "s_ob", "s_ol", "s_oh"):
            sig[s] = "i64"
        sig.update(qk_scale="fp32", Q_MAX="i32", L_MAX="i32", BATCH="i32", block_size="i32")
        consts = dict(HKV=8, G=group, D=d, MODE=mode, BLOCK_M=cfg["BLOCK_M"],
                      BLOCK_N=cfg["BLOCK_N"], NUM_SPLITS=splits, UPCAST=False,
                      DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32")
        ptx = build(mod._block_attn_fwd_kernel, sig, consts, cfg["num_warps"], cfg["num_stages"])
        if dtype != torch.float32:
            assert "mma" in ptx, "expected tensor-core MMA instructions"
        n += 1
    for dtype, d in ((torch.bfloat16, 128), (torch.float16, 64)) if full else ((torch.bfloat16, 128),):
        t = TY[dtype]
        sig = {"O": "*" + t, "O_PART": "*fp32", "M_PART": "*fp32", "L_PART": "*fp32",
               "s_ob": "i64", "s_ol": "i64", "s_oh": "i64", "Q_MAX": "i32", "BATCH": "i32"}
        build(mod._combine_splits_kernel, sig, dict(HQ=32, HQ_P2=32, D=d, NUM_SPLITS=4, UPCAST=False), 4)
        sig = {"K_NEW": "*" + t, "V_NEW": "*" + t, "K_CACHE": "*" + t, "V_CACHE": "*" + t,
               "block_start_ptr": "*i64", "block_len_ptr": "*i64"}
        for s in ("s_knb", "s_knl", "s_knh", "s_vnb", "s_vnl", "s_vnh",
                  "s_kcb", "s_kcl", "s_kch", "s_vcb", "s_vcl", "s_vch"):
            sig[s] = "i64"
        sig.update(Q_MAX="i32", L_MAX="i32")
        build(mod._write_block_kv_kernel, sig, dict(HKV=8, HKV_P2=8, D=d), 4)
        n += 2
    print("compiled", n)
""")


@pytest.mark.parametrize("arch", [90, 80])
def test_block_attention_kernels_compile(arch):
    stdout = run_compile_script(_SCRIPT, arch, timeout=600)
    assert "compiled" in stdout
