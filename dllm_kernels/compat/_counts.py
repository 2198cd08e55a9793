"""Per-sequence token counts as the public helpers take them, and their per-row `torch.topk`."""
from __future__ import annotations

import numbers

import torch


def per_sequence_counts(op: str, name: str, value, batch: int, length: int) -> list:
    """A [B] or [B, 1] tensor, a sequence of B ints, or one int -> B Python ints in [0, length]."""
    if value is None:
        raise ValueError(f"{op}: {name} is required (tokens to commit per sequence)")
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int or one count per sequence, got a bool")
    if isinstance(value, numbers.Integral):
        counts = [int(value)] * batch
    else:
        t = torch.as_tensor(value)
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise TypeError(f"{op}: {name} must hold integers, got {t.dtype}")
        if t.numel() != batch or (t.dim() == 2 and t.shape[1] != 1) or t.dim() > 2:
            raise ValueError(f"{op}: {name} must be an int, [B] or [B, 1] with B = {batch}, got shape {tuple(t.shape)}")
        counts = [int(v) for v in t.reshape(-1).tolist()]
    for c in counts:
        if not 0 <= c <= length:
            raise ValueError(f"{op}: {name} must be in [0, L = {length}], got {c}")
    return counts


def topk_rows(conf: torch.Tensor, counts) -> torch.Tensor:
    """[B, L] bool: row j marks `torch.topk(conf[j], counts[j])`, as the public loops do (a count
    above the row's candidates also marks some -inf positions, torch choosing which)."""
    transfer = torch.zeros(conf.shape, dtype=torch.bool, device=conf.device)
    for j, k in enumerate(counts):
        _, idx = torch.topk(conf[j], k=k)
        transfer[j, idx] = True
    return transfer
