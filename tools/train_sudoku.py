"""Seeded training of models/sudoku (4x4 Sudoku completion, tools/sudoku.py) with the tiny LLaDA trainer.

    python tools/train_sudoku.py --out models/sudoku              # train (one CPU thread)
    python tools/train_sudoku.py --out models/sudoku --finalize   # evaluate the fp16 weights, write RECIPE.md

The model, objective, schedule and checkpoint format are dllm_kernels.training's (TinyLLaDA, LLaDA's
masked diffusion loss on the answer region, AdamW with warm-up and cosine decay); only the data differ.
Every draw comes from generators seeded by --seed, so a run is reproducible on one machine/torch build.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sudoku as S  # noqa: E402
from dllm_kernels.generate import generate  # noqa: E402
from dllm_kernels.models.llada import LLaDA, LLaDAConfig  # noqa: E402
from dllm_kernels.policy import Policy  # noqa: E402
from dllm_kernels.training.fit import fit  # noqa: E402
from dllm_kernels.training.model import TinyLLaDA, save_llada_checkpoint  # noqa: E402
from dllm_kernels.training.objective import forward_mask, masked_token_loss, unigram_loss  # noqa: E402
from dllm_kernels.training.tokenizer import CharTokenizer  # noqa: E402

PRESET = dict(d_model=128, n_layers=4, n_heads=4, mlp_hidden_size=384, batch=64, steps=6000, lr=2e-3, warmup=100)


def tokenizer() -> CharTokenizer:
    return CharTokenizer(list(S.CHARS), embedding_size=16)


def batch(rng: np.random.Generator, n: int, tok: CharTokenizer, held_out: bool = False):
    """Tokens [B, L] (prompt, answer, eos up to GEN_LENGTH) and the answer-region mask [B, L]."""
    probs = [S.problem(rng, held_out) for _ in range(n)]
    P = len(probs[0][0])
    x = torch.full((n, P + S.GEN_LENGTH), tok.eos_id, dtype=torch.int64)
    for i, (p, a) in enumerate(probs):
        ids = tok.encode(p + a)
        x[i, :len(ids)] = torch.tensor(ids)
    eligible = torch.zeros_like(x, dtype=torch.bool)
    eligible[:, P:] = True
    return x, eligible


def accuracy(model: LLaDA, tok: CharTokenizer, problems, policy=None, cache="none") -> float:
    """Fraction of puzzles solved (S.is_solution on the text before the first eos)."""
    policy = policy or Policy(rule="topk", steps=S.GEN_LENGTH, block_length=S.GEN_LENGTH)
    out = generate(model, [tok.encode(p) for p, _ in problems], gen_length=S.GEN_LENGTH, policy=policy,
                   cache=cache, mask_id=tok.mask_id, eos_id=tok.eos_id)
    return sum(S.is_solution(p, tok.decode(r)) for r, (p, _) in zip(out.tokens, problems)) / len(problems)


def held_out_eval(model, tok, counts, n_batches=8, size=128, seed=777):
    """(masked-token CE, unigram CE of the same masked tokens, masked tokens) on held-out puzzles."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    tot = uni = 0.0
    n = 0
    for _ in range(n_batches):
        x, elig = batch(rng, size, tok, held_out=True)
        state = gen.get_state()
        ce, k = masked_token_loss(model, x, elig, tok.mask_id, gen)
        g2 = torch.Generator()
        g2.set_state(state)
        _, masked, _ = forward_mask(x, elig, tok.mask_id, g2)
        tot, uni, n = tot + ce * k, uni + unigram_loss(counts, x[masked]) * k, n + k
    return tot / n, uni / n, n


def config(tok, p) -> LLaDAConfig:
    return LLaDAConfig(d_model=p["d_model"], n_layers=p["n_layers"], n_heads=p["n_heads"],
                       mlp_hidden_size=p["mlp_hidden_size"], vocab_size=tok.embedding_size,
                       embedding_size=tok.embedding_size, rope_theta=10000.0, rms_norm_eps=1e-5,
                       weight_tying=False, max_sequence_length=64, mask_token_id=tok.mask_id, eos_token_id=tok.eos_id)


