"""Benchmark of dllm.block_attention against the public decoders' attention.

Backends, measured side by side in one run on the same inputs:
  block_attention   torch.ops.dllm.block_attention: writes the block's K/V into the cache in place
                    and attends over the cache ([B, Lmax, H, D], keys after RoPE).
  cat_sdpa          (a) the public decoders' way (Fast-dLLM): torch.cat the cached K/V with the
                    block's fresh K/V every step ([B, H, L, D]), then SDPA.
  sdpa_preconcat    (b) SDPA on K/V that are already concatenated ([B, H, L, D], contiguous): the
                    attention alone, with no cache management at all.
Ratios are baseline time / block_attention time (> 1: block_attention is faster).

GPU timing: CUDA-graph replay (triton.testing.do_bench_cudagraph, median) as the decoder would run a
captured step, and eager `do_bench` (median, L2 flushed) beside it. Peak memory: bytes allocated
above the resident inputs during one call. Shapes: LLaDA-8B attention (32 heads, head dim 128,
MHA), prefix 512-4096, blocks 8-64, batch 1-16, bf16; prefix (Fast-dLLM prefix cache) and dual
(Fast-dLLM dual cache, 256 cached suffix slots) modes; a ragged batch where (a) and (b) need masks.

    python bench/bench_block_attention.py [--quick] [--budget-s S] [--results-dir DIR]   # GPU
    python bench/bench_block_attention.py --cpu-smoke                      # tiny shapes on CPU, checks the script
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

import dllm_kernels  # noqa: E402,F401
from dllm_kernels.reference.block_attention import block_attention_mask  # noqa: E402

BENCH = "bench_block_attention"
PEAK_BW = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # bytes/s, SXM parts


def peak_bandwidth(name: str):
    for key, bw in PEAK_BW.items():
        if key in name:
            return bw
    return None


class Case:
    """One benchmark case: the cache, the block, and every backend's inputs built once."""

    def __init__(self, B, prefix, block, H, Hkv, D, mode, suffix, ragged, dtype, device):
        self.B, self.prefix, self.block, self.H, self.Hkv, self.D = B, prefix, block, H, Hkv, D
        self.mode, self.suffix, self.ragged, self.dtype, self.device = mode, suffix, ragged, dtype, device
        self.l_max = prefix + block + suffix
        g = torch.Generator(device=device).manual_seed(B * 7919 + prefix + block)

        def rnd(*shape):  # generated on the device: host generation of GiB-sized caches is slow
            return (torch.randn(*shape, generator=g, dtype=dtype, device=device) * 0.5)

        self.q = rnd(B, block, H, D)
        self.k_new, self.v_new = rnd(B, block, Hkv, D), rnd(B, block, Hkv, D)
        self.k_cache, self.v_cache = rnd(B, self.l_max, Hkv, D), rnd(B, self.l_max, Hkv, D)
        if ragged:  # sequences at different positions: prefixes spread over [prefix/2, prefix]
            starts = [prefix - (prefix // 2) * i // max(B - 1, 1) for i in range(B)]
        else:
            starts = [prefix] * B
        self.starts = starts
        self.block_start = torch.tensor(starts, dtype=torch.int64, device=device)
        self.block_len = torch.full((B,), block, dtype=torch.int64, device=device)
        self.kv_len = self.block_start + block + suffix
        self.scale = 1.0 / math.sqrt(D)
        # Head-major layouts of the public decoders: q [B, H, Q, D]; past K/V [B, Hkv, L, D].
        self.q_t = self.q.transpose(1, 2).contiguous()
        self.kn_t, self.vn_t = self.k_new.transpose(1, 2).contiguous(), self.v_new.transpose(1, 2).contiguous()
        kt, vt = self.k_cache.transpose(1, 2).contiguous(), self.v_cache.transpose(1, 2).contiguous()
        self.k_prefix, self.v_prefix = kt[:, :, :prefix].contiguous(), vt[:, :, :prefix].contiguous()
        tail = slice(prefix + block, prefix + block + suffix)
        self.k_suffix, self.v_suffix = kt[:, :, tail].contiguous(), vt[:, :, tail].contiguous()
        keys = prefix + block + (suffix if mode == "dual" else 0)
        # (b)'s K/V: the cache with every sequence's fresh block already in its slots.
        for b, s in enumerate(starts):
            kt[b, :, s:s + block], vt[b, :, s:s + block] = self.kn_t[b], self.vn_t[b]
        self.k_full, self.v_full = kt[:, :, :keys].contiguous(), vt[:, :, :keys].contiguous()
        del kt, vt
        self.keys = keys
        self.mask = None
        if ragged:  # (a) and (b) must mask: keys past each sequence's own range
            self.mask = block_attention_mask(self.block_start, self.block_len, self.kv_len,
                                             1 if mode == "dual" else 0, 0, block, keys)[:, None]
        self.gqa = H != Hkv

    def ours(self):
        return torch.ops.dllm.block_attention(self.q, self.k_new, self.v_new, self.k_cache, self.v_cache,
                                              self.block_start, self.block_len, self.kv_len,
                                              1 if self.mode == "dual" else 0, self.scale, 0)

    def cat_sdpa(self):
        parts_k = [self.k_prefix, self.kn_t] + ([self.k_suffix] if self.mode == "dual" else [])
        parts_v = [self.v_prefix, self.vn_t] + ([self.v_suffix] if self.mode == "dual" else [])
        k, v = torch.cat(parts_k, dim=2), torch.cat(parts_v, dim=2)
        return F.scaled_dot_product_attention(self.q_t, k, v, attn_mask=self.mask, scale=self.scale,
                                              enable_gqa=self.gqa)

    def sdpa_preconcat(self):
        return F.scaled_dot_product_attention(self.q_t, self.k_full, self.v_full, attn_mask=self.mask,
                                              scale=self.scale, enable_gqa=self.gqa)

    def bytes_moved(self):
        """Minimum HBM traffic of block_attention: every visible K/V slot once, q, out, the written block."""
        el = torch.finfo(self.dtype).bits // 8
        keys = sum(min(self.l_max, s + self.block + (self.suffix if self.mode == "dual" else 0)) for s in self.starts)
        return el * (2 * keys * self.Hkv * self.D + 2 * self.B * self.block * self.H * self.D
                     + 4 * self.B * self.block * self.Hkv * self.D)

    def describe(self):
        return dict(B=self.B, prefix=self.prefix, block=self.block, suffix=self.suffix if self.mode == "dual" else 0,
                    mode=self.mode, ragged=self.ragged, H=self.H, Hkv=self.Hkv, D=self.D,
                    dtype=str(self.dtype).split(".")[-1])


BACKENDS = ("block_attention", "cat_sdpa", "sdpa_preconcat")


def backends_for(case):
    # The public decoders have no ragged batch (every sequence at one block position), so (a) is
    # measured on uniform batches only; (b) takes an explicit mask on ragged ones.
    return [b for b in BACKENDS if not (case.ragged and b == "cat_sdpa")]


def backend_fn(case, name):
    return {"block_attention": case.ours, "cat_sdpa": case.cat_sdpa, "sdpa_preconcat": case.sdpa_preconcat}[name]


def peak_extra_bytes(fn, device):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def time_gpu(fn):
    import triton.testing as tt

    fn()  # JIT-compile outside any capture
    torch.cuda.synchronize()
    res = {}
    try:
        med, p20, p80 = tt.do_bench_cudagraph(fn, rep=30, quantiles=[0.5, 0.2, 0.8])
        res.update(median_us=med * 1e3, p20_us=p20 * 1e3, p80_us=p80 * 1e3, timing="cuda_graph")
    except Exception as exc:  # a backend that cannot be captured is timed eagerly, and says so
        res.update(graph_error=f"{type(exc).__name__}: {exc}"[:200])
    med, p20, p80 = tt.do_bench(fn, warmup=10, rep=30, quantiles=[0.5, 0.2, 0.8])
    res.update(eager_median_us=med * 1e3, eager_p20_us=p20 * 1e3, eager_p80_us=p80 * 1e3)
    if "median_us" not in res:
        res.update(median_us=res["eager_median_us"], p20_us=res["eager_p20_us"], p80_us=res["eager_p80_us"],
                   timing="eager")
    return res


def time_cpu(fn, repeats):
    r = common.time_cpu(lambda _: fn(), lambda: None, repeats=repeats)
    r["timing"] = "cpu_wall"
    return r


def cases_for(args):
    if args.cpu_smoke:
        H, Hkv, D, dtype, dev = 4, 2, 64, torch.bfloat16, "cpu"
        grid = [(2, 64, 8, "prefix", False), (2, 128, 16, "dual", False), (3, 96, 8, "prefix", True)]
        return [Case(B, p, blk, H, Hkv, D, mode, 32, rag, dtype, dev) for B, p, blk, mode, rag in grid]
    H, Hkv, D, dtype, dev = 32, 32, 128, torch.bfloat16, "cuda"
    # Ordered by value: the run stops at --budget-s, so the target cases (prefix >= 1024) and the
    # corners of the grid come first, the fill-in last.
    grid = [(B, p, 32, "prefix", False) for B in (1, 16) for p in (1024, 4096)]
    grid += [(B, p, 32, "dual", False) for B in (1, 16) for p in (1024, 4096)]
    grid += [(B, p, blk, "prefix", False) for B in (1, 16) for p in (1024, 4096) for blk in (8, 64)]
    grid += [(16, p, 32, "prefix", True) for p in (1024, 4096)]
    if not args.quick:
        grid += [(B, p, blk, "prefix", False) for B in (1, 4, 16) for p in (512, 1024, 2048, 4096)
                 for blk in (8, 32, 64)]
        grid += [(4, p, 32, "dual", False) for p in (1024, 4096)] + [(4, p, 32, "prefix", True) for p in (1024, 4096)]
    seen = set()
    grid = [x for x in grid if not (x in seen or seen.add(x))]
    out = []
    for B, p, blk, mode, rag in grid:
        out.append((B, p, blk, mode, rag, H, Hkv, D, dtype, dev))
    return [lambda a=a: Case(a[0], a[1], a[2], a[5], a[6], a[7], a[3], 256, a[4], a[8], a[9]) for a in out]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (checks the script)")
    ap.add_argument("--quick", action="store_true", help="fewer GPU cases")
    ap.add_argument("--results-dir", default=None, help="where bench_block_attention.jsonl goes (default bench/results)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (--cpu-smoke)")
    ap.add_argument("--budget-s", type=float, default=60.0,
                    help="stop starting new cases after this many seconds (device_check.sh gives 70)")
    args = ap.parse_args(argv)
    if args.results_dir:
        common.RESULTS_DIR = args.results_dir
    if not args.cpu_smoke and not torch.cuda.is_available():
        ap.error("no CUDA device: run on a GPU, or pass --cpu-smoke")
    if args.cpu_smoke and args.threads:
        torch.set_num_threads(args.threads)
    device = "cpu" if args.cpu_smoke else "cuda"
    env = common.environment(device)
    bw = peak_bandwidth(env["device"]) if device == "cuda" else None
    rows, summary = [], []
    print(f"{BENCH} on {env['device']} (torch {env['torch']}, triton {env['triton']})")
    hdr = f"{'case':<52}{'ours us':>10}{'(a) us':>10}{'(b) us':>10}{'vs(a)':>8}{'vs(b)':>8}{'MB ours':>9}{'MB (a)':>9}{'maxdiff':>9}"
    print(hdr)
    t_start = time.perf_counter()
    all_cases = cases_for(args)
    for n_done, make in enumerate(all_cases):
        if time.perf_counter() - t_start > args.budget_s:
            print(f"time budget of {args.budget_s:.0f} s spent: {len(all_cases) - n_done} cases not run")
            break
        case = make() if callable(make) else make
        outs, res = {}, {}
        names = backends_for(case)
        for name in names:
            fn = backend_fn(case, name)
            outs[name] = fn()
            res[name] = time_gpu(fn) if device == "cuda" else time_cpu(fn, repeats=5)
            res[name]["peak_extra_bytes"] = peak_extra_bytes(fn, device)
        ours = outs["block_attention"].transpose(1, 2).float()
        maxdiff = (ours - outs["sdpa_preconcat"].float()).abs().max().item()
        desc = case.describe()
        for name in names:
            row = dict(bench=BENCH, case=desc, backend=name, **res[name])
            for base in ("cat_sdpa", "sdpa_preconcat"):
                if base in res:
                    row[f"ratio_vs_{base}"] = res[base]["median_us"] / res[name]["median_us"]
            if name == "block_attention":
                row["max_abs_diff_vs_sdpa"] = maxdiff
                if bw:
                    row["bandwidth_fraction"] = case.bytes_moved() / (res[name]["median_us"] * 1e-6) / bw
            row.update(env)
            if args.cpu_smoke:
                row["smoke"] = True
            rows.append(row)
        t = {k: res[k]["median_us"] for k in names}
        nan = float("nan")
        mb = lambda x: "-" if x is None else f"{x / 2**20:.1f}"  # noqa: E731
        label = (f"B={case.B} pre={case.prefix} blk={case.block} {case.mode}"
                 + (" ragged" if case.ragged else ""))
        ta = t.get("cat_sdpa", nan)
        print(f"{label:<52}{t['block_attention']:>10.1f}{ta:>10.1f}{t['sdpa_preconcat']:>10.1f}"
              f"{ta / t['block_attention']:>8.2f}{t['sdpa_preconcat'] / t['block_attention']:>8.2f}"
              f"{mb(res['block_attention']['peak_extra_bytes']):>9}"
              f"{mb(res.get('cat_sdpa', {}).get('peak_extra_bytes')):>9}{maxdiff:>9.2g}")
        summary.append((case, t))
        del case, outs
    name = BENCH + ("_cpu_smoke" if args.cpu_smoke else "")
    path = common.append_results(name, rows)
    big = [(c, t) for c, t in summary if c.prefix >= 1024 and not c.ragged]
    if big:
        va = min(t["cat_sdpa"] / t["block_attention"] for _, t in big)
        vb = min(t["sdpa_preconcat"] / t["block_attention"] for _, t in big)
        print(f"prefix >= 1024 (uniform batches): worst speed-up vs (a) cat+SDPA {va:.2f}x (target 2x), "
              f"vs (b) SDPA on pre-concatenated K/V {vb:.2f}x (target 1.0x)")
    print(f"{len(rows)} results appended to {path}")


if __name__ == "__main__":
    main()
