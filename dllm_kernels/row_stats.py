"""`row_stats`: mergeable partial statistics of logits rows, for rows split across processes
(a vocabulary-parallel LM head) or computed chunk by chunk (an LM head fused with the pass).

Each slice of a row's vocabulary yields a small partial (max and its global argmax, sum of exp
relative to that max, margin and entropy terms, the Gumbel-max winner with noise keyed by the
global token id); `select(..., row_stats=...)` and `fused_unmask(..., row_stats=...)` merge the
partials of W slices in order and run the same policy stage as from whole logits. Layout and
merge rule: docs/row_stats.md.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .policy import CONF_KINDS

# Column names of a partial, in order, and the most partials one row merges, as the native library
# defines them (include/dllm/row_partial.h).
_names, MAX_MERGED_PARTIALS = torch.ops.dllm.row_stats_layout()
ROW_STATS_COLUMNS = tuple(_names)


def row_positions(batch: int, rows: int, *, row_start: Optional[torch.Tensor] = None, shift: bool = False,
                  device=None) -> torch.Tensor:
    """[B, R] int64: the sequence position each logits row predicts (row_start[b] + r, + 1 with
    `shift`), the key of its sampling noise. Device ops only (no sync)."""
    pos = torch.arange(rows, dtype=torch.int64, device=device).expand(batch, rows)
    if row_start is not None:
        pos = pos + row_start.to(device=device, dtype=torch.int64).view(-1, 1)
    return (pos + int(bool(shift))).contiguous()


def logits_or_row_stats(op: str, logits, row_stats, vocab_size, backend: str):
    """The Python checks of `row_stats=` / `vocab_size=` (select, fused_unmask): the logits to pass
    the op, a [B, R, 0] stand-in when only partials are given (the op reads B and R from it)."""
    if row_stats is None:
        if vocab_size is not None:
            raise ValueError(f"{op}: vocab_size goes with row_stats")
        return logits
    if not isinstance(row_stats, torch.Tensor) or row_stats.dim() != 4:
        raise ValueError(f"{op}: row_stats must be a 4-D tensor [W, B, R, C] (dllm_kernels.row_stats)")
    if vocab_size is None:
        raise ValueError(f"{op}: row_stats needs vocab_size (the whole vocabulary)")
    if backend == "reference":
        raise ValueError(f"{op}: the reference backend reads logits; row_stats needs 'auto' or 'triton'")
    if logits is None:
        logits = row_stats.new_empty((row_stats.shape[1], row_stats.shape[2], 0), dtype=torch.float32)
    return logits


def row_temperatures(temperature, batch: int, device) -> torch.Tensor:
    """A temperature as the statistics passes take it: a number, or a tensor of B (or 1) values,
    -> [B] float64 on `device`."""
    if not isinstance(temperature, torch.Tensor):
        return torch.full((batch,), float(temperature), dtype=torch.float64, device=device)
    if temperature.numel() not in (1, batch):
        raise ValueError(f"temperature must be a number or hold B = {batch} values (one per sequence), "
                         f"got shape {list(temperature.shape)}")
    return temperature.to(device=device, dtype=torch.float64).reshape(-1).expand(batch).contiguous()


def per_row_inputs(batch: int, device, temperature, suppress_ids):
    """The ops' forms of a temperature (row_temperatures; None stays None) and of an id list (a
    sequence -> int64 tensor, None when empty), shared by row_stats and lm_head_row_stats."""
    if temperature is not None:
        temperature = row_temperatures(temperature, batch, device)
    if suppress_ids is not None and not isinstance(suppress_ids, torch.Tensor):
        ids = [suppress_ids] if isinstance(suppress_ids, int) else [int(i) for i in suppress_ids]
        suppress_ids = torch.tensor(ids, dtype=torch.int64, device=device) if ids else None
    return temperature, suppress_ids


def row_stats(logits: torch.Tensor, positions: torch.Tensor, *, seed: Optional[torch.Tensor] = None,
              offset: Optional[torch.Tensor] = None, temperature: Union[float, torch.Tensor, None] = None,
              gumbel_u: Optional[torch.Tensor] = None,
              suppress_ids: Union[Sequence[int], torch.Tensor, None] = None, conf: str = "prob",
              vocab_start: int = 0) -> torch.Tensor:
    """Partial statistics [B, R, len(ROW_STATS_COLUMNS)] float64 of logits [B, R, V_slice], the
    slice of the vocabulary starting at global id `vocab_start`.

    positions: [B, R] int64, each row's sequence position (noise key; < 0: row not read, its
    partial is empty). seed/offset: [B] int64 Philox keys; temperature: a number or [B] (> 0
    samples Gumbel-max with noise keyed by the global token id, so slices draw what the whole row
    would). suppress_ids are global ids (those outside the slice are ignored). `conf` picks which
    terms are accumulated ("margin" needs the second maximum, "neg_entropy" the entropy sum).
    """
    if conf not in CONF_KINDS:
        raise ValueError(f"row_stats: conf must be one of {sorted(CONF_KINDS)}, got {conf!r}")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("row_stats: logits must be a 3-D tensor [B, R, V]")
    temperature, suppress_ids = per_row_inputs(logits.shape[0], logits.device, temperature, suppress_ids)
    return torch.ops.dllm.row_stats(logits, positions, seed, offset, temperature, gumbel_u, suppress_ids,
                                    CONF_KINDS[conf], int(vocab_start))
