"""Speculative decoding on the committed Shakespeare pair (models/shakespeare_causal: 2-layer draft,
6-layer target): autoregressive target decoding, vanilla speculative decoding and PEARL, side by side.

For each case (batch, temperature, draft length) every method decodes the same held-out prompts
(models/shakespeare/heldout_prompts.jsonl, 32 characters of plays never trained on) for
`--new-tokens` tokens. The methods run interleaved, `--repeats` times, and the median wall time of
each is reported, with ratios taken within the same run:

- `ar`: the target alone, one token per step (1 intra-op thread);
- `vanilla`: draft `draft_len` tokens, then one target pass (1 thread);
- `vanilla_2t`: the same with 2 intra-op threads (what a second core gives it without PEARL);
- `pearl`: PEARL, draft and target in two threads of 1 intra-op thread each (2 cores);
- `pearl_seq`: PEARL's schedule with the two jobs one after the other (1 thread): the same tokens,
  so `pearl_seq / pearl` is the gain from running the models at the same time.

Reported per method: tokens per round (accepted drafts plus the correction or bonus token, per
sequence and round), accepted draft tokens per round, and speed-up over `ar` and over `vanilla`.
Results: a table on stdout, JSON lines appended to bench_speculative.jsonl and the markdown table
in bench_speculative.md, both in `--results-dir` (default bench/results/). The 1-minute load average (`uptime`) before and after
is recorded: on a shared machine the absolute times move, the side-by-side ratios less so.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS_DIR, environment  # noqa: E402
from dllm_kernels import speculative as S  # noqa: E402
from dllm_kernels.models.causal_lm import CausalLM  # noqa: E402

MODELS = os.path.join(ROOT, "models", "shakespeare_causal")
PROMPTS = os.path.join(ROOT, "models", "shakespeare", "heldout_prompts.jsonl")


def load_avg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def methods(target, draft, prompts, n, T, k, device):
    def with_threads(threads, fn):
        def run():
            torch.set_num_threads(threads)
            return fn()
        return run

    return {
        "ar": with_threads(1, lambda: S.autoregressive(target, prompts, n, temperature=T, seed=1, device=device)),
        "vanilla": with_threads(1, lambda: S.speculative(target, draft, prompts, n, draft_len=k, temperature=T,
                                                         seed=1, device=device)),
        "vanilla_2t": with_threads(2, lambda: S.speculative(target, draft, prompts, n, draft_len=k, temperature=T,
                                                            seed=1, device=device)),
        "pearl": with_threads(1, lambda: S.pearl(target, draft, prompts, n, draft_len=k, temperature=T, seed=1,
                                                 device=device)),
        "pearl_seq": with_threads(1, lambda: S.pearl(target, draft, prompts, n, draft_len=k, temperature=T, seed=1,
                                                     device=device, parallel=False)),
    }


def run_case(target, draft, prompts, n, T, k, repeats, device):
    fns = methods(target, draft, prompts, n, T, k, device)
    for fn in fns.values():  # warm-up
        fn()
    times = {m: [] for m in fns}
    last = {}
    for _ in range(repeats):
        for m, fn in fns.items():
            last[m] = fn()
            times[m].append(last[m].stats.wall_s)  # the decoder's own clock, around the decode only
    med = {m: statistics.median(v) for m, v in times.items()}
    rows = []
    for m in fns:
        st = last[m].stats
        rows.append({"method": m, "batch": len(prompts), "temperature": T, "draft_len": k, "new_tokens": n,
                     "median_s": med[m], "tokens_per_round": st.tokens_per_round,
                     "accepted_per_round": st.accepted_per_round, "rounds": st.rounds,
                     "target_calls": st.target_calls, "draft_calls": st.draft_calls,
                     "speedup_vs_ar": med["ar"] / med[m], "speedup_vs_vanilla": med["vanilla"] / med[m],
                     "same_tokens_as_ar": last[m].tokens == last["ar"].tokens, **st.extra})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=os.environ.get("DLLM_BENCH_DEVICE", "cpu"))
    ap.add_argument("--results-dir", default=RESULTS_DIR)
    ap.add_argument("--budget-s", type=float, default=600.0)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    target = CausalLM.load(os.path.join(MODELS, "target")).to(args.device)
    draft = CausalLM.load(os.path.join(MODELS, "draft")).to(args.device)
    with open(PROMPTS) as f:
        prompts = [json.loads(line)["ids"] for line in f]
    cases = [(1, 0.0, 4), (1, 0.8, 4), (1, 0.8, 2), (1, 0.8, 6), (4, 0.8, 4), (4, 0.0, 4)]
    env = environment(args.device)
    load_before = load_avg()
    t_start = time.perf_counter()
    rows = []
    for B, T, k in cases:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"budget spent: skipping batch {B}, T {T}, draft {k}")
            continue
        case_rows = run_case(target, draft, prompts[:B], args.new_tokens, T, k, args.repeats, args.device)
        rows += case_rows
        for r in case_rows:
            print(f"B={B} T={T} k={k} {r['method']:>10}: {r['median_s'] * 1e3:8.1f} ms  tok/round "
                  f"{r['tokens_per_round']:.2f}  acc/round {r['accepted_per_round']:.2f}  x ar "
                  f"{r['speedup_vs_ar']:.2f}  x vanilla {r['speedup_vs_vanilla']:.2f}")
    load_after = load_avg()
    for r in rows:
        r.update(env, load_before=load_before, load_after=load_after, cores=os.cpu_count())
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, "bench_speculative.jsonl")
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    md = [f"# bench_speculative ({env['device']}, {os.cpu_count()} cores, torch {env['torch']}, git {env['git_sha']}, "
          f"{env['date']})", "",
          f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after. {args.new_tokens} new tokens per "
          f"sequence, median of {args.repeats} interleaved runs. Speed-ups are ratios of medians from this run.", "",
          "| batch | T | draft len | method | ms | tokens/round | accepted/round | x ar | x vanilla | same tokens as ar |",
          "|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['batch']} | {r['temperature']} | {r['draft_len']} | {r['method']} | {r['median_s'] * 1e3:.1f} | "
                  f"{r['tokens_per_round']:.2f} | {r['accepted_per_round']:.2f} | {r['speedup_vs_ar']:.2f} | "
                  f"{r['speedup_vs_vanilla']:.2f} | {'yes' if r['same_tokens_as_ar'] else 'no'} |")
    with open(os.path.join(args.results_dir, "bench_speculative.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
