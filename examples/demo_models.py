"""Part two of `make demo`: the tiny trained dLLMs of models/ decoded through fused_unmask.

Prints a few held-out prompts decoded by a few policies (addition: the answer and whether it is right;
Shakespeare: the continuation), then a quick forwards-vs-quality table on held-out prompts (the full
table, with the dual cache and every policy, is bench/results/quality.md, from bench/bench_quality.py).

    python examples/demo_models.py
"""
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import dllm_kernels as dk  # noqa: E402
from dllm_kernels.training import data as D  # noqa: E402
from dllm_kernels.training.learn2pd import load_filter  # noqa: E402
import bench_quality as BQ  # noqa: E402


def show(s: str) -> str:
    return s.replace("\n", "⏎")


def main():
    torch.set_num_threads(2)
    t_start = time.time()
    for name in ("addition", "shakespeare"):
        if not os.path.exists(os.path.join(ROOT, "models", name, "model.safetensors")):
            print(f"models/{name} is missing: train it with python -m dllm_kernels.training.train --task {name}")
            return
    print("\n# Part 2: tiny dLLMs trained here (models/, dllm_kernels.training), decoded through fused_unmask\n")
    for name in ("addition", "shakespeare"):
        gen_length, block = BQ.MODELS[name]
        model, tok, path = BQ.load_model(name)
        filt = load_filter(os.path.join(path, "learn2pd_filter.safetensors"))
        pols = BQ.policies(name, block, tok, filt, quick=False)
        chosen = {k: pols[k] for k in ("one token per step", "threshold 0.9", "learned filter")}
        chosen["AdaBlock + threshold 0.9 + EoTP"] = dk.Policy(**{**pols["AdaBlock + threshold 0.9"].__dict__, "eotp": True})
        prompts, answers = BQ.held_out_prompts(name, tok, 3 if name == "addition" else 2)
        print(f"## {name} (held-out prompts; {gen_length} positions generated, blocks of {block})")
        for i, p in enumerate(prompts):
            print(f"prompt: {show(tok.decode(p, stop_at_eos=False))}")
            for pname, pol in chosen.items():
                out = dk.generate(model, [p], gen_length=gen_length, policy=pol, mask_id=tok.mask_id,
                                  eos_id=tok.eos_id)
                text = tok.decode(out.tokens[0])
                mark = ""
                if answers is not None:
                    mark = "  right" if text == answers[i] else f"  WRONG (want {show(answers[i])})"
                print(f"  {pname:<32} {out.nfe[0]:>3} forwards: {show(text)}{mark}")
        print()
    print("## quick table (held-out prompts, no cache; the full table is bench/results/quality.md)")
    print(BQ.HEADER)
    for name, n in (("addition", 100), ("shakespeare", 8)):
        BQ.run_model(name, n, True, ("none",), (False, True))
    print(f"\n(part 2 took {time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
