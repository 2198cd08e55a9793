"""Small block_attention workload for compute-sanitizer (memcheck, racecheck) on a GPU machine.

Covers the Triton kernels' paths at tiny sizes: the three modes, fp16 / bf16 / fp32, head dims 64
and 128 (and 16), GQA ratios 1, 3 and 4, ragged blocks with an idle sequence (block_len 0), block
length 1, an empty prefix, a block ending at the cache's last slot, odd cache lengths (partial last
key tile), the split-K (flash-decoding) combine path forced on, and strided views of wider q and
caches. Each case's output and caches are checked against the CPU op on the same inputs, so a
silent miscomputation under the sanitizer also fails. Exit code 0 when all pass.

Run: PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python bench/sanitize_block_attention.py
On a machine without CUDA it runs the Triton kernels under the interpreter (a smoke run of the script).
"""
import math
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dllm_kernels  # noqa: E402,F401  (registers the op)
from dllm_kernels.block_attention import MODES, triton_kernel_module  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def make_case(name, B, q_max, hq, hkv, d, l_max, starts, lens, kv_lens, dtype, strided=False):
    g = torch.Generator().manual_seed(sum(map(ord, name)))

    def rnd(*shape):
        t = torch.randn(*shape, generator=g).to(dtype)
        if strided:  # the same values inside a buffer with two more heads: a non-packed view
            wide = torch.zeros(*shape[:-2], shape[-2] + 2, shape[-1], dtype=dtype)
            wide[..., 1:-1, :] = t
            t = wide[..., 1:-1, :]
        return t

    ids = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
    return dict(q=rnd(B, q_max, hq, d), k_new=rnd(B, q_max, hkv, d), v_new=rnd(B, q_max, hkv, d),
                k_cache=rnd(B, l_max, hkv, d), v_cache=rnd(B, l_max, hkv, d), block_start=ids(starts),
                block_len=ids(lens), kv_len=ids(kv_lens))


def copy_of(case, device):
    """A fresh copy of the case on `device` (the op writes the caches), strides kept: strided views
    stay strided."""
    return {k: _same_layout_on(v, device) for k, v in case.items()}


def _same_layout_on(t, device):
    if t.is_contiguous():
        return t.to(device, copy=True)
    base = t.as_strided((t.untyped_storage().nbytes() // t.element_size(),), (1,), 0)
    return base.to(device, copy=True).as_strided(t.shape, t.stride(), t.storage_offset())


def run(case, mode, block_size, num_splits, kernel):
    """(output, k_cache, v_cache) as float32 CPU tensors from the CPU op ("cpu_op") or the Triton
    kernels on DEVICE ("triton"; the interpreter when DEVICE is the CPU)."""
    c = copy_of(case, "cpu" if kernel == "cpu_op" else DEVICE)
    d = c["q"].shape[-1]
    args = (c["q"], c["k_new"], c["v_new"], c["k_cache"], c["v_cache"], c["block_start"], c["block_len"],
            c["kv_len"], MODES[mode], 1.0 / math.sqrt(d), block_size)
    if kernel == "cpu_op":
        out = torch.ops.dllm.block_attention(*args)
    else:
        out = triton_kernel_module().block_attention_triton(*args, num_splits=num_splits)
    return [t.float().cpu() for t in (out, c["k_cache"], c["v_cache"])]


def check(name, case, mode, block_size=0, num_splits=None):
    want = run(case, mode, block_size, None, "cpu_op")
    got = run(case, mode, block_size, num_splits, "triton")
    err = (got[0] - want[0]).abs().max().item() if got[0].numel() else 0.0
    ok = err <= TOL[case["q"].dtype] and torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    print(f"{'ok ' if ok else 'BAD'} {name:<44} {mode:<12} err {err:.2e}")
    return ok


def main():
    # The interpreter is slow: one dtype there.
    dtypes = [torch.float16, torch.bfloat16, torch.float32] if DEVICE == "cuda" else [torch.float16]
    results = []
    for dtype in dtypes:
        tag = str(dtype).replace("torch.", "")
        for mode in ("prefix", "dual", "block_causal"):
            bs = 3 if mode == "block_causal" else 0
            # Ragged blocks, an idle sequence, a block ending at the last cache slot, odd lengths.
            case = make_case(f"ragged-{tag}", 3, 5, 4, 2, 64, 37, [0, 9, 32], [5, 0, 5], [37, 20, 37], dtype)
            results.append(check(f"ragged gqa2 d64 {tag}", case, mode, bs))
            results.append(check(f"ragged gqa2 d64 {tag} split-k", case, mode, bs, num_splits=3))
            case = make_case(f"gqa3-{tag}", 2, 4, 6, 2, 128, 29, [7, 0], [4, 1], [29, 11], dtype)
            results.append(check(f"gqa3 d128 empty prefix {tag}", case, mode, bs))
            case = make_case(f"mha-{tag}", 1, 1, 4, 4, 16, 6, [5], [1], [6], dtype)
            results.append(check(f"mha d16 block_len 1 {tag}", case, mode, bs))
            case = make_case(f"strided-{tag}", 2, 3, 8, 2, 64, 19, [2, 16], [3, 3], [19, 19], dtype, strided=True)
            results.append(check(f"strided views gqa4 {tag}", case, mode, bs))
    print(f"{sum(results)}/{len(results)} cases ok")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
