"""Vocabulary-parallel unmasking vs all-gathering the logits, TP ranks on CPU (gloo) or GPUs (NCCL).

Per step and per rank, on a vocabulary of V ids split over W ranks:
  vocab-parallel : row_stats of the local [B, R, V/W] shard, one all_gather of the [B, R, 9]
                   float64 partials (+ a metadata tail), select / fused_unmask merging them;
  all-gather     : all_gather of the [B, R, V/W] logits shards, the [B, R, V] logits rebuilt
                   (one copy), then select / fused_unmask on them (what engines do today).
Reports the bytes each rank sends per step, the median step time of each path (measured in the
same run, side by side, interleaved), the vocab-parallel step's cost of its default size check (on
CPU tensors the shapes are gathered first: vocab-parallel with size_check=False beside it), and
`uptime` load before and after.

    torchrun --nproc-per-node 2 bench/bench_tp.py                 # CPU, gloo (2 threads per rank: --threads)
    python bench/bench_tp.py --spawn 2                            # the same without torchrun
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import dllm_kernels as dk  # noqa: E402
from dllm_kernels.row_stats import ROW_STATS_COLUMNS  # noqa: E402
from dllm_kernels.vocab_parallel import (META, _all_gather, vocab_parallel_fused_unmask,  # noqa: E402
                                         vocab_parallel_select, vocab_shard)
from common import append_results, environment  # noqa: E402

MASK, EOS = 126336, 126081


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _gather_logits(shard, world, V):
    B, R, n = shard.shape
    # Uneven shards cannot go through all_gather_into_tensor: pad to the widest (as engines do).
    width = -(-V // world)
    send = torch.nn.functional.pad(shard, (0, width - n)).contiguous() if n < width else shard.contiguous()
    recv = send.new_empty(world * send.numel())
    _all_gather(recv, send.reshape(-1))
    parts = recv.view(world, B, R, width)
    full = torch.cat([parts[r, :, :, :vocab_shard(V, world, r)[1]] for r in range(world)], dim=-1)
    return full, send.numel() * send.element_size()


def _case(rank, world, B, R, V, dtype, temperature, op, repeats, device):
    gen = torch.Generator().manual_seed(1)
    lo, n = vocab_shard(V, world, rank)
    logits = (torch.randn(B, R, V, generator=gen) * 3).to(dtype)
    shard = logits[:, :, lo:lo + n].contiguous().to(device)
    x = torch.full((B, R), MASK, dtype=torch.int64, device=device)
    seed, offset = torch.arange(B, device=device), torch.zeros(B, dtype=torch.int64, device=device)
    kw = dict(rule="threshold", threshold=0.9, temperature=temperature, seed=seed, offset=offset)
    policy = dk.Policy(rule="threshold", threshold=0.9, block_length=R, temperature=temperature)
    sent = {}

    def fresh_state():
        return dk.DecodeState.new(B, R, gen_start=0, seed=0, device=device), x.clone()

    def vp(size_check=None):  # default: the shapes are gathered first on CPU tensors (gloo)
        if op == "select":
            return vocab_parallel_select(shard, x, group=None, vocab_start=lo, vocab_size=V, size_check=size_check,
                                         **kw).x0
        state, xx = fresh_state()
        return vocab_parallel_fused_unmask(shard, xx, state, policy, group=None, vocab_start=lo, vocab_size=V,
                                           mask_id=MASK, eos_id=EOS, size_check=size_check).x0

    def vp1():  # one collective: no size check
        return vp(size_check=False)

    def ag():
        full, sent["ag"] = _gather_logits(shard, world, V)
        if op == "select":
            return dk.select(full, x, **kw).x0
        state, xx = fresh_state()
        return dk.fused_unmask(full, xx, state, policy, mask_id=MASK, eos_id=EOS).x0

    a, b = vp(), ag()
    assert torch.equal(a, b), "the two paths disagree"
    times = {"vp": [], "vp1": [], "ag": []}
    paths = [("vp", vp), ("vp1", vp1), ("ag", ag)]
    for i in range(repeats):
        for name, fn in paths[i % 3:] + paths[:i % 3]:  # interleaved, each order in turn
            dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) * 1e6)
    vp_bytes = (B * R * len(ROW_STATS_COLUMNS) + len(META)) * 8  # what exchange_row_stats sends
    med = {k: statistics.median(v) for k, v in times.items()}
    # Rank 0 reports the slowest rank's median (the step waits for it).
    t = torch.tensor([med["vp"], med["ag"], med["vp1"]], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return dict(B=B, R=R, V=V, world=world, dtype=str(dtype).replace("torch.", ""), temperature=temperature, op=op,
                bytes_sent_vocab_parallel=vp_bytes, bytes_sent_all_gather=sent["ag"],
                bytes_ratio=sent["ag"] / vp_bytes, step_us_vocab_parallel=float(t[0]), step_us_all_gather=float(t[1]),
                time_ratio_all_gather_over_vp=float(t[1] / t[0]), size_check=device.type == "cpu",
                step_us_vocab_parallel_one_collective=float(t[2]), time_ratio_vp_over_one_collective=float(t[0] / t[2]),
                repeats=repeats)


def run(rank, world, args):
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    load_before = load()
    rows = []
    for op in args.ops:
        for B, R in args.shapes:
            for dtype in (torch.float32, torch.bfloat16):
                for temperature in (0.0, 1.0):
                    rows.append(_case(rank, world, B, R, args.vocab, dtype, temperature, op, args.repeats, device))
                    if rank == 0:
                        r = rows[-1]
                        print(f"{op:<12} B={B} R={R:<3} {r['dtype']:<8} T={temperature}: bytes/rank/step "
                              f"{r['bytes_sent_vocab_parallel']:>8,} vs {r['bytes_sent_all_gather']:>11,} "
                              f"({r['bytes_ratio']:,.0f}x fewer); step {r['step_us_vocab_parallel']:>9.0f} us vs "
                              f"{r['step_us_all_gather']:>9.0f} us (all-gather / vocab-parallel "
                              f"{r['time_ratio_all_gather_over_vp']:.2f}x); size check "
                              f"{'on' if r['size_check'] else 'off'}: vocab-parallel / one collective "
                              f"{r['time_ratio_vp_over_one_collective']:.2f}x", flush=True)
    if rank == 0:
        env = dict(environment(str(device)), load_before=load_before, load_after=load(), threads_per_rank=args.threads,
                   backend=dist.get_backend())
        path = append_results("bench_tp", [dict(r, **env) for r in rows])
        print(f"load before {load_before}, after {env['load_after']}; appended to {path}")


def _spawned(rank, world, args, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    run(rank, world, args)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=126464)
    ap.add_argument("--shapes", type=json.loads, default=[[1, 32], [4, 32], [8, 64]], help="[[B, R], ...]")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ops", nargs="+", default=["select", "fused_unmask"], choices=("select", "fused_unmask"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spawn", type=int, default=0, help="spawn this many gloo ranks here instead of torchrun")
    args = ap.parse_args()
    if args.spawn:
        import tempfile

        import torch.multiprocessing as mp

        init = os.path.join(tempfile.mkdtemp(), "init")
        mp.start_processes(_spawned, args=(args.spawn, args, init), nprocs=args.spawn, start_method="spawn")
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            timeout=datetime.timedelta(seconds=300))
    run(dist.get_rank(), dist.get_world_size(), args)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