def train(out: str, seed: int = 0, eval_every: int = 500, **overrides):
    torch.set_num_threads(1)
    p = dict(PRESET, **{k: v for k, v in overrides.items() if v is not None})
    tok = tokenizer()
    torch.manual_seed(seed)
    model = TinyLLaDA(config(tok, p))
    xs, el = batch(np.random.default_rng(seed + 1), 20000, tok)
    counts = torch.bincount(xs[el], minlength=tok.embedding_size)
    evals, evals_so_far = S.eval_set(200), []
    os.makedirs(out, exist_ok=True)

    def on_eval(st):
        ce, uni, n = held_out_eval(model, tok, counts, n_batches=2)
        dec = LLaDA(model.config, model.llada_state_dict(torch.float32), dtype=torch.float32)
        entry = {"step": st.step, "train_loss_avg": float(np.mean(st.history[-eval_every:])),
                 "held_out_masked_ce": ce, "unigram_ce": uni, "masked_tokens": n,
                 "accuracy_one_token_per_step": accuracy(dec, tok, evals), "elapsed_s": st.elapsed_s}
        print(json.dumps(entry), flush=True)
        evals_so_far.append(entry)
        log = {"preset": p, "seed": seed, "recipe": {"task": "sudoku", "gen_length": S.GEN_LENGTH,
                                                     "clues": list(S.CLUES)},
               "training_data_sha256": st.data_hash.hexdigest(), "parameters": model.num_parameters(),
               "last_eval": entry, "evals": evals_so_far, "unigram_counts": counts.tolist(),
               "train_loss_curve": st.loss_curve(), "complete": st.last, "torch": torch.__version__}
        save_llada_checkpoint(model, out, extra_config={"dllm_task": "sudoku"})
        tok.save(out)
        with open(os.path.join(out, "train_log.json"), "w") as f:
            json.dump(log, f, indent=2)
            f.write("\n")

    fit(model, lambda rng: (*batch(rng, p["batch"], tok), None), steps=p["steps"], lr=p["lr"],
        warmup=p["warmup"], mask_id=tok.mask_id, seed=seed, eval_every=eval_every, on_eval=on_eval)

