"""Per-sequence decoding state kept on the device (docs/fused_unmask.md, "State columns")."""
from __future__ import annotations

from typing import Sequence, Union

import torch

GEN_START, GEN_END, BLOCK_START, BLOCK_END, STEP, BLOCK_MASKED, BLOCK_REMAINING, END_POS, DONE, SEED, OFFSET = range(11)
STATE_COLUMNS = 11

IntOrSeq = Union[int, Sequence[int], torch.Tensor]


def _per_sequence(value: IntOrSeq, batch: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.int64).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"DecodeState: {name} must be an int or have {batch} entries, got {t.numel()}")
    return t.clone()


class DecodeState:
    """The state tensor [B, 11] int64 and the confidence buffer [B, L] float32 of a batch.

    Both live on the device and are updated in place by every fused_unmask call, so sequences in
    one batch can sit at different blocks and steps without the host knowing.
    """

    def __init__(self, state: torch.Tensor, conf: torch.Tensor):
        self.state = state
        self.conf = conf

    @classmethod
    def new(cls, batch: int, length: int, *, gen_start: IntOrSeq, gen_end: IntOrSeq | None = None,
            seed: IntOrSeq = 0, device=None) -> "DecodeState":
        """Fresh state: generation region [gen_start, gen_end) per sequence (gen_end defaults to
        `length`), Philox seed per sequence (one int: the same seed for every sequence, so a
        sequence's noise never depends on its batch slot)."""
        if batch < 1 or length < 1:
            raise ValueError(f"DecodeState: batch and length must be >= 1, got {batch}, {length}")
        start = _per_sequence(gen_start, batch, "gen_start")
        end = _per_sequence(length if gen_end is None else gen_end, batch, "gen_end")
        if bool(((start < 0) | (end < start) | (end > length)).any()):
            raise ValueError(f"DecodeState: need 0 <= gen_start <= gen_end <= {length}, "
                             f"got gen_start={start.tolist()}, gen_end={end.tolist()}")
        state = torch.zeros(batch, STATE_COLUMNS, dtype=torch.int64)
        state[:, GEN_START] = start
        state[:, GEN_END] = end
        state[:, BLOCK_START] = start
        state[:, BLOCK_END] = start
        state[:, END_POS] = end
        state[:, SEED] = _per_sequence(seed, batch, "seed")
        conf = torch.full((batch, length), float("nan"), dtype=torch.float32)
        return cls(state.to(device), conf.to(device))

    def clone(self) -> "DecodeState":
        return DecodeState(self.state.clone(), self.conf.clone())

    def column(self, index: int) -> torch.Tensor:
        return self.state[:, index]

    @property
    def done(self) -> torch.Tensor:
        return self.state[:, DONE] != 0

    @property
    def block_start(self) -> torch.Tensor:
        return self.state[:, BLOCK_START]

    @property
    def block_end(self) -> torch.Tensor:
        return self.state[:, BLOCK_END]

    @property
    def end_pos(self) -> torch.Tensor:
        return self.state[:, END_POS]

    @property
    def block_open(self) -> torch.Tensor:
        """True where the current block still has masked positions."""
        return self.state[:, BLOCK_REMAINING] > 0

    def all_done(self) -> bool:
        """One host synchronisation: is every sequence finished?"""
        return bool(self.done.all())
