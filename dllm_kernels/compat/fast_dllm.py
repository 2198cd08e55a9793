"""Drop-ins for Fast-dLLM's selection helpers, `get_transfer_index` and `get_transfer_index_dynamic`.

Same signatures, same returns `(x0, transfer_index)`, same decisions at temperature 0, quirks
included (docs/compat.md): x0 = x off `mask_index`; the confidence is the float64 probability of
x0, -inf off the mask; with `threshold` every masked position is ranked, the top one always
kept and the others kept when >= threshold; a `num_transfer_tokens` above a row's masked count
marks that many positions, the extra ones where the confidence is -inf (their x0 is x, so the
commit changes nothing there); `remasking="random"` ranks by `torch.rand((B, L))` drawn from
torch's generator exactly as the public code draws it. The factor variant commits the whole
ranking when only its last entry fails `c >= 1 - factor / (n + 1)`, as the public loop does.
At temperature > 0, x0 is a Gumbel-max sample with Philox noise: the public distribution, not
its draws.
"""
from __future__ import annotations

import torch

from ._confidence import TOL, check_logits, check_mask, exact_key, predict, softmax_at
from ._counts import per_sequence_counts, topk_rows
from .llada import get_num_transfer_tokens

__all__ = ["get_num_transfer_tokens", "get_transfer_index", "get_transfer_index_dynamic"]

_REMASKING = ("low_confidence", "random")


def _confidence(op, logits, temperature, remasking, mask_index, x, near_critical=None):
    """x0 and the public confidence key: float64 probability (or float32 uniforms), -inf off the mask."""
    check_logits(op, logits, x)
    mask = check_mask(op, "mask_index", mask_index, x.shape)
    if remasking not in _REMASKING:
        raise NotImplementedError(f"{op}: remasking must be one of {_REMASKING}, got {remasking!r}")
    x0, approx = predict(logits, x, mask, temperature=temperature)
    if remasking == "random":
        draws = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)
        return x0, mask, torch.where(mask, draws, -float("inf"))
    key = exact_key(logits, x0, approx, mask, torch.float64,
                    lambda rows, at: softmax_at(rows, at, torch.float64), near_critical)
    return x0, mask, key


def get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
    """Fast-dLLM's `get_transfer_index`: `(x0, transfer_index)` for one step."""
    op = "get_transfer_index"
    near = None
    if threshold is not None:
        threshold = float(threshold)
        near = lambda v: (v - threshold).abs() <= TOL  # noqa: E731
    x0, mask, conf = _confidence(op, logits, temperature, remasking, mask_index, x, near)
    B, L = x0.shape
    if threshold is None:
        return x0, topk_rows(conf, per_sequence_counts(op, "num_transfer_tokens", num_transfer_tokens, B, L))
    # Threshold path: every masked position ranked, the first always kept.
    transfer = torch.zeros_like(mask)
    for j, n in enumerate(mask.sum(dim=1).tolist()):
        _, idx = torch.topk(conf[j], k=n)
        transfer[j, idx] = True
        rest = idx[1:]
        transfer[j, rest[conf[j, rest] < threshold]] = False
    return x0, transfer


def _factor_thresholds(factor: float, n: int, dtype) -> torch.Tensor:
    """1 - factor / (m + 1) for m = 1..n in Python floats as the public code forms them, the first -1."""
    values = [1 - factor / (m + 1) for m in range(1, n + 1)]
    values[0] = -1
    return torch.tensor(values, dtype=dtype)


def _near_factor_thresholds(factor: float, length: int):
    def near(v):
        m = factor / (1 - v).clamp(min=1e-300) - 1  # the rank whose threshold equals v
        out = torch.zeros_like(v, dtype=torch.bool)
        for mm in (m.floor(), m.ceil()):
            ok = (mm >= 2) & (mm <= length)
            out |= ok & ((v - (1 - factor / (mm.clamp(min=1) + 1))).abs() <= TOL)
        return out
    return near


def get_transfer_index_dynamic(logits, temperature, remasking, mask_index, x, num_transfer_tokens, factor=1):
    """Fast-dLLM's `get_transfer_index_dynamic` (the factor rule): `(x0, transfer_index)`.

    `num_transfer_tokens` is ignored, as in the public code. A sequence with no masked position
    commits nothing (the public loop fails on it with an IndexError)."""
    op = "get_transfer_index_dynamic"
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 0:
        raise ValueError(f"{op}: factor must be a number >= 0, got {factor!r}")
    factor = float(factor)
    x0, mask, conf = _confidence(op, logits, temperature, remasking, mask_index, x,
                                 _near_factor_thresholds(factor, x.shape[1]))
    transfer = torch.zeros_like(mask)
    for j, n in enumerate(mask.sum(dim=1).tolist()):
        if n == 0:
            continue
        ranked = torch.sort(conf[j][mask[j]], descending=True).values
        fails = (ranked < _factor_thresholds(factor, n, ranked.dtype).to(ranked.device)).nonzero()
        top = int(fails[0, 0]) if fails.numel() else n - 1
        if top == 0 or top == n - 1:  # the public loop's count: all n when only the last fails
            top += 1
        _, idx = torch.topk(conf[j], k=top)
        transfer[j, idx] = True
    return x0, transfer
