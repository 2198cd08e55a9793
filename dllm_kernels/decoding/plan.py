"""When the host reads the `[B, 11]` state, and what it may assume between reads.

Adaptive rules read the state every step. A top-k schedule with fixed block ends (no AdaBlock,
EoTP or early stop) reads it once per block: at a block's opening the host counts the steps the
block takes and replays the rows it read (as far as `caches.step_spans` looks at them) until then.
"""
from __future__ import annotations

import math
from typing import List

import numpy as np

from ..policy import Policy
from ..reference.fused_unmask import topk_count
from ..state import BLOCK_END, BLOCK_MASKED, BLOCK_REMAINING, BLOCK_START, DONE, END_POS, GEN_END, GEN_START, STEP

__all__ = ["StateReader", "opening_end"]


def opening_end(st: list, policy: Policy) -> int:
    """End (exclusive) of the rows the block opening at st[BLOCK_END] may read (docs/fused_unmask.md
    steps 1-2): the default block, or the AdaBlock look-ahead window when longer."""
    s, end_pos = st[BLOCK_END], st[END_POS]
    remaining = end_pos - s
    n = min(policy.block_length, remaining)
    if policy.adaptive_block:
        w = int(math.floor(np.float32(policy.block_window_fraction) * np.float32(st[GEN_END] - st[GEN_START])))
        n = max(n, min(w, remaining))
    return s + n


def fixed_schedule(policy: Policy) -> bool:
    """Top-k schedule with fixed block ends: every block takes a number of steps the host can
    count in advance (EoTP and early stop end sequences, AdaBlock moves block ends: data-dependent)."""
    return policy.rule == "topk" and not (policy.adaptive_block or policy.eotp or policy.early_stop)


def topk_steps_left(step: int, masked: int, remaining: int, steps: int) -> int:
    """Steps (this one included) until a top-k block with `remaining` masked positions closes, if
    every step commits its k_i (docs/fused_unmask.md step 5). Steps commit no more than k_i, so the
    block never closes sooner; an invalid row can make it close later, which the next read sees."""
    n = 0
    while remaining > 0:
        remaining -= topk_count(step, masked, steps, remaining)
        step, n = step + 1, n + 1
    return max(n, 1)


def plan_block(st: list, policy: Policy, first_masked: List[int]):
    """For a fixed schedule: how many steps after this one run without reading the state, and the
    state rows (as far as `step_spans` reads them) those steps see. A sequence opening a block this
    step gets the block the op will open: [BLOCK_END, +block_length) cut at END_POS, masked from
    `first_masked[b]` on (generate lays out the generation region masked, a block-diffusion model's
    first block may start with prompt tokens, and a top-k step writes only its block)."""
    ahead, rows = [], []
    for b, row in enumerate(st):
        if row[DONE]:
            rows.append(row)
            continue
        if row[BLOCK_REMAINING] == 0:
            s, e = row[BLOCK_END], opening_end(row, policy)  # no AdaBlock: the default block
            masked = e - max(s, first_masked[b])
            ahead.append(topk_steps_left(0, masked, masked, policy.block_steps))
            row = list(row)
            row[BLOCK_START], row[BLOCK_END], row[BLOCK_REMAINING] = s, e, masked
        else:
            ahead.append(topk_steps_left(row[STEP], row[BLOCK_MASKED], row[BLOCK_REMAINING], policy.block_steps))
        rows.append(row)
    return (min(ahead) - 1 if ahead else 0), rows


class StateReader:
    """`read()`: the state rows of this step, from the device (counted in `reads`) or, inside a
    top-k block, the rows planned at its opening."""

    def __init__(self, state, policy: Policy, first_masked: List[int]):
        self.state, self.policy, self.first_masked = state, policy, first_masked
        self.fixed = fixed_schedule(policy)
        self.unread, self.planned, self.reads = 0, None, 0

    def read(self) -> list:
        if self.unread > 0:  # inside a top-k block: its ends were counted at its opening
            self.unread -= 1
            return self.planned
        st = self.state.state.tolist()  # the host read: once per step, or once per top-k block
        self.reads += 1
        if self.fixed:
            self.unread, self.planned = plan_block(st, self.policy, self.first_masked)
        return st
