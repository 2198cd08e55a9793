"""Block-length sweep of one unmasking step (`bench_fused_unmask.py --block-sweep`): how the step scales
with the number of positions in one block, as LLaDA-style whole-sequence blocks (1,024 and more)
need.

One sequence, one block of n masked positions, all n rows read, LLaDA's top-k rule committing
n / 8 tokens (the policy stage ranks every candidate). Per (V, n): the fused C++ step, the
float64 eager step (softmax + topk), and the step at V = 16, whose statistics pass is negligible,
so its time bounds the policy stage from above; `policy_share` is that bound over the step.
"""
import torch

import dllm_kernels as dk
from dllm_kernels.eager import eager_topk_step

SWEEP_V = (1024, 126464)
SWEEP_BLOCKS = (256, 512, 1024, 2048, 4096, 8192)
POLICY_PROBE_V = 16
# The float64 eager step holds several [n, V] float64 temporaries: keep it under ~1 GB each.
EAGER_MAX_ELEMENTS = 1024 * 126464


def _logits(n, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(1, n, V, dtype=torch.bfloat16)
    for r in range(n):  # row by row: no float32 temporary of the whole tensor
        row = torch.randn(V, generator=g) * 2.0
        row[torch.randint(0, V, (1,), generator=g)] += float(torch.rand(1, generator=g)) * 14.0 + 4.0
        out[0, r] = row.to(torch.bfloat16)
    return out


def run(time_cpu, repeats, env, blocks=SWEEP_BLOCKS, vocabs=SWEEP_V):
    """Rows of results (and prints a table)."""
    rows = []
    print(f"{'V':>7} {'block':>6} {'fused_us':>11} {'eager_f64_us':>13} {'vs f64':>7} {'policy<=us':>11} "
          f"{'share':>6} {'x per doubling':>15}")
    for V in vocabs:
        mask_id, eos_id = V - 1, V - 2
        previous = None
        for n in blocks:
            policy = dk.Policy(rule="topk", steps=8, block_length=n)

            def fused(logits, vocab):
                def call(a):
                    dk.fused_unmask(logits, a[0], a[1], policy, mask_id=vocab - 1, eos_id=vocab - 2)
                return call

            def setup(vocab):
                return lambda: (torch.full((1, n), vocab - 1, dtype=torch.int64),
                                dk.DecodeState.new(1, n, gen_start=0))

            logits = _logits(n, V)
            t_fused = time_cpu(fused(logits, V), setup(V), repeats)["median_us"]
            probe = _logits(n, POLICY_PROBE_V, seed=1)
            t_policy = time_cpu(fused(probe, POLICY_PROBE_V), setup(POLICY_PROBE_V), repeats)["median_us"]
            t_eager = None
            if n * V <= EAGER_MAX_ELEMENTS:
                t_eager = time_cpu(lambda a: eager_topk_step(logits, a[0], 0, n, mask_id, n // 8),
                                   setup(V), max(3, repeats // 3))["median_us"]
            growth = t_fused / previous if previous else None
            previous = t_fused
            row = {"bench": "bench_fused_unmask_block_sweep", "V": V, "block": n, "dtype": "bfloat16",
                   "rule": "topk", "k": n // 8, "fused_us": t_fused, "eager_float64_us": t_eager,
                   "ratio_vs_eager_float64": t_eager / t_fused if t_eager else None,
                   "policy_bound_us": t_policy, "policy_share": min(1.0, t_policy / t_fused),
                   "growth_per_doubling": growth, **env}
            rows.append(row)
            eager_s = f"{t_eager:13.0f}" if t_eager else f"{'-':>13}"
            ratio_s = f"{t_eager / t_fused:6.1f}x" if t_eager else f"{'-':>7}"
            growth_s = f"{growth:14.2f}x" if growth else f"{'-':>15}"
            print(f"{V:>7} {n:>6} {t_fused:>11.0f} {eager_s} {ratio_s} {t_policy:>11.0f} "
                  f"{row['policy_share']:>6.1%} {growth_s}")
    return rows
