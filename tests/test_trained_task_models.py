"""The committed models/sudoku and models/shakespeare_words: they load, match their recorded hashes and
decode (a few seconds)."""
import hashlib
import json
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import shakespeare_words as SW  # noqa: E402
import sudoku as S  # noqa: E402
from dllm_kernels import Policy, generate  # noqa: E402
from dllm_kernels.models import LLaDA  # noqa: E402
from dllm_kernels.training.tokenizer import CharTokenizer  # noqa: E402
from dllm_kernels.training.objective import forward_mask, unigram_loss  # noqa: E402


def _check_files(path):
    """Weights under 10 MB whose SHA-256 (and the filter's) is the one RECIPE.md states."""
    recipe = open(os.path.join(path, "RECIPE.md")).read()
    for name in ("model.safetensors", "learn2pd_filter.safetensors"):
        data = open(os.path.join(path, name), "rb").read()
        assert len(data) < 10 * 2 ** 20
        assert hashlib.sha256(data).hexdigest() in recipe, name
    assert json.load(open(os.path.join(path, "train_log.json")))["final_eval"]


def test_sudoku_model_solves_held_out_puzzles_one_token_per_step():
    path = os.path.join(ROOT, "models", "sudoku")
    _check_files(path)
    torch.set_num_threads(1)
    model = LLaDA.from_pretrained(path, dtype=torch.float32)
    tok = CharTokenizer.load(path)
    rows = [json.loads(line) for line in open(os.path.join(path, "heldout_prompts.jsonl"))][:32]
    assert all(S.is_held_out(r["prompt"][:-1]) and S.is_solution(r["prompt"], r["answer"]) for r in rows)
    prompts = [tok.encode(r["prompt"]) for r in rows]

    def solved(policy):
        out = generate(model, prompts, gen_length=S.GEN_LENGTH, policy=policy, mask_id=tok.mask_id, eos_id=tok.eos_id)
        return sum(S.is_solution(r["prompt"], tok.decode(t)) for r, t in zip(rows, out.tokens))

    one = solved(Policy(rule="topk", steps=S.GEN_LENGTH, block_length=S.GEN_LENGTH))
    assert one >= 30, one
    # eight cells per forward (three forwards) guesses cells one token per step deduces
    assert solved(Policy(rule="topk", steps=3, block_length=S.GEN_LENGTH)) < one - 4


def test_word_piece_model_loads_and_beats_unigram():
    path = os.path.join(ROOT, "models", "shakespeare_words")
    _check_files(path)
    torch.set_num_threads(1)
    model = LLaDA.from_pretrained(path, dtype=torch.float32)
    tok = SW.PieceTokenizer.load(path)
    rows = [json.loads(line) for line in open(os.path.join(path, "heldout_prompts.jsonl"))][:32]
    assert all(tok.decode(r["ids"], stop_at_eos=False) == r["text"] for r in rows)
    x = torch.tensor([r["ids"] for r in rows])
    noisy, masked, _ = forward_mask(x, torch.ones_like(x, dtype=torch.bool), tok.mask_id,
                                    torch.Generator().manual_seed(0))
    ce = float(F.cross_entropy(model(noisy, None).float()[masked], x[masked]))
    # unigram of these very windows: a baseline stronger than the training frequencies
    counts = torch.tensor(np.bincount(x.flatten().numpy(), minlength=tok.embedding_size))
    assert ce < 0.9 * unigram_loss(counts, x[masked]), ce
    # greedy continuations hold words (many spelled from letters, RECIPE.md) and come as lines, without
    # stage directions or runs of spaces
    out = generate(model, [r["ids"] for r in rows[:4]], gen_length=32,
                   policy=Policy(rule="threshold", block_length=16), mask_id=tok.mask_id, eos_id=tok.eos_id)
    texts = [tok.decode(t) for t in out.tokens]
    assert out.finished and sum(bool(re.search(r"[A-Za-z]{2}", t)) for t in texts) >= 3, texts
    assert all("\n" in t and "[" not in t and "  " not in t for t in texts), texts
