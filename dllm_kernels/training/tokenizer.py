"""Tokenizers of the tiny models: ids are `pieces` (strings), then eos, then mask.

`Tokenizer` holds what every tokenizer of the committed models shares (ids to text); `CharTokenizer`
(one character per id) is the tokenizer of models/shakespeare, models/addition and models/sudoku;
tools/shakespeare_words.py builds its word-piece tokenizer on the same base.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

import torch


class Tokenizer:
    """`pieces[i]` is the text of id i; eos = len(pieces), mask = eos + 1; the vocabulary is padded up
    to `embedding_size` (a multiple of 8 unless given)."""

    def __init__(self, pieces: Sequence[str], embedding_size: Optional[int] = None):
        self.pieces = list(pieces)
        self.eos_id = len(self.pieces)
        self.mask_id = self.eos_id + 1
        self.vocab_size = self.mask_id + 1
        self.embedding_size = embedding_size or (self.vocab_size + 7) // 8 * 8

    def decode(self, ids, *, stop_at_eos: bool = True, show_mask: str = "_") -> str:
        """Text of `ids`: up to the first eos (or eos shown as "|"), mask as `show_mask`, padding ids as "?"."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == self.eos_id:
                if stop_at_eos:
                    break
                out.append("|")
            elif i == self.mask_id:
                out.append(show_mask)
            else:
                out.append(self.pieces[i] if i < len(self.pieces) else "?")
        return "".join(out)


class CharTokenizer(Tokenizer):
    """Characters -> ids 0..n-1, then eos = n, mask = n+1."""

    def __init__(self, chars: Sequence[str], embedding_size: Optional[int] = None):
        super().__init__(chars, embedding_size)
        self.chars = self.pieces
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    def encode(self, text: str) -> List[int]:
        return [self.index[ch] for ch in text]

    def to_dict(self) -> dict:
        return {"chars": "".join(self.chars), "eos_id": self.eos_id, "mask_id": self.mask_id,
                "embedding_size": self.embedding_size}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        tok = cls(list(d["chars"]), d["embedding_size"])
        if (tok.eos_id, tok.mask_id) != (d["eos_id"], d["mask_id"]):
            raise ValueError("CharTokenizer.from_dict: eos_id/mask_id do not match the characters")
        return tok

    def save(self, path: str):
        with open(os.path.join(path, "tokenizer.json"), "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str) -> "CharTokenizer":
        with open(os.path.join(path, "tokenizer.json")) as f:
            return cls.from_dict(json.load(f))
