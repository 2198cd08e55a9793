"""Small fused_unmask workload for compute-sanitizer (memcheck, racecheck) on a GPU machine.

Covers every code path of the CUDA kernels at tiny sizes: the three dtypes, one and several vocab
tiles (an odd V, so a partial last group), 16-byte aligned and misaligned rows, suppression
(shared-memory bitmap), zero-conf ids, Philox and explicit noise, random remasking with rank_u,
row_start with shift, EoTP, early stop, AdaBlock, the learned filter, an open block longer than
the statistics grid, and no logits rows at all. Each case's predictions are checked against the
CPU op, so a silent miscomputation under the sanitizer also fails. Exit code 0 when all pass.

Run: PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python bench/sanitize_fused_unmask.py
(without the caching allocator every tensor is its own allocation, so out-of-bounds accesses are
caught at the tensor's edge).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dllm_kernels  # noqa: E402,F401  (loads the ops)
from dllm_kernels import _native  # noqa: E402
from dllm_kernels import state as S  # noqa: E402

from dllm_kernels.fused_unmask_params import UNMASK_PARAM_COLUMNS, pack_unmask_params  # noqa: E402

OP = torch.ops.dllm.fused_unmask


def call(logits, x, conf, state, kw):
    """The op with the cases' flat keywords: the numbers go into the per-sequence pack."""
    kw = dict(kw)
    numbers = {name: kw.pop(name) for name in UNMASK_PARAM_COLUMNS if name in kw}
    params = pack_unmask_params(x.shape[0], x.device, numbers)
    return OP(logits, x, conf, state, kw.pop("mask_id"), kw.pop("eos_id"), params=params, **kw)


def make_case(B, L, V, dtype, seed, misaligned=False, rows=None):
    g = torch.Generator().manual_seed(seed)
    R = L if rows is None else rows
    logits = torch.randn(B, R, V, generator=g) * 2.0
    if R > 0:
        top = torch.randint(0, V, (B, R, 1), generator=g)
        logits.scatter_add_(2, top, torch.rand(B, R, 1, generator=g) * 12.0)
    logits = logits.to(dtype)
    mask_id, eos_id = V - 1, V - 2
    x = torch.full((B, L), mask_id, dtype=torch.int64)
    x[:, :3] = torch.randint(0, V - 2, (B, 3), generator=g)
    st = dllm_kernels.DecodeState.new(B, L, gen_start=3, seed=seed)
    if misaligned:  # same values, rows starting one element into a wider buffer
        wide = torch.empty(B, R, V + 1, dtype=dtype)
        wide[:, :, 1:] = logits
        logits = wide[:, :, 1:]
    return logits, x, st, mask_id, eos_id


def run_case(name, B, L, V, dtype, policy, steps=3, misaligned=False, rows=None, extra=None):
    logits, x, st, mask_id, eos_id = make_case(B, L, V, dtype, seed=len(name) * 31 + V, misaligned=misaligned,
                                               rows=rows)
    kw = dict(policy, mask_id=mask_id, eos_id=eos_id, **(extra or {}))
    cpu = [x.clone(), st.conf.clone(), st.state.clone()]
    dev = [t.cuda() for t in cpu]
    kw_dev = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    logits_dev = logits.cuda() if not misaligned else _misaligned_on_cuda(logits)
    for _ in range(steps):
        out_c = call(logits, *cpu, kw)
        out_g = call(logits_dev, *dev, kw_dev)
        torch.cuda.synchronize()
        if policy.get("temperature", 0.0) == 0.0 and "gumbel_u" not in kw:
            if not torch.equal(out_g[0].cpu(), out_c[0]):
                raise AssertionError(f"{name}: x0 differs from the CPU op")
        # Continue both from the CPU result (decisions may differ by float32 rounding).
        for d, c in zip(dev, cpu):
            d.copy_(c)
    print(f"  ok  {name}")


