"""Float64 reference of `torch.ops.dllm.select`, the stateless selection step (docs/select.md).

Same argument names as the op. Per sequence b: the candidates are the positions p in
`[start_b, end_b)` (bounds; default the whole row) where `candidates[b, p]` (default: all) and
the logits hold row `p - shift - row_start[b]`; each such row's statistics are computed exactly
as `fused_unmask_reference` computes them (`row_statistics`, Philox noise keyed by `seed[b]`,
`offset[b]`, p); invalid rows (NaN / +inf) are read but never candidates. The rule then runs
over the candidates with `[start_b, end_b)` as its block and that sequence's row of `params`.
Returns `(x0, conf, transfer)`; `x` is written (at the chosen positions) only with `commit`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .philox import noise_uniform, rank_uniform
from .fused_unmask import RULE_FILTER, RULE_TOPK, _id_list, row_statistics, select_positions

__all__ = ["select_reference"]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError("select_reference: " + msg)


def select_reference(logits, x, candidates=None, params=None, bounds=None, row_start=None, seed=None,
                     offset=None, gumbel_u=None, rank_u=None, prev_conf=None, suppress_ids=None,
                     zero_conf_ids=None, filter_w1=None, filter_b1=None, filter_w2=None, filter_b2=None, *,
                     rule=1, conf_kind=0, shift=False, graded=False, random_remasking=False, commit=False):
    from ..select_params import SELECT_PARAM_COLUMNS, SELECT_PARAM_DEFAULTS

    _check(logits.dim() == 3, f"logits must be [B, R, V], got {tuple(logits.shape)}")
    B, R, V = logits.shape
    _check(x.dim() == 2 and x.shape[0] == B and x.dtype == torch.int64, "x must be [B, L] int64")
    L = x.shape[1]
    pack = (params.detach().cpu().to(torch.float64) if params is not None
            else torch.tensor([SELECT_PARAM_DEFAULTS] * B, dtype=torch.float64))
    _check(tuple(pack.shape) == (B, len(SELECT_PARAM_COLUMNS)), "params must be [B, P]")
    filt = None
    if filter_w1 is not None:
        filt = tuple(t.detach().to("cpu", torch.float64) for t in (filter_w1, filter_b1, filter_w2, filter_b2))
    _check(rule != RULE_FILTER or filt is not None, "rule 4 (learned filter) needs filter_w1/b1/w2/b2")
    sup, zero = _id_list(suppress_ids), _id_list(zero_conf_ids)

    logits_c = logits.detach().cpu()
    cand_c = candidates.detach().cpu() if candidates is not None else torch.ones(B, L, dtype=torch.bool)
    bounds_c = bounds.detach().cpu().tolist() if bounds is not None else [[0, L]] * B
    starts = row_start.detach().cpu().tolist() if row_start is not None else [0] * B
    seeds = seed.detach().cpu().tolist() if seed is not None else [0] * B
    offsets = offset.detach().cpu().tolist() if offset is not None else [0] * B
    x0 = x.detach().cpu().clone()
    conf_out = (prev_conf.detach().cpu().clone() if prev_conf is not None
                else torch.full((B, L), float("nan"), dtype=torch.float32))
    transfer = torch.zeros(B, L, dtype=torch.bool)
    x_c = x.detach().cpu().clone()
    for b in range(B):
        kw = dict(zip(SELECT_PARAM_COLUMNS, pack[b].tolist()))
        kw.update(rule=int(rule), graded=bool(graded), window=int(kw["window"]))
        start, end = (int(v) for v in bounds_c[b])
        conf, pos_seen = {}, []
        for p in range(start, end):
            r = p - (1 if shift else 0) - int(starts[b])
            if not (bool(cand_c[b, p]) and 0 <= r < R):
                continue
            u = None
            if kw["temperature"] > 0.0:
                u = (gumbel_u[b, r] if gumbel_u is not None else
                     noise_uniform(seeds[b], offsets[b], np.arange(V, dtype=np.uint64), p))
            st = row_statistics(logits_c[b, r], temperature=kw["temperature"], uniforms=u, conf_kind=int(conf_kind),
                                suppress_ids=sup, zero_conf_ids=zero)
            if st.valid:
                x0[b, p] = st.x0
            conf[p] = st.conf if st.valid else math.nan
            conf_out[b, p] = float(np.float32(conf[p]))
            pos_seen.append(p)
        cands = [p for p in pos_seen if not math.isnan(conf[p])]
        if random_remasking and rule in (RULE_TOPK, RULE_FILTER):
            rank_key = {p: float(rank_u[b, p]) if rank_u is not None else float(rank_uniform(seeds[b], offsets[b], p))
                        for p in cands}
        else:
            rank_key = conf
        buffer = [float(v) for v in conf_out[b].tolist()]
        k = min(int(kw["k"]), len(cands))
        for p in select_positions(int(rule), cands, conf, rank_key, k, (start, end), kw, filt, buffer):
            transfer[b, p] = True
            if commit:
                x_c[b, p] = x0[b, p]
    if commit:
        x.copy_(x_c.to(x.device))
    return x0.to(x.device), conf_out.to(x.device), transfer.to(x.device)
