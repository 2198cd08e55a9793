"""float64 reference of `speculative_verify` (docs/speculative_verify.md): the executable spec.

`speculative_verify_reference(...)` takes the op's arguments and returns `(accepted, emitted,
margin)`: the op's two outputs and, per sequence, the smallest distance of any decision it took
from its threshold (acceptance: |u·q(t) − p(t)| relative to the larger side; argmax: the gap between
the two best keys). Backends compute in float32, so tests compare only sequences whose margin is
clear of rounding. The uniforms are the op's own Philox draws (exact float32 values), so the
reference and every backend see the very same noise.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .philox import bits_to_uniform, philox4x32_10

__all__ = ["VERIFY_ROW_STREAM", "VERIFY_ACCEPT_INDEX", "verify_uniforms", "speculative_verify_reference"]

VERIFY_ROW_STREAM = 0x80000000   # or-ed into counter word 1 (the row index)
VERIFY_ACCEPT_INDEX = 0xFFFFFFFF  # counter word 0 of a row's acceptance uniform


def verify_uniforms(seed: int, offset: int, v, k: int) -> np.ndarray:
    """The op's uniforms for vocab indices `v` (or VERIFY_ACCEPT_INDEX) at row `k`: Philox4x32-10 with
    counter (v, 0x80000000 | k, offset lo, offset hi), key (seed lo, seed hi), first word."""
    s, o = int(seed) & (2**64 - 1), int(offset) & (2**64 - 1)
    r0, _, _, _ = philox4x32_10(v, VERIFY_ROW_STREAM | k, o & 0xFFFFFFFF, o >> 32, s & 0xFFFFFFFF, s >> 32)
    return bits_to_uniform(r0)


def _softmax(row: torch.Tensor, temperature: float):
    """float64 softmax of row / T, or None for an invalid row (NaN, +inf, or all -inf)."""
    if torch.isnan(row).any() or (row == math.inf).any() or (row == -math.inf).all():
        return None
    return torch.softmax(row / temperature, dim=0)


def _argmax_gap(keys: torch.Tensor):
    """(first index of the maximum, gap to the runner-up) of finite-or--inf keys."""
    arg = int(torch.argmax(keys))  # first index on ties
    best = float(keys[arg])
    rest = keys.clone()
    rest[arg] = -math.inf
    second = float(rest.max()) if rest.numel() > 0 else -math.inf
    return arg, (best - second if second > -math.inf else math.inf)


def _sample(p: torch.Tensor, q, seed, offset, k):
    """Gumbel-max over max(p - q, 0) (q given) or p; a residual without positive entries uses p."""
    V = p.numel()
    u = torch.from_numpy(verify_uniforms(seed, offset, np.arange(V, dtype=np.uint64), k).astype(np.float64))
    g = -torch.log(-torch.log(u))
    if q is not None:
        r = torch.clamp(p - q, min=0.0)
        if (r > 0).any():
            return _argmax_gap(torch.where(r > 0, torch.log(r) + g, torch.full_like(r, -math.inf)))
    return _argmax_gap(torch.where(p > 0, torch.log(p) + g, torch.full_like(p, -math.inf)))


def _draft_dist(row: torch.Tensor, temperature: float, is_logits: bool) -> torch.Tensor:
    if is_logits:
        q = _softmax(row, temperature)
        return q if q is not None else torch.zeros_like(row)
    return torch.where(torch.isfinite(row) & (row >= 0), row, torch.zeros_like(row))


def speculative_verify_reference(target_logits, draft_tokens, draft_probs, draft_lens, seed, offset,
                                 temperature: float = 0.0, draft_is_logits: bool = False):
    tl = target_logits.detach().cpu().double()
    dq = draft_probs.detach().cpu().double()
    toks = draft_tokens.detach().cpu().tolist()
    lens, seeds, offs = (t.detach().cpu().tolist() for t in (draft_lens, seed, offset))
    B, K1, V = tl.shape
    accepted = torch.zeros(B, dtype=torch.int64)
    emitted = torch.full((B, K1), -1, dtype=torch.int64)
    margin = torch.full((B,), math.inf, dtype=torch.float64)
    greedy = not temperature > 0
    for b in range(B):
        n = lens[b]
        k = 0
        while True:
            row = tl[b, k]
            t = toks[b][k] if k < n else -1
            if greedy:
                if torch.isnan(row).any() or (row == math.inf).any() or (row == -math.inf).all():
                    emitted[b, k] = -1
                    break
                best, gap = _argmax_gap(row)
                margin[b] = min(margin[b], gap)
                emitted[b, k] = best
                if k == n or t != best:
                    break
                k += 1
                continue
            p = _softmax(row, temperature)
            if p is None:
                emitted[b, k] = -1
                break
            if k == n:
                tok, gap = _sample(p, None, seeds[b], offs[b], k)
                emitted[b, k], margin[b] = tok, min(margin[b], gap)
                break
            q = _draft_dist(dq[b, k], temperature, draft_is_logits)
            pt, qt = (float(p[t]), float(q[t])) if 0 <= t < V else (0.0, 0.0)
            u = float(verify_uniforms(seeds[b], offs[b], VERIFY_ACCEPT_INDEX, k))
            lhs = u * qt
            side = max(lhs, pt)
            margin[b] = min(margin[b], abs(lhs - pt) / side if side > 0 else math.inf)
            if lhs < pt:
                emitted[b, k] = t
                k += 1
                continue
            tok, gap = _sample(p, q, seeds[b], offs[b], k)
            emitted[b, k], margin[b] = tok, min(margin[b], gap)
            break
        accepted[b] = k
    return accepted, emitted, margin
