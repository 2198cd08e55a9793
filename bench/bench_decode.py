"""End-to-end decode: `dllm_kernels.generate` against the eager reference decoder, same model, same policy;
and the Dream and block-diffusion (SDAR, Fast-dLLM v2) classes against their own no-cache decode.

For each case (batch, prompt length) and cache mode ("none", "prefix", "dual"; "dual+graph" on a
GPU) it runs our decoder (LLaDA on block_attention, logits only for the needed rows, fused_unmask)
and the eager decoder (`dllm_kernels.eager_decoder`: the same model, full logits, a state read per
step, a forward per sequence when cached, policy engine `--eager-engine`), and reports side by side:
wall time, NFE, tokens/s, the share of each step spent outside the model's forward (ours), peak
memory above the weights (GPU), and whether the tokens are identical. The other model classes
have no eager decoder here: each cache mode is measured beside the no-cache decode of the same
model in the same run (ratio, forwards per token, whether the tokens equal the no-cache decode's:
always for the exact block cache at T = 0). Results: a table on stdout and JSON lines in
bench/results/bench_decode.jsonl.

    python bench/bench_decode.py                      # CPU: a small random LLaDA, float32
    python bench/bench_decode.py --device cuda        # GPU: LLaDA-8B shapes, random bf16 weights
                                                      # (32 layers, 4096 wide, V = 126,464), and
                                                      # Dream-7B / SDAR-8B / Fast-dLLM-v2-7B shapes
    python bench/bench_decode.py --models dream sdar  # some classes only

Random weights give near-uniform predictions, so the policy is LLaDA's top-k schedule (block 32,
8 steps per block: 4 tokens per step; a block-diffusion model keeps the tokens per step with its own
block size), which fixes the NFE independently of the weights. On the
GPU the eager decoder's engine defaults to the native op ("fused": the float64 reference takes
seconds per step at V = 126,464), so eager vs ours there measures the decoder plumbing.
Cases run in order of value until `--budget-s` is spent (device_check.sh gives the stage 60 s),
shared by the model classes (LLaDA, which also runs the eager decoder, gets two shares).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dllm_kernels as dk  # noqa: E402
from common import append_results, environment  # noqa: E402
from dllm_kernels.eager_decoder import eager_generate  # noqa: E402
from dllm_kernels.models import BlockDiffusion, Dream, LLaDA, LLaDAConfig, QwenConfig, random_state_dict  # noqa: E402

SHAPES = {
    "small": dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=8, mlp_hidden_size=704, vocab_size=8192,
                  mask_token_id=8191, eos_token_id=8190),
    "llada8b": dict(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288,
                    vocab_size=126464, mask_token_id=126336, eos_token_id=126081),
}
# Qwen-block classes: (architecture, cache modes, small CPU shape, 7B-class GPU shape)
_QWEN_SMALL = dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, mlp_hidden_size=704, vocab_size=8192,
                   rope_theta=1e6, rms_norm_eps=1e-6, mask_token_id=8191, eos_token_id=8190)
_QWEN25_7B = dict(d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, mlp_hidden_size=18944, vocab_size=152064,
                  rope_theta=1e6, rms_norm_eps=1e-6, mask_token_id=151666, eos_token_id=151643)
_QWEN3_8B = dict(d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8, head_dim=128, mlp_hidden_size=12288,
                 vocab_size=151936, rope_theta=1e6, rms_norm_eps=1e-6, mask_token_id=151669, eos_token_id=151645)
QWEN_MODELS = {
    "dream": ("DreamModel", dict(qkv_bias=True), _QWEN_SMALL, _QWEN25_7B),
    "sdar": ("SDARForCausalLM", dict(qkv_bias=False, qk_norm=True, block_size=4), dict(_QWEN_SMALL, head_dim=32),
             _QWEN3_8B),
    "fast_dllm_v2": ("Fast_dLLM_QwenForCausalLM", dict(qkv_bias=True, block_size=32), _QWEN_SMALL, _QWEN25_7B),
}
MODELS = ("llada",) + tuple(QWEN_MODELS)


def median_run(fn, repeats):
    """The result of fn() whose wall time is the median of `repeats` runs (one run's time on a small
    model moves by tens of percent on a shared CPU)."""
    runs = sorted((fn() for _ in range(max(1, repeats))), key=lambda r: r.wall_time_s)
    return runs[len(runs) // 2]


def peak_memory(dev, fn):
    """(result, peak bytes above what was allocated before) of fn()."""
    if dev.type != "cuda":
        return fn(), None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - base


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=os.environ.get("DLLM_BENCH_DEVICE", "cpu"))
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="small (CPU default) or llada8b (GPU default)")
    ap.add_argument("--batch", type=int, nargs="+", default=None)
    ap.add_argument("--prompt", type=int, nargs="+", default=None)
    ap.add_argument("--gen", type=int, default=None)
    ap.add_argument("--block", type=int, default=None, help="block length (32; 16 on CPU)")
    ap.add_argument("--steps", type=int, default=8, help="top-k steps per block")
    ap.add_argument("--caches", nargs="+", default=None, help="LLaDA's cache modes (the others run all of theirs)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--eager-engine", choices=("reference", "fused"), default=None)
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="runs per case, the median kept (3 on CPU, 1 on GPU)")
    args = ap.parse_args()

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.set_num_threads(args.threads)
    shape = args.shape or ("llada8b" if cuda else "small")
    batches = args.batch or ([1, 8] if cuda else [1, 4])
    prompts_len = args.prompt or ([256, 1024] if cuda else [32])
    gen = args.gen or (256 if cuda else 64)
    caches = args.caches or (["none", "prefix", "dual", "dual+graph"] if cuda else ["none", "prefix", "dual"])
    args.block = args.block or (32 if cuda else 16)
    args.steps = min(args.steps, args.block)
    engine = args.eager_engine or ("fused" if cuda else "reference")
    total = args.budget_s or (55.0 if cuda else 600.0)
    shares = {m: 2 if m == "llada" else 1 for m in args.models}  # LLaDA (with its eager baseline) gets two
    budget = {m: total * n / sum(shares.values()) for m, n in shares.items()}
    repeats = args.repeats or (1 if cuda else 3)
    dtype = torch.bfloat16 if cuda else torch.float32
    env = environment(args.device)
    rows = []
    for name in args.models:
        if name == "llada":
            rows += bench_llada(args, dev, shape, batches, prompts_len, gen, caches, engine, budget[name], repeats,
                                dtype, env)
        else:
            rows += bench_qwen(name, args, dev, batches, prompts_len, gen, budget[name], repeats, dtype, env)
    path = append_results("bench_decode" if cuda else "bench_decode_cpu", rows)
    print(f"# {len(rows)} results appended to {path}")


def bench_llada(args, dev, shape, batches, prompts_len, gen, caches, engine, budget, repeats, dtype, env):
    cuda = dev.type == "cuda"
    t_begin = time.perf_counter()
    cfg = LLaDAConfig(**SHAPES[shape])
    sd = random_state_dict(cfg, seed=0, dtype=dtype, device=dev, std=0.02)
    model = LLaDA(cfg, sd, dtype=dtype, device=dev)  # both decoders run this one model
    del sd
    policy = dk.Policy(rule="topk", steps=args.steps, block_length=args.block)
    print(f"# bench_decode LLaDA on {env['device']} ({shape}, {dtype}, threads={env['threads']}), gen {gen}, "
          f"block {args.block}, top-k {args.steps} steps/block, eager engine: {engine}, median of {repeats} runs, "
          f"load average {os.getloadavg()[0]:.0f}")

    # Warm-up (kernel compilation, allocator) on a short generation.
    g = torch.Generator().manual_seed(0)
    warm = [torch.randint(0, cfg.vocab_size - 1000, (16,), generator=g)]
    for c in ("none", "dual"):
        dk.generate(model, warm, gen_length=args.block, policy=policy, cache=c, cuda_graph=cuda)

    hdr = (f"{'batch':>5} {'prompt':>6} {'cache':>10} | {'ours s':>8} {'NFE':>5} {'tok/s':>8} {'out-fwd':>7} "
           f"{'mem MB':>8} | {'eager s':>8} {'NFE':>5} {'mem MB':>8} | {'speed-up':>8} {'same':>5}")
    print(hdr)
    rows = []
    last = {}  # cache -> (seconds, positions) of its last run: skip runs predicted to overrun the budget
    for B in batches:
        for P in prompts_len:
            ps = [torch.randint(0, cfg.vocab_size - 1000, (P,), generator=g) for _ in range(B)]
            base_time = None
            for cache in caches:
                left = budget - (time.perf_counter() - t_begin)
                predicted = repeats * last[cache][0] * B * (P + gen) / last[cache][1] if cache in last else 0.0
                if left <= 0 or predicted * (1 if args.no_eager else 2) > left:
                    print(f"# budget of {budget:.0f} s spent: skipping batch {B}, prompt {P}, cache {cache}")
                    continue
                mode, graph = cache.split("+")[0], cache.endswith("+graph")
                ours, mem = peak_memory(dev, lambda: median_run(lambda: dk.generate(
                    model, ps, gen_length=gen, policy=policy, cache=mode, cuda_graph=graph, timing=True), repeats))
                row = dict(bench="bench_decode", case=dict(shape=shape, dtype=str(dtype), batch=B, prompt=P, gen=gen,
                                                           block=args.block, policy=f"topk{args.steps}",
                                                           cache=cache),
                           backend="dllm_kernels.generate", median_us=ours.wall_time_s * 1e6,
                           wall_s=ours.wall_time_s, nfe=sum(ours.nfe) / B, forward_calls=ours.forward_calls,
                           tokens_per_s=ours.tokens_per_second,
                           outside_forward_fraction=ours.outside_forward_fraction,
                           peak_mem_bytes=mem, graph_steps=ours.graph_steps, state_reads=ours.state_reads,
                           load_avg=os.getloadavg()[0], **env)
                last[cache] = (ours.wall_time_s, B * (P + gen))
                if mode == "none":
                    base_time = ours.wall_time_s
                if base_time:
                    row["ratio_vs_no_cache"] = base_time / ours.wall_time_s
                e_s = e_nfe = e_mem = same = None
                skip_eager = args.no_eager or graph or (time.perf_counter() - t_begin > budget)
                if not skip_eager:
                    ref, e_mem = peak_memory(dev, lambda: median_run(lambda: eager_generate(
                        model, ps, gen_length=gen, policy=policy, cache=mode, mask_id=cfg.mask_token_id,
                        eos_id=cfg.eos_token_id, engine=engine), repeats))
                    e_s, e_nfe = ref.wall_time_s, sum(ref.nfe) / B
                    same = bool(torch.equal(ref.sequences, ours.sequences))
                    row.update(eager_wall_s=e_s, eager_nfe=e_nfe, eager_peak_mem_bytes=e_mem,
                               eager_engine=engine, ratio_vs_eager=e_s / ours.wall_time_s, same_tokens=same)
                rows.append(row)
                mb = lambda v: f"{v / 2**20:8.0f}" if v is not None else f"{'-':>8}"  # noqa: E731
                fr = ours.outside_forward_fraction
                print(f"{B:>5} {P:>6} {cache:>10} | {ours.wall_time_s:8.3f} {sum(ours.nfe) / B:5.0f} "
                      f"{ours.tokens_per_second:8.0f} {fr * 100 if fr is not None else float('nan'):6.1f}% "
                      f"{mb(mem)} | " + (f"{e_s:8.3f} {e_nfe:5.0f} {mb(e_mem)} | {e_s / ours.wall_time_s:7.2f}x "
                                        f"{str(same):>5}" if e_s is not None else f"{'-':>8} {'-':>5} {'-':>8} | "
                                                                                 f"{'-':>8} {'-':>5}"))
    return rows


def bench_qwen(name, args, dev, batches, prompts_len, gen, budget, repeats, dtype, env):
    """One Qwen-block class: every cache mode beside its own no-cache decode, in one run."""
    cuda = dev.type == "cuda"
    t_begin = time.perf_counter()
    arch, fixed, small, big = QWEN_MODELS[name]
    cfg = QwenConfig(**(big if cuda else small), **fixed, architecture=arch)
    cls = Dream if name == "dream" else BlockDiffusion
    model = cls.random(cfg, seed=0, dtype=dtype, device=dev, std=0.02)
    # Query rows each decode forwards (the work a cache saves), counted: unlike times, the count does
    # not depend on the machine's load.
    rows_seen = [0]
    forward_span = model.forward_span

    def counting_forward_span(*a, **kw):
        rows_seen[0] += sum(kw["q_len"])
        return forward_span(*a, **kw)

    model.forward_span = counting_forward_span
    block = getattr(model, "block_size", None) or args.block
    steps = max(1, block * args.steps // args.block)  # the same tokens per step as the LLaDA runs
    policy = dk.Policy(rule="topk", steps=steps, block_length=block, shift=model.shift)
    modes = ["none", "block"] if cls is BlockDiffusion else \
        (["none", "prefix", "dual", "dual+graph"] if cuda else ["none", "prefix", "dual"])
    print(f"\n# bench_decode {name} ({arch}, {'7B-class' if cuda else 'small'} shape, {dtype}, random weights) on "
          f"{env['device']}, gen {gen}, block {block}, top-k {steps} steps/block, median of {repeats} runs, "
          f"load average {os.getloadavg()[0]:.1f}")
    g = torch.Generator().manual_seed(0)
    warm = [torch.randint(0, cfg.vocab_size - 1000, (16,), generator=g)]
    for c in modes[:2]:
        dk.generate(model, warm, gen_length=block, policy=policy, cache=c)
    print(f"{'batch':>5} {'prompt':>6} {'cache':>10} | {'s':>8} {'NFE':>5} {'fwd/tok':>7} {'rows/tok':>8} {'tok/s':>8} "
          f"{'mem MB':>8} | {'vs none':>7} {'same':>5}")
    rows, last = [], None  # last: (seconds, positions) of the previous case, all modes and repeats
    for B in batches:
        for P in prompts_len:
            ps = [torch.randint(0, cfg.vocab_size - 1000, (P,), generator=g) for _ in range(B)]
            left = budget - (time.perf_counter() - t_begin)
            predicted = last[0] * B * (P + gen) / last[1] if last else 0.0
            if left <= 0 or predicted > left:
                print(f"# budget of {budget:.0f} s spent: skipping {name} batch {B}, prompt {P}")
                continue
            # Rounds of every mode in turn, the median per mode: a shared machine's load drifts, and
            # a ratio of runs minutes apart would measure the drift.
            t_case = time.perf_counter()
            runs, mems, qrows = {c: [] for c in modes}, {}, {}
            for _ in range(max(1, repeats)):
                for cache in modes:
                    mode, graph = cache.split("+")[0], cache.endswith("+graph")
                    rows_seen[0] = 0
                    out, mems[cache] = peak_memory(dev, lambda: dk.generate(
                        model, ps, gen_length=gen, policy=policy, cache=mode, cuda_graph=graph))
                    runs[cache].append(out)
                    qrows[cache] = rows_seen[0]  # eager steps only (a replayed graph step is not counted)
            last = (time.perf_counter() - t_case, B * (P + gen))
            base = None
            for cache in modes:
                out = sorted(runs[cache], key=lambda r: r.wall_time_s)[len(runs[cache]) // 2]
                mem = mems[cache]
                if cache == "none":
                    base = out
                ratio = base.wall_time_s / out.wall_time_s
                same = bool(torch.equal(base.tokens, out.tokens))
                fpt = sum(out.nfe) / (B * gen)
                rpt = qrows[cache] / (B * gen)
                rows.append(dict(bench="bench_decode", case=dict(model=name, architecture=arch, dtype=str(dtype),
                                                                  batch=B, prompt=P, gen=gen, block=block,
                                                                  policy=f"topk{steps}", cache=cache),
                                 backend="dllm_kernels.generate", median_us=out.wall_time_s * 1e6,
                                 wall_s=out.wall_time_s, nfe=sum(out.nfe) / B, forwards_per_token=fpt,
                                 query_rows_per_token=rpt, tokens_per_s=out.tokens_per_second, peak_mem_bytes=mem, graph_steps=out.graph_steps,
                                 ratio_vs_no_cache=ratio, same_tokens_as_no_cache=same, repeats=repeats,
                                 load_avg=os.getloadavg()[0], **env))
                mb = f"{mem / 2**20:8.0f}" if mem is not None else f"{'-':>8}"
                print(f"{B:>5} {P:>6} {cache:>10} | {out.wall_time_s:8.3f} {sum(out.nfe) / B:5.0f} {fpt:7.2f} {rpt:8.1f} "
                      f"{out.tokens_per_second:8.0f} {mb} | {ratio:6.2f}x {str(same):>5}")
    return rows


if __name__ == "__main__":
    main()
