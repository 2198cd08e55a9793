"""Block-length sweep of one unmasking step (`bench_fused_unmask.py --block-sweep`): how the step scales
with the number of positions in one block, as LLaDA-style whole-sequence blocks (1,024 and more)
need.

One sequence, one block of n masked positions, all n rows read, LLaDA's top-k rule committing
n / 8 tokens (the policy stage ranks every candidate). Per (V, n): the fused C++ step, the
float64 eager step (softmax + topk), and the step at V = 16, whose statistics pass is negligible,
so its time bounds the policy stage from above; `policy_share` is that bound over the step.
On a GPU (`--device cuda`) every backend present is swept, to 16,384 positions: past 2,048 the CUDA
kernel ranks by sorted chunks, past 4,096 the Triton kernel.
"""
import torch

import dllm_kernels as dk
from dllm_kernels.eager import eager_topk_step

SWEEP_V = (1024, 126464)
SWEEP_BLOCKS = (256, 512, 1024, 2048, 4096, 8192)
SWEEP_BLOCKS_CUDA = SWEEP_BLOCKS + (16384,)
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


def _logits_cuda(n, V, seed=0):
    """_logits' distribution drawn on the GPU (16,384 rows of 126,464 drawn on the host take minutes)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    out = torch.randn(1, n, V, generator=g, device="cuda", dtype=torch.bfloat16) * 2.0
    peak = torch.randint(0, V, (1, n, 1), generator=g, device="cuda")
    lift = torch.rand(1, n, 1, generator=g, device="cuda") * 14.0 + 4.0
    out.scatter_add_(2, peak, lift.to(torch.bfloat16))
    return out


def run(time_step, repeats, env, blocks=SWEEP_BLOCKS, vocabs=SWEEP_V, device="cpu", backends=("auto",)):
    """Rows of results (and prints a table). time_step(call, logits, make_inputs, repeats): the
    median microseconds of call(logits, *make_inputs()) (a step mutates its inputs)."""
    rows = []
    print(f"{'V':>7} {'block':>6} {'backend':>8} {'fused_us':>11} {'eager_f64_us':>13} {'vs f64':>7} "
          f"{'policy<=us':>11} {'share':>6} {'x per doubling':>15}")
    make = _logits_cuda if device == "cuda" else _logits
    for V in vocabs:
        mask_id = V - 1
        previous = {}
        for n in blocks:
            policy = dk.Policy(rule="topk", steps=8, block_length=n)

            def inputs(vocab):
                return lambda: (torch.full((1, n), vocab - 1, dtype=torch.int64, device=device),
                                dk.DecodeState.new(1, n, gen_start=0, device=device))

            def fused(vocab, backend):
                return lambda lg, x, st: dk.fused_unmask(lg, x, st, policy, mask_id=vocab - 1, eos_id=vocab - 2,
                                                         backend=backend)

            logits = make(n, V)
            probe = make(n, POLICY_PROBE_V, seed=1)
            t_eager = None
            if n * V <= EAGER_MAX_ELEMENTS:
                t_eager = time_step(lambda lg, x, st: eager_topk_step(lg, x, 0, n, mask_id, n // 8), logits,
                                    inputs(V), max(3, repeats // 3))
            for backend in backends:
                t_fused = time_step(fused(V, backend), logits, inputs(V), repeats)
                t_policy = time_step(fused(POLICY_PROBE_V, backend), probe, inputs(POLICY_PROBE_V), repeats)
                growth = t_fused / previous[backend] if backend in previous else None
                previous[backend] = t_fused
                rows.append(_row(V, n, backend, t_fused, t_eager, t_policy, growth, env))
            del logits, probe
    return rows


def _row(V, n, backend, t_fused, t_eager, t_policy, growth, env):
    """One result row, printed as a table line."""
    row = {"bench": "bench_fused_unmask_block_sweep", "V": V, "block": n, "dtype": "bfloat16",
           "backend": backend, "rule": "topk", "k": n // 8, "fused_us": t_fused, "eager_float64_us": t_eager,
           "ratio_vs_eager_float64": t_eager / t_fused if t_eager else None,
           "policy_bound_us": t_policy, "policy_share": min(1.0, t_policy / t_fused),
           "growth_per_doubling": growth, **env}
    eager_s = f"{t_eager:13.0f}" if t_eager else f"{'-':>13}"
    ratio_s = f"{t_eager / t_fused:6.1f}x" if t_eager else f"{'-':>7}"
    growth_s = f"{growth:14.2f}x" if growth else f"{'-':>15}"
    print(f"{V:>7} {n:>6} {backend:>8} {t_fused:>11.1f} {eager_s} {ratio_s} {t_policy:>11.1f} "
          f"{row['policy_share']:>6.1%} {growth_s}")
    return row
