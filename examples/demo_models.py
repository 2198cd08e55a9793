"""Part two of `make demo`: the tiny trained dLLMs of models/ decoded through fused_unmask.

Sudoku: held-out 4x4 puzzles solved one token per step and with policies that commit several cells
per forward (whether each grid is right, and how many forwards it took); text: held-out Shakespeare
prompts continued by the word-piece model. The forwards-against-quality table over every model,
policy and cache is bench/results/quality.md (bench/bench_quality.py; minutes of CPU, so not here).

    python examples/demo_models.py
"""
import dataclasses
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import dllm_kernels as dk  # noqa: E402
from dllm_kernels.training.learn2pd import load_filter  # noqa: E402
import bench_quality as BQ  # noqa: E402
import sudoku as S  # noqa: E402  (tools/, on the path through bench_quality)
import train_text as T  # noqa: E402

NEEDED = {"sudoku": "python tools/train_sudoku.py --out models/sudoku",
          "shakespeare_words": "python tools/train_text.py --out models/shakespeare_words"}


def show(s: str) -> str:
    return s.replace("\n", "⏎")


def decode(model, tok, spec, prompts, policy):
    return dk.generate(model, prompts, gen_length=spec.gen_length, policy=policy, mask_id=tok.mask_id,
                       eos_id=tok.eos_id)


def sudoku_part():
    spec = BQ.MODELS["sudoku"]
    model, tok, path = BQ.load_model("sudoku")
    pols = BQ.policies(spec, tok, load_filter(os.path.join(path, "learn2pd_filter.safetensors")), quick=False)
    chosen = ("one token per step", "top-k 8", "threshold 0.9", "LocalLeap", "learned filter")
    prompts, check = BQ.held_out_prompts("sudoku", tok, 3)
    print(f"## sudoku (held-out 4x4 puzzles, '.' blank; {spec.gen_length} positions: 16 cells, newline, eos)")
    for i, p in enumerate(prompts):
        puzzle = tok.decode(p)
        print(f"puzzle {i + 1}: {puzzle.count('.')} blank cells")
        outs = {name: decode(model, tok, spec, [p], dataclasses.replace(pols[name], eotp=True)) for name in chosen}
        grids = [S.show(puzzle, tok.decode(o.tokens[0])).split("\n") for o in outs.values()]
        print("  " + "  ".join(f"{name[:16]:<16}" for name in chosen))
        for r in range(4):
            print("  " + "  ".join(f"{g[r]:<16}" for g in grids))
        print("  " + "  ".join(f"{('right' if check(i, tok.decode(o.tokens[0])) else 'WRONG') + f', {o.nfe[0]} fwd':<16}"
                               for o in outs.values()))
    print()


def text_part():
    model, tok, _ = BQ.load_model("shakespeare_words")
    prompts = BQ.held_out_prompts("shakespeare_words", tok, 2)[0]
    # greedy (the benchmark's baseline) spells words from letters; the sampled decoding reads best
    # (models/shakespeare_words/RECIPE.md, "Decoding")
    chosen = {"greedy, one token per step": T.DECODINGS["one token per step (greedy, blocks of 16)"],
              T.READING: T.DECODINGS[T.READING]}
    print(f"## shakespeare_words (word pieces; spoken lines of held-out plays; {T.SAMPLE_LENGTH} tokens)")
    for i, p in enumerate(prompts, start=1):
        print(f"prompt: {show(tok.decode(p, stop_at_eos=False))}")
        for name, kw in chosen.items():
            out = dk.generate(model, [p], gen_length=T.SAMPLE_LENGTH, policy=dk.Policy(**kw), mask_id=tok.mask_id,
                              eos_id=tok.eos_id, seed=i + 1)
            print(f"  {name} ({out.nfe[0]} fwd):\n    {show(tok.decode(out.tokens[0]))}")
    print()


def main():
    torch.set_num_threads(2)
    t_start = time.time()
    for name, cmd in NEEDED.items():
        if not os.path.exists(os.path.join(ROOT, "models", name, "model.safetensors")):
            print(f"models/{name} is missing: train it with {cmd}")
            return
    print("\n# Part 2: tiny dLLMs trained here (models/), decoded through fused_unmask\n")
    sudoku_part()
    text_part()
    print("Forwards against accuracy for every policy and cache: bench/results/quality.md (bench/bench_quality.py).")
    print(f"\n(part 2 took {time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