def _misaligned_on_cuda(view):
    B, R, V = view.shape
    wide = torch.empty(B, R, V + 1, dtype=view.dtype, device="cuda")
    wide[:, :, 1:] = view.cuda()
    return wide[:, :, 1:]


def main():
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    assert _native.HAS_CUDA_KERNELS, f"dllm_kernels._C_cuda did not load: {getattr(_native, 'CUDA_KERNELS_ERROR', '')}"
    V_small, V_split = 1003, 40961  # one tile; three tiles with a partial last group
    g = torch.Generator().manual_seed(0)
    filt = dict(filter_w1=torch.randn(16, 8, generator=g), filter_b1=torch.randn(16, generator=g),
                filter_w2=torch.randn(8, 16, generator=g), filter_b2=torch.randn(8, generator=g))
    cases = [
        ("topk fp32 greedy", 2, 24, V_small, torch.float32, dict(rule=0, steps=4, block_length=8)),
        ("threshold bf16 split", 2, 24, V_split, torch.bfloat16, dict(rule=1, threshold=0.5, block_length=8)),
        ("factor fp16 split misaligned", 2, 24, V_split, torch.float16, dict(rule=2, block_length=8), 3, True),
        ("localleap margin philox eotp", 2, 24, V_split, torch.bfloat16,
         dict(rule=3, conf_kind=1, temperature=0.9, eotp=True, graded=True, block_length=8)),
        ("neg_entropy early stop suppress", 2, 24, V_split, torch.float32,
         dict(rule=1, conf_kind=2, threshold=0.0, early_stop=True, block_length=6),
         3, False, None, dict(suppress_ids=torch.tensor([5, 20000, 40000]), zero_conf_ids=torch.tensor([7]))),
        ("adaptive block delimiters", 2, 32, V_small, torch.bfloat16,
         dict(rule=0, steps=3, adaptive_block=True, block_delta=0.0, block_window_fraction=0.5, block_length=4),
         3, False, None, dict(delimiter_ids=torch.tensor([11, 12]))),
        ("learned filter", 2, 24, V_small, torch.float16, dict(rule=4, steps=2, block_length=8), 3, False, None, filt),
        ("random remasking rank_u", 2, 24, V_small, torch.float32,
         dict(rule=0, steps=2, random_remasking=True, temperature=1.0, block_length=8),
         3, False, None, dict(rank_u=torch.rand(2, 24, generator=g))),
        ("explicit gumbel_u, row_start, shift", 2, 24, V_small, torch.float32,
         dict(rule=1, temperature=0.7, shift=True, block_length=8), 3, False, 20,
         dict(row_start=torch.tensor([2, 3]), gumbel_u=torch.rand(2, 20, V_small, generator=g).clamp_(1e-6, 1 - 1e-6))),
        ("long open block, few grid slots", 1, 64, V_small, torch.bfloat16, dict(rule=0, steps=2, block_length=64), 2),
        ("no logits rows", 2, 8, V_small, torch.float32, dict(rule=0, block_length=4), 1, False, 0),
    ]
    for case in cases:
        run_case(*case)
    # An open block longer than block_length (the grid strides over it).
    logits, x, st, mask_id, eos_id = make_case(1, 64, V_small, torch.float32, seed=5)
    st.state[0, S.BLOCK_START], st.state[0, S.BLOCK_END] = 3, 60
    st.state[0, S.BLOCK_MASKED] = st.state[0, S.BLOCK_REMAINING] = 57
    dev = [x.cuda(), st.conf.cuda(), st.state.cuda()]
    call(logits.cuda(), *dev, dict(rule=0, steps=4, block_length=4, mask_id=mask_id, eos_id=eos_id))
    torch.cuda.synchronize()
    assert not torch.isnan(dev[1][0, 3:60]).any(), "every row of the open block must be read"
    print("  ok  open block longer than the grid")
    print(f"sanitize_fused_unmask: {len(cases) + 1} cases OK on {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
