"""The public decoders' confidence, computed by `select` and made exact where a decision depends on it.

The public helpers compute `softmax(logits)[x0]` in some dtype (float64 for Fast-dLLM, the logits'
dtype for LLaDA and SGLang) and rank it with `torch.topk` / `argmax`, whose choice among equal
values is an implementation detail of torch. `select` computes the same confidence in one fused
pass, in float32. To give the public decisions exactly, the float32 values are used only where
they cannot change a decision, and the public formula is recomputed in torch for the few rows
where they could:

- in float64 / float32 (values not rounded further): rows within the error bound of another
  candidate (a tie or near-tie whose order float32 cannot settle) or within `TOL` of a decision
  constant (a threshold);
- in bfloat16 / float16: rows within a relative `TOL` of a rounding midpoint of that dtype
  (elsewhere the float32 value rounds to the public value exactly, ties included).

The returned key then has the public confidence's order pattern and its side of every decision
constant, so the same torch calls on it (`topk`, `argmax`, `>`) give the public result, ties
included: torch's choice among equal values depends only on comparisons.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..select import select

# Bound on |select's float32 confidence - the public value|, with a wide margin: relative TOL plus
# ABS_TOL (measured: below 1e-6 relative; a negative entropy near 0 errs by ~1e-7 absolute).
TOL = 1e-5
ABS_TOL = 1e-6

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_logits(op: str, logits, x: torch.Tensor, *, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"{op}: {name} must be a [B, L, V] tensor")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float16 or bfloat16, got {logits.dtype}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or tuple(x.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"{op}: x must be [B, L] = {tuple(logits.shape[:2])}, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def check_mask(op: str, name: str, mask, shape) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must be a bool tensor of shape {tuple(shape)}")
    return mask.bool()


def predict(logits: torch.Tensor, x: torch.Tensor, candidates: torch.Tensor, *, temperature: float = 0.0,
            conf: str = "prob", suppress_ids=None, seed=None):
    """x0 (= x off candidates) and select's float32 confidence (NaN off candidates) in one pass.

    At temperature > 0, x0 is a Gumbel-max sample with Philox noise (seeds drawn from torch's
    generator unless `seed` is given); the confidence comes from the clean logits."""
    r = select(logits, x.to(torch.int64), candidates, rule="topk", k=0, conf=conf, temperature=float(temperature),
               suppress_ids=suppress_ids, seed=seed)
    return r.x0, r.conf


def near_ties(approx: torch.Tensor, cand: torch.Tensor, slack: float = 0.0) -> torch.Tensor:
    """Candidates within 2 * (TOL * |value| + ABS_TOL + slack) of another candidate of the same row."""
    vals = torch.where(cand, approx.to(torch.float64), torch.tensor(-float("inf"), dtype=torch.float64,
                                                                     device=approx.device))
    srt, order = torch.sort(vals, dim=1, descending=True)
    close = (srt[:, :-1] - srt[:, 1:]).abs() <= 2 * (TOL * srt[:, :-1].abs() + ABS_TOL + slack)
    close &= torch.isfinite(srt[:, 1:])
    flag_sorted = torch.zeros_like(srt, dtype=torch.bool)
    flag_sorted[:, :-1] |= close
    flag_sorted[:, 1:] |= close
    return torch.zeros_like(cand).scatter(1, order, flag_sorted) & cand


def exact_key(logits: torch.Tensor, x0: torch.Tensor, approx: torch.Tensor, cand: torch.Tensor,
              dtype: torch.dtype, public_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              near_critical: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """[B, L] confidence in `dtype`, -inf off `cand`, decision-equivalent to the public values.

    `public_rows(rows [n, V], x0 [n])` is the public formula on gathered logits rows (its dtype
    `dtype`); `near_critical(values)` flags values within TOL of a decision constant (full
    precision dtypes only: rounded values are compared exactly)."""
    key = torch.full(x0.shape, -float("inf"), dtype=dtype, device=x0.device)
    if dtype in (torch.float16, torch.bfloat16):
        unsure = rounding_unsure(approx, dtype) & cand
    else:
        unsure = near_ties(approx, cand)
        if near_critical is not None:
            unsure |= near_critical(approx.to(torch.float64)) & cand
    key = torch.where(cand, approx.to(dtype), key)
    if bool(unsure.any()):
        b, p = unsure.nonzero(as_tuple=True)
        key[b, p] = public_rows(logits[b, p], x0[b, p]).to(dtype)
    return key


def rounding_unsure(approx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Values within a relative TOL of a rounding midpoint of `dtype` (their rounded value is not
    settled). Relative: select's error on a probability is relative (that of exp(l - lse))."""
    delta = TOL * approx.abs()
    return (approx - delta).to(dtype) != (approx + delta).to(dtype)


def softmax_at(rows: torch.Tensor, x0: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """softmax(rows, in `dtype` when given)[x0]: the public `gather(softmax(logits), x0)` on some rows."""
    if dtype is not None:
        rows = rows.to(dtype)
    return torch.softmax(rows, dim=-1).gather(-1, x0[:, None])[:, 0]
