"""Per-sequence decoding state kept on the device (docs/fused_unmask.md, "State columns")."""
from __future__ import annotations

from typing import Sequence, Union

import torch

GEN_START, GEN_END, BLOCK_START, BLOCK_END, STEP, BLOCK_MASKED, BLOCK_REMAINING, END_POS, DONE, SEED, OFFSET = range(11)
STATE_COLUMNS = 11

IntOrSeq = Union[int, Sequence[int], torch.Tensor]
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

# Columns that change whenever a sequence makes progress: a commit lowers BLOCK_REMAINING (or
# opens the next block, moving BLOCK_START on), EoTP / early stop lower END_POS, the end sets DONE.
# Each moves one way only, so equal values mean no token was committed in between.
_PROGRESS_COLUMNS = [BLOCK_START, BLOCK_REMAINING, END_POS, DONE]


def per_sequence_int64(value: IntOrSeq, batch: int, name: str, *, op: str = "DecodeState",
                       device=None) -> torch.Tensor:
    """One int64 per sequence, [batch] on `device`, from an int (the same for every sequence) or
    `batch` values; an error names `op` and `name` otherwise."""
    try:
        t = torch.as_tensor(value, dtype=torch.int64).reshape(-1)
    except (OverflowError, RuntimeError, ValueError):
        raise ValueError(f"{op}: {name} must be int64, in [{INT64_MIN}, {INT64_MAX}], "
                         f"got {value!r}") from None
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{op}: {name} must be an int or have {batch} entries, got {t.numel()}")
    return t.to(device).clone()


class DecodeState:
    """The state tensor [B, 11] int64 and the confidence buffer [B, L] float32 of a batch.

    Both live on the device and are updated in place by every fused_unmask call, so sequences in
    one batch can sit at different blocks and steps without the host knowing.
    """

    def __init__(self, state: torch.Tensor, conf: torch.Tensor):
        self.state = state
        self.conf = conf
        # The progress columns when last seen changing, and the OFFSET (steps taken) at that time.
        self._seen = state[:, _PROGRESS_COLUMNS]
        self._seen_offset = state[:, OFFSET].clone()

    @classmethod
    def new(cls, batch: int, length: int, *, gen_start: IntOrSeq, gen_end: IntOrSeq | None = None,
            seed: IntOrSeq = 0, device=None) -> "DecodeState":
        """Fresh state: generation region [gen_start, gen_end) per sequence (gen_end defaults to
        `length`), Philox seed per sequence (one int: the same seed for every sequence, so a
        sequence's noise never depends on its batch slot)."""
        if batch < 1 or length < 1:
            raise ValueError(f"DecodeState: batch and length must be >= 1, got {batch}, {length}")
        start = per_sequence_int64(gen_start, batch, "gen_start")
        end = per_sequence_int64(length if gen_end is None else gen_end, batch, "gen_end")
        if bool(((start < 0) | (end < start) | (end > length)).any()):
            raise ValueError(f"DecodeState: need 0 <= gen_start <= gen_end <= {length}, "
                             f"got gen_start={start.tolist()}, gen_end={end.tolist()}")
        state = torch.zeros(batch, STATE_COLUMNS, dtype=torch.int64)
        state[:, GEN_START] = start
        state[:, GEN_END] = end
        state[:, BLOCK_START] = start
        state[:, BLOCK_END] = start
        state[:, END_POS] = end
        state[:, SEED] = per_sequence_int64(seed, batch, "seed")
        conf = torch.full((batch, length), float("nan"), dtype=torch.float32)
        return cls(state.to(device), conf.to(device))

    def clone(self) -> "DecodeState":
        out = DecodeState(self.state.clone(), self.conf.clone())
        out._seen, out._seen_offset = self._seen.clone(), self._seen_offset.clone()
        return out

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

    def steps_without_progress(self) -> torch.Tensor:
        """[B] int64 on the device, no host synchronisation: steps each sequence has taken since it
        last committed a token (0 for a done sequence). Steps are counted by the state's OFFSET
        column, so calling this every step or every few steps gives the same count, except that a
        change is dated to the call that first sees it (the count never overstates a stall)."""
        key = self.state[:, _PROGRESS_COLUMNS]
        offset = self.state[:, OFFSET]
        moved = (key != self._seen).any(1)
        self._seen_offset = torch.where(moved, offset, self._seen_offset)
        self._seen = key
        return torch.where(self.done, torch.zeros_like(offset), offset - self._seen_offset)

    def stalled(self, patience: int = 64) -> bool:
        """One host synchronisation: has some unfinished sequence gone `patience` steps without
        committing a token (e.g. its logits are NaN at every step)? The guard for a
        `while not state.all_done()` loop."""
        if not (isinstance(patience, int) and not isinstance(patience, bool) and patience >= 1):
            raise ValueError(f"DecodeState.stalled: patience must be an int >= 1, got {patience!r}")
        return bool((self.steps_without_progress() >= patience).any())
