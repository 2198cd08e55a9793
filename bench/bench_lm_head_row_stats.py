"""Benchmark of unmasking from hidden states: the LM head fused with the statistics pass
(`select_from_hidden`: lm_head_row_stats, then select on the merged partials) against the unfused
step, the head's GEMM (F.linear) materialising the logits and then select or fused_unmask on them.

Time (median of repeats, the three variants interleaved in one run) and peak extra memory: the
rise of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs before each
step) over its resident set before the step, after a warm-up, so MKL/oneDNN buffers kept between
calls do not count; glibc's mmap threshold is fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_) so that
every buffer of 64 KiB or more is resident exactly while it is allocated. The fused step's own buffers (docs/lm_head_row_stats.md, "Memory") are
printed beside it. Linux only for the memory column.

    python bench/bench_lm_head_row_stats.py              # CPU: batch 1/8/32 x 32 rows, V = 126,464
    python bench/bench_lm_head_row_stats.py --d 1024 --dtype float32
    python bench/bench_lm_head_row_stats.py --quick      # small smoke run
"""
import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dllm_kernels as dk  # noqa: E402
from dllm_kernels.from_hidden import select_from_hidden  # noqa: E402
from common import append_results, environment  # noqa: E402

LLADA_V = 126464


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_extra_bytes(fn) -> int:
    """Peak resident memory fn() adds above the resident memory before it (bytes)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS
    before = _kib("VmRSS")
    out = fn()
    peak = _kib("VmHWM")
    del out
    return (peak - before) * 1024


def make_head(B, R, V, d, dtype, seed=0):
    """Hidden states and an LM head whose logits are peaked (one token per row raised by 4-16);
    the head built in slices so no float32 copy of it inflates the process."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.empty(V, d, dtype=dtype)
    for lo in range(0, V, 8192):
        hi = min(V, lo + 8192)
        weight[lo:hi] = (torch.randn(hi - lo, d, generator=g) * (2.0 / d ** 0.5)).to(dtype)
    hidden = torch.randn(B, R, d, generator=g)
    top = torch.randint(0, V, (B, R), generator=g)
    w_top = weight[top].float()
    hidden += (4 + torch.rand(B, R, 1, generator=g) * 12) * w_top / (w_top * w_top).sum(-1, keepdim=True)
    return hidden.to(dtype), weight


def run_case(B, R, V, d, dtype, repeats, seed=0):
    hidden, weight = make_head(B, R, V, d, dtype, seed)
    L = R
    mask_id = V - 128  # LLaDA's layout: the mask id 128 below the vocabulary's end, eos 383
    x = torch.full((B, L), mask_id, dtype=torch.int64)
    sel = dict(rule="threshold", threshold=0.9, conf="prob")
    policy = dk.Policy(rule="threshold", threshold=0.9, block_length=R)
    state0 = dk.DecodeState.new(B, L, gen_start=0, seed=1)

    def unfused_select():
        return dk.select(F.linear(hidden, weight), x, **sel)

    def unfused_unmask():
        st, xx = state0.clone(), x.clone()
        return dk.fused_unmask(F.linear(hidden, weight), xx, st, policy, mask_id=mask_id, eos_id=V - 383)

    def fused_select():
        return select_from_hidden(hidden, weight, x, **sel)

    variants = {"matmul+select": unfused_select, "matmul+fused_unmask": unfused_unmask,
                "fused_select_from_hidden": fused_select}
    a, b = fused_select(), unfused_select()
    assert torch.equal(a.x0, b.x0), "fused tokens differ from the unfused ones"
    for fn in variants.values():  # warm-up: allocator pools, BLAS buffers
        fn()
    mem = {name: peak_extra_bytes(fn) for name, fn in variants.items()}
    times = {name: [] for name in variants}
    # Interleaved by hand, not torch.utils.benchmark's back-to-back blocks: on a shared box the
    # load drifts between blocks, and the ratio is what is quoted.
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    logits_bytes = B * R * V * hidden.element_size()
    return med, mem, logits_bytes


def uptime() -> str:
    return subprocess.check_output(["uptime"], text=True).strip()


def main():
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc otherwise raises its mmap threshold after the first large free and serves later
        # buffers from a heap that stays resident, hiding them from the resident-set measure:
        # with a fixed 64 KiB threshold every buffer >= 64 KiB is mapped on allocation, unmapped on free.
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--V", type=int, default=LLADA_V)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.V, args.d, args.repeats = "1,2", 20000, 256, 3
    dtype = getattr(torch, args.dtype)
    env = environment("cpu")
    rows = []
    print(f"# {env['device']}, {env['threads']} threads, torch {env['torch']}, {args.dtype}, V = {args.V}, "
          f"d = {args.d}, {args.rows} rows")
    print("# B  logits_MB  | time ms: matmul+select  matmul+fused_unmask  fused  (fused / matmul+fused_unmask)"
          "  | peak extra MB: matmul+select  fused  (fused / logits)  | load before -> after")
    for B in [int(b) for b in args.batches.split(",")]:
        load_before = uptime()
        med, mem, logits_bytes = run_case(B, args.rows, args.V, args.d, dtype, args.repeats)
        load_after = uptime()
        f = med["fused_select_from_hidden"]
        row = dict(env, bench="lm_head_row_stats", B=B, rows=args.rows, V=args.V, d=args.d, dtype=args.dtype,
                   repeats=args.repeats, time_ms=med, peak_extra_bytes=mem, logits_bytes=logits_bytes,
                   time_ratio_vs_matmul_fused_unmask=f / med["matmul+fused_unmask"],
                   time_ratio_vs_matmul_select=f / med["matmul+select"],
                   memory_ratio_vs_logits=mem["fused_select_from_hidden"] / logits_bytes,
                   uptime_before=load_before, uptime_after=load_after)
        rows.append(row)
        print(f"{B:4d} {logits_bytes / 2**20:9.1f}  | {med['matmul+select']:10.1f} {med['matmul+fused_unmask']:10.1f} "
              f"{f:10.1f}  ({row['time_ratio_vs_matmul_fused_unmask']:.3f}x)  | "
              f"{mem['matmul+select'] / 2**20:8.1f} {mem['fused_select_from_hidden'] / 2**20:8.2f}  "
              f"({row['memory_ratio_vs_logits']:.4f})  | {load_before.split('load average:')[1].strip()} -> "
              f"{load_after.split('load average:')[1].strip()}", flush=True)
    if not args.no_save:
        print("appended to", append_results("bench_lm_head_row_stats", rows))


if __name__ == "__main__":
    main()
