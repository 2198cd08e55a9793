"""What each sequence's forward computes in one step, per cache mode.

Every live sequence has a block [s, e) whose logits rows the step reads (the block opening this
step, or the current one). The cache mode fixes the query span around it: the whole sequence ("none",
and every mode's refresh when a block opens), the block to the sequence's end (Fast-dLLM's prefix
cache), the block only (dual cache), or the finished blocks not yet cached plus the new one
(a block-diffusion model's exact block cache, whose K/V of a finished block are written once).
A shifted model (row p predicts position p + 1) reads its rows, and queries its cached spans, one
position earlier.
"""
from __future__ import annotations

from typing import List, NamedTuple

from ..policy import Policy
from ..state import BLOCK_END, BLOCK_REMAINING, BLOCK_START, DONE, END_POS
from .plan import opening_end

__all__ = ["MODES", "Spans", "cache_mode", "step_spans"]


class NoCache:
    """A full forward every step; with EoTP the rows run to the region's end (end-of-text
    candidates anywhere in the rest of the region)."""

    def span(self, b: int, s: int, e: int, lb: int, opens: bool, shift: int):
        """(q_start, q_len, whether the queries reach the sequence's end)."""
        return 0, lb, True

    def after_forward(self, st: list, opening: List[bool]) -> None:
        pass


class PrefixCache(NoCache):
    """Fast-dLLM's prefix cache: refreshed when a block opens, then queries [block start, end)."""

    def span(self, b, s, e, lb, opens, shift):
        return (0, lb, True) if opens else (s - shift, lb - s + shift, True)


class DualCache(NoCache):
    """Fast-dLLM's dual cache: refreshed when a block opens, then the block only."""

    def span(self, b, s, e, lb, opens, shift):
        return (0, lb, True) if opens else (s - shift, e - s + shift, False)


class BlockCache(NoCache):
    """Block diffusion: the blocks finished since the last forward (K/V written once, final) and
    the new one; `cached_end[b]`: positions whose K/V are final."""

    def __init__(self, batch: int):
        self.cached_end = [0] * batch

    def span(self, b, s, e, lb, opens, shift):
        start = self.cached_end[b] if opens else s
        return start, e - start, False

    def after_forward(self, st, opening):
        for b, opens in enumerate(opening):  # the blocks closed before this step are now cached for good
            if opens:
                self.cached_end[b] = st[b][BLOCK_END]


MODES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache, "block": BlockCache}


def cache_mode(name: str, batch: int):
    return BlockCache(batch) if name == "block" else MODES[name]()


class Spans(NamedTuple):
    """Per sequence (0 for a done one): query span, valid keys, logits rows, and whether a block opens."""

    q_start: List[int]
    q_len: List[int]
    kv_len: List[int]
    row_start: List[int]
    n_rows: List[int]
    opening: List[bool]


def step_spans(st: list, lens: List[int], policy: Policy, mode, shift: int = 0) -> Spans:
    out = Spans([], [], [], [], [], [])
    for b, row in enumerate(st):
        if row[DONE]:
            for field in out[:5]:
                field.append(0)
            out.opening.append(False)
            continue
        opens = row[BLOCK_REMAINING] == 0
        s = row[BLOCK_END] if opens else row[BLOCK_START]
        e = opening_end(row, policy) if opens else row[BLOCK_END]
        q_start, q_len, to_end = mode.span(b, s, e, lens[b], opens, shift)
        if to_end and policy.eotp:  # end-of-text candidates anywhere in the rest of the region
            e = row[END_POS]
        r0 = max(s - shift, 0)  # position 0 predicts nothing; a shifted model's prompt is never empty
        for field, v in zip(out, (q_start, q_len, lens[b], r0, e - shift - r0, opens)):
            field.append(v)
    return out