def finalize(out: str, n_eval: int = 1000):
    """Evaluate the committed fp16 weights: held-out masked-token CE against the unigram baseline
    (16 batches of 128), one-token-per-step exact match on `n_eval` held-out puzzles; write
    heldout_prompts.jsonl (the benchmark's and demo's 400 held-out puzzles) and the final numbers into
    train_log.json."""
    torch.set_num_threads(1)
    tok = CharTokenizer.load(out)
    with open(os.path.join(out, "train_log.json")) as f:
        tlog = json.load(f)
    model = LLaDA.from_pretrained(out, dtype=torch.float32)
    ce, uni, n = held_out_eval(model, tok, torch.tensor(tlog["unigram_counts"]), n_batches=16, seed=2024)
    problems = S.eval_set(n_eval)
    acc = accuracy(model, tok, problems)
    tlog["final_eval"] = {"held_out_masked_ce": ce, "unigram_ce": uni, "masked_tokens": n,
                          "accuracy_one_token_per_step": acc, "accuracy_prompts": n_eval,
                          "weights": "fp16 model.safetensors, evaluated in float32"}
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump(tlog, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "heldout_prompts.jsonl"), "w") as f:
        for prompt, answer in problems[:400]:
            f.write(json.dumps({"prompt": prompt, "answer": answer, "ids": tok.encode(prompt)}) + "\n")
    print(json.dumps(tlog["final_eval"]), flush=True)


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_recipe(out: str):
    """RECIPE.md from train_log.json (after --finalize) and the files in `out`."""
    with open(os.path.join(out, "train_log.json")) as f:
        tlog = json.load(f)
    p, fe, le = tlog["preset"], tlog["final_eval"], tlog["last_eval"]
    tok = CharTokenizer.load(out)
    weights = os.path.join(out, "model.safetensors")
    filt = os.path.join(out, "learn2pd_filter.safetensors")
    lines = ["# models/sudoku: a tiny LLaDA-architecture masked diffusion model for 4x4 Sudoku", "",
             "## How it was made", "", "```",
             f"python tools/train_sudoku.py --out models/sudoku --steps {p['steps']} --eval-every 275",
             "python tools/train_sudoku.py --out models/sudoku --finalize",
             "python tools/train_sudoku.py --out models/sudoku --learn2pd-prompts /tmp/sudoku_l2pd.jsonl",
             f"python -m dllm_kernels.training.learn2pd --model models/sudoku --prompts /tmp/sudoku_l2pd.jsonl "
             f"--eval-prompts models/sudoku/heldout_prompts.jsonl --n-train 256 --gen-length {S.GEN_LENGTH} --block-length {S.GEN_LENGTH}",
             "python tools/train_sudoku.py --out models/sudoku --recipe", "```", "",
             f"- Architecture: LLaDA (RMSNorm, RoPE theta 10000, SwiGLU, bidirectional attention, no biases), "
             f"d_model {p['d_model']}, {p['n_layers']} layers, {p['n_heads']} heads, MLP {p['mlp_hidden_size']}, "
             f"vocab {tok.embedding_size} (characters `{S.CHARS!r}`, eos {tok.eos_id}, mask {tok.mask_id}); "
             f"{tlog['parameters']:,} parameters; `model.safetensors` fp16, {os.path.getsize(weights) / 1e6:.2f} MB, "
             f"SHA-256 `{sha256_file(weights)}`.",
             "- Objective: LLaDA SFT (t ~ U(1e-3, 1) per sequence, each answer-region token masked with probability t, "
             "cross-entropy on masked tokens weighted by 1/t, divided by the answer length; the prompt is never masked).",
             f"- Optimiser: AdamW (betas 0.9/0.98, weight decay 0.1), peak lr {p['lr']}, {p['warmup']} warm-up steps, "
             f"cosine to 10%, grad-norm clip 1.0, batch {p['batch']}, {p['steps']} steps, seed {tlog['seed']}, one CPU "
             f"thread (torch {tlog['torch']}); {le['elapsed_s'] / 60:.1f} min wall on a shared 2-core machine.",
             f"- SHA-256 of the training token stream actually consumed (every batch's int16 tokens, in order): "
             f"`{tlog['training_data_sha256']}`.", "",
             "## Data recipe", "", "tools/sudoku.py (its docstring is the recipe): a solution grid uniform over the 288 "
             f"4x4 grids, cells removed in random order while the solution stays unique, down to {S.CLUES[0]}-{S.CLUES[1]} "
             "clues (8-12 blank cells). Prompt `puzzle=` (`.` blank), answer the 16 solution digits, a newline (AdaBlock's "
             f"delimiter), eos up to {S.GEN_LENGTH} positions. Held out: puzzles with `is_held_out` (10%, a hash of the "
             "puzzle string) are never training prompts. `heldout_prompts.jsonl`: 400 held-out puzzles with answers "
             "(`eval_set(1000)`'s first 400: the benchmark's and demo's prompts).", "",
             "## Measured (the committed fp16 weights)", "",
             "| held-out masked-token CE (nats) | unigram CE of the same tokens | masked tokens | one-token-per-step exact match |",
             "|---:|---:|---:|---:|",
             f"| {fe['held_out_masked_ce']:.3f} | {fe['unigram_ce']:.3f} | {fe['masked_tokens']} | "
             f"{100 * fe['accuracy_one_token_per_step']:.1f}% of {fe['accuracy_prompts']} |", "",
             "Exact match: the decoded grid is valid and keeps every clue (each puzzle has one solution). One token per "
             f"step: LLaDA's low-confidence remasking, one block of {S.GEN_LENGTH}, greedy. Training curve (mean "
             "1/t-weighted loss of 50 steps, every 100 steps): "
             + ", ".join(f"{v:.3f}" for v in tlog["train_loss_curve"][::2])
             + f"; the last training-time check: {100 * le['accuracy_one_token_per_step']:.1f}% of 200 held-out puzzles "
             f"at step {le['step']}.", ""]
    if os.path.exists(filt):
        lines += [f"`learn2pd_filter.safetensors` (SHA-256 `{sha256_file(filt)}`): the Learn2PD filter trained on this "
                  "model by the CLI above (256 training-distribution puzzles).", ""]
    with open(os.path.join(out, "RECIPE.md"), "w") as f:
        f.write("\n".join(lines))


def write_learn2pd_prompts(path: str, n: int = 512, seed: int = 100):
    """Training-distribution prompts (never held out) for the Learn2PD CLI's --prompts."""
    tok, rng = tokenizer(), np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"ids": tok.encode(S.problem(rng, False)[0])}) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--d-model", type=int)
    ap.add_argument("--n-layers", type=int)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--finalize", action="store_true", help="evaluate the checkpoint in --out")
    ap.add_argument("--recipe", action="store_true", help="rewrite RECIPE.md from train_log.json")
    ap.add_argument("--learn2pd-prompts", metavar="JSONL", help="write training prompts for the Learn2PD CLI")
    a = ap.parse_args(argv)
    if a.finalize:
        finalize(a.out)
    if a.finalize or a.recipe:
        return write_recipe(a.out)
    if a.learn2pd_prompts:
        return write_learn2pd_prompts(a.learn2pd_prompts)
    train(a.out, seed=a.seed, eval_every=a.eval_every, steps=a.steps, batch=a.batch, lr=a.lr,
          d_model=a.d_model, n_layers=a.n_layers)


if __name__ == "__main__":
    main()
