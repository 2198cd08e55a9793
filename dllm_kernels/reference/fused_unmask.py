"""Float64 reference of `torch.ops.dllm.fused_unmask`: the executable spec every backend is tested against.

`fused_unmask_reference` takes exactly the op's arguments (docs/fused_unmask.md, "Schema"), with
the same names and order, so that one call drives both (numbers in the per-sequence float64
pack `params`, read row by row); it mutates `x`, `conf` and `state` in place
as the op does and returns `(x0, transfer, window_stats)`. It is written for clarity, not speed:
one sequence at a time, plain loops over positions, vectorised over the vocabulary only.

Numerics. Every statistic is computed in float64 from the logits (upcast from their dtype):
`lse`, the first-index argmax, the Gumbel noise `g = -log(-log u)` (from the same float32-exact
Philox uniforms as the kernels, `philox.py`), `pprob`, `conf`. The selection rules, AdaBlock,
EoTP, the learned filter and the window statistics all work on these float64 values; thresholds
are compared as Python floats (float64). `conf` is stored into the float32 buffer (that rounding is
the only one), and positions not read this step are seen through that buffer (learned-filter
features of decoded positions). The native backends accumulate in float32, so decisions may differ
where a confidence lies within ~1e-6 of a threshold or two confidences tie within that margin
(docs/policies.md §1); `row_statistics(...).noisy_gap` lets tests find and exclude near-ties of the argmax.

Where we deliberately differ from the public decoders (docs/policies.md):
- factor rule (Fast-dLLM `get_transfer_index_dynamic`): we commit exactly the longest leading run
  of the descending confidences with c(r) >= 1 - f / (r + 1) (r >= 2, c(1) always taken). The public
  code, when the first failing element is the last one, commits everything (its `top_i == len - 1`
  branch adds one); we do not copy that off-by-one.
- `zero_conf_ids` (LLaDA `confidence_eos_eot_inf`): applied to every listed id, at every step (the
  public code applies it inconsistently).
- ties: every ranking (top-k, argmax of the block, AdaBlock delimiter, EoTP end candidate) takes the
  lower position first (`torch.topk` leaves this unspecified); vocab argmax takes the lowest id.
- EoTP never truncates: it records END_POS and fills the tail with `eos` (docs, step 7).

Resolutions of points the contract leaves open (each matches csrc/include/dllm/policy.h unless
said otherwise):
- The AdaBlock look-ahead length is `floor(float32(block_window_fraction) * float32(GEN_END -
  GEN_START))` with the product rounded to float32, as every kernel (C++, CUDA, Triton) forms it.
  The contract fixes float32 so all backends agree to the position; it can differ by one from a
  float64 product where that sits within float32 rounding of an integer (0.29 * 100: 29, not 28).
- `random_remasking` replaces the ranking key of the top-k part only (rule 0, and the top-k part of
  rule 4); threshold, factor and LocalLeap ignore it. Keys rank descending, lower position first.
- The learned-filter feature of an in-block position that is not read this step (decoded, or
  masked but its row outside [0, R)) is the conf buffer's current value (0 when not finite).
- A sequence whose block cannot open (`BLOCK_END >= END_POS` with `BLOCK_REMAINING == 0`) gets
  `DONE = 1` and its sanitised state is stored, but STEP and OFFSET do not advance.
- Early stop looks at the block clipped to END_POS, `[BLOCK_START, min(BLOCK_END, END_POS))`, both
  for "no masked position left" and for "holds an eos".
- `window_stats` variance is the population variance (divide by the count).
- `transfer` is true for every position the rule selected (step 6: even when a valid row predicts
  `mask_id`, so the token does not change and the position stays masked) and for every position
  whose token EoTP / early stop changed (filling eos over an eos is not a write).
- `row_statistics` returns `x0 = -1` for an invalid row (it does not know `mask_id`); the op writes
  `mask_id` there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from .philox import noise_uniform, rank_uniform

__all__ = [
    "RULES", "CONF_KINDS", "RULE_TOPK", "RULE_THRESHOLD", "RULE_FACTOR", "RULE_LOCALLEAP", "RULE_FILTER",
    "CONF_PROB", "CONF_MARGIN", "CONF_NEG_ENTROPY", "STATE_COLUMN_NAMES", "STATE_COLUMNS",
    "GEN_START", "GEN_END", "BLOCK_START", "BLOCK_END", "STEP", "BLOCK_MASKED", "BLOCK_REMAINING",
    "END_POS", "DONE", "SEED", "OFFSET", "RowStats", "row_statistics", "fused_unmask_reference",
]

RULE_TOPK, RULE_THRESHOLD, RULE_FACTOR, RULE_LOCALLEAP, RULE_FILTER = range(5)
RULES = {"topk": RULE_TOPK, "threshold": RULE_THRESHOLD, "factor": RULE_FACTOR,
         "localleap": RULE_LOCALLEAP, "filter": RULE_FILTER}
CONF_PROB, CONF_MARGIN, CONF_NEG_ENTROPY = range(3)
CONF_KINDS = {"prob": CONF_PROB, "margin": CONF_MARGIN, "neg_entropy": CONF_NEG_ENTROPY}

STATE_COLUMN_NAMES = ("GEN_START", "GEN_END", "BLOCK_START", "BLOCK_END", "STEP", "BLOCK_MASKED",
                      "BLOCK_REMAINING", "END_POS", "DONE", "SEED", "OFFSET")
(GEN_START, GEN_END, BLOCK_START, BLOCK_END, STEP, BLOCK_MASKED, BLOCK_REMAINING, END_POS, DONE,
 SEED, OFFSET) = range(len(STATE_COLUMN_NAMES))
STATE_COLUMNS = len(STATE_COLUMN_NAMES)

_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# Per-row statistics (docs step 3)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowStats:
    """Statistics of one logits row. For an invalid row: valid=False, x0=-1, everything else NaN."""

    x0: int            # argmax of the (noisy) logits, lowest id on ties
    pprob: float       # exp(l[x0] - lse): clean probability of x0
    conf: float        # by conf_kind, then 0 when x0 is in zero_conf_ids
    lse: float         # log-sum-exp of the clean (suppressed) logits
    valid: bool
    noisy_gap: float   # best minus second-best noisy logit (0: tie, inf: a single finite value)


def _id_list(ids) -> list:
    if ids is None:
        return []
    if isinstance(ids, torch.Tensor):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]


def row_statistics(row_f64, *, temperature: float, uniforms=None, conf_kind: int = CONF_PROB,
                   suppress_ids: Optional[Iterable[int]] = None,
                   zero_conf_ids: Optional[Iterable[int]] = None) -> RowStats:
    """One logits row [V] -> RowStats, all in float64.

    `uniforms` [V] (float32 values in (0, 1), tensor or array) is required when temperature > 0:
    the Gumbel noise is g = -log(-log u) and x0 = argmax(l + T * g); the confidence always comes
    from the clean logits.
    """
    l = torch.as_tensor(row_f64).detach().to(device="cpu", dtype=torch.float64).reshape(-1).clone()
    V = l.numel()
    for i in _id_list(suppress_ids):
        l[i] = -math.inf  # suppression comes before everything, validity included
    if bool(torch.isnan(l).any()) or bool((l == math.inf).any()) or bool((l == -math.inf).all()):
        return RowStats(x0=-1, pprob=_NAN, conf=_NAN, lse=_NAN, valid=False, noisy_gap=_NAN)

    m1 = float(l.max())
    lse = m1 + math.log(float(torch.exp(l - m1).sum()))

    if temperature > 0.0:
        if uniforms is None:
            raise ValueError("row_statistics: uniforms are required when temperature > 0")
        u = torch.as_tensor(np.asarray(uniforms, dtype=np.float32) if not isinstance(uniforms, torch.Tensor)
                            else uniforms).to(device="cpu", dtype=torch.float64).reshape(-1)
        if u.numel() != V:
            raise ValueError(f"row_statistics: need {V} uniforms, got {u.numel()}")
        noisy = l + float(temperature) * -torch.log(-torch.log(u))
    else:
        noisy = l
    best = float(noisy.max())
    x0 = int(torch.nonzero(noisy == best)[0, 0])  # first index among the maxima
    rest = noisy.clone()
    rest[x0] = -math.inf
    second = float(rest.max())
    noisy_gap = best - second if second != -math.inf else math.inf

    logq = l - lse
    pprob = math.exp(float(logq[x0]))
    if conf_kind == CONF_PROB:
        conf = pprob
    elif conf_kind == CONF_MARGIN:
        top2 = torch.topk(l, 2).values  # a shared maximum appears twice: p2 == p1
        conf = math.exp(float(top2[0]) - lse) - math.exp(float(top2[1]) - lse)
    elif conf_kind == CONF_NEG_ENTROPY:
        finite = l != -math.inf  # 0 * log 0 = 0
        conf = float((torch.exp(logq[finite]) * logq[finite]).sum())
    else:
        raise ValueError(f"row_statistics: conf_kind must be 0..2, got {conf_kind}")
    if x0 in _id_list(zero_conf_ids):
        conf = 0.0
    return RowStats(x0=x0, pprob=pprob, conf=conf, lse=lse, valid=True, noisy_gap=noisy_gap)


# --------------------------------------------------------------------------------------------
# Per-sequence stage
# --------------------------------------------------------------------------------------------

def _clamp(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else (hi if v > hi else v)


def _load_state(row: list, L: int) -> dict:
    """Sanitise one state row: positions clamped into [0, L] and ordered, counts >= 0."""
    st = {}
    st["gen_start"] = _clamp(row[GEN_START], 0, L)
    st["gen_end"] = _clamp(row[GEN_END], st["gen_start"], L)
    st["block_start"] = _clamp(row[BLOCK_START], st["gen_start"], st["gen_end"])
    st["block_end"] = _clamp(row[BLOCK_END], st["block_start"], st["gen_end"])
    st["step"] = max(row[STEP], 0)
    st["block_masked"] = max(row[BLOCK_MASKED], 0)
    st["block_remaining"] = max(row[BLOCK_REMAINING], 0)
    st["end_pos"] = _clamp(row[END_POS], st["gen_start"], st["gen_end"])
    st["done"] = 1 if row[DONE] != 0 else 0
    st["seed"] = row[SEED]
    st["offset"] = row[OFFSET]
    return st


def _store_state(state_row: torch.Tensor, st: dict) -> None:
    values = [st["gen_start"], st["gen_end"], st["block_start"], st["block_end"], _wrap_int64(st["step"]),
              st["block_masked"], st["block_remaining"], st["end_pos"], st["done"], st["seed"],
              _wrap_int64(st["offset"])]
    state_row.copy_(torch.tensor(values, dtype=torch.int64))


def _wrap_int64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def topk_count(step: int, m: int, steps: int, n_cand: int) -> int:
    """k_i = m // n + (1 if i < m % n else 0) for i < n; every candidate once i >= n."""
    if step >= steps:
        return n_cand
    return min(m // steps + (1 if step < m % steps else 0), n_cand)


def _ranked(cands: list, key: dict) -> list:
    """Candidates by key descending, lower position first on ties."""
    return sorted(cands, key=lambda p: (-key[p], p))


def _sigmoid(z: float) -> float:
    return float(torch.sigmoid(torch.tensor(z, dtype=torch.float64)))


def select_positions(rule, cands, conf, rank_key, k, block, kw, filt, buffer) -> set:
    """The selection rule over the candidates of `block` = (start, end); returns the chosen
    positions. Shared by the stateful step below and the stateless `select_reference`.
    `k`: the top-k count (rules topk and filter); `buffer`: the conf seen by the learned filter
    at block positions that are not candidates; `kw`: the rule's parameters by name."""
    if not cands:
        return set()
    by_conf = _ranked(cands, conf)
    if rule in (RULE_TOPK, RULE_FILTER):
        chosen = set(_ranked(cands, rank_key)[:k])
        if rule == RULE_FILTER:
            w1, b1, w2, b2 = filt
            width = w1.shape[1]
            feat = torch.zeros(width, dtype=torch.float64)
            for j in range(width):
                p = block[0] + j
                if p < block[1]:
                    c = conf[p] if p in conf else buffer[p]
                    feat[j] = c if math.isfinite(c) else 0.0
            hidden = torch.relu(w1 @ feat + b1)
            out = w2 @ hidden + b2
            for p in cands:
                j = p - block[0]
                if j < width and _sigmoid(float(out[j])) > kw["filter_threshold"]:
                    chosen.add(p)
        return chosen
    if rule == RULE_THRESHOLD:
        return {p for p in cands if conf[p] >= kw["threshold"]} | {by_conf[0]}
    if rule == RULE_FACTOR:
        run = 1  # c(1) is always taken
        for r in range(2, len(by_conf) + 1):
            if conf[by_conf[r - 1]] >= 1.0 - kw["factor"] / (r + 1):
                run = r
            else:
                break
        return set(by_conf[:run])
    # LocalLeap: anchors fixed for the step; relaxed commits within `window` of an anchor.
    kappa, tau_rel, W = kw["anchor_threshold"], kw["relaxed_threshold"], kw["window"]
    anchors = [p for p in cands if conf[p] >= kappa]
    chosen = {by_conf[0]} | set(anchors)
    for p in cands:
        if p in chosen or not anchors:
            continue
        d = min(abs(p - a) for a in anchors)
        if d < 1 or d > W:
            continue
        thr = tau_rel + (kappa - tau_rel) * (d - 1) / W if kw["graded"] else tau_rel
        if conf[p] >= thr:
            chosen.add(p)
    return chosen


def _sequence_step(b, logits, xs, buffer, state_row, row_start, gumbel_u, rank_u, kw, filt,
                   x0_out, transfer, window_stats):
    """One step of one sequence (docs "One step, per sequence"). xs, buffer: python lists."""
    L = len(xs)
    R = logits.shape[1]
    mask_id, eos_id = kw["mask_id"], kw["eos_id"]
    st = _load_state([int(v) for v in state_row.tolist()], L)
    if st["done"]:
        return  # nothing read or written

    # 1. Block: open or opening, and the span of rows that may be read.
    gen_len = st["gen_end"] - st["gen_start"]
    w = int(math.floor(np.float32(kw["block_window_fraction"]) * np.float32(gen_len)))  # float32 product
    opening = st["block_remaining"] == 0
    if opening:
        s = st["block_end"]
        if s >= st["end_pos"]:
            st["done"] = 1
            _store_state(state_row, st)
            return
        remaining = st["end_pos"] - s
        n = min(kw["block_length"], remaining)
        w = min(w, remaining)
        span = (s, s + max(n, w if kw["adaptive_block"] else 0))
        default_end = s + n
    else:
        s = st["block_start"]
        span = (s, st["block_end"])
    window_end = min(s + w, st["end_pos"])

    # 2. Rows read: a pure function of x and the state before this step.
    rs = row_start
    shift = 1 if kw["shift"] else 0

    def row_of(p):
        return p - shift - rs

    read = [p for p in range(st["gen_start"], st["end_pos"])
            if xs[p] == mask_id and 0 <= row_of(p) < R and (kw["eotp"] or span[0] <= p < span[1])]

    # 3./4. Statistics of every read row; x0 and conf written for read positions only.
    x0, conf, pprob = {}, {}, {}
    for p in read:
        r = row_of(p)
        u = None
        if kw["temperature"] > 0.0:
            if gumbel_u is not None:
                u = gumbel_u[b, r]
            else:
                u = noise_uniform(st["seed"], st["offset"], np.arange(logits.shape[2], dtype=np.uint64), p)
        rs_ = row_statistics(logits[b, r], temperature=kw["temperature"], uniforms=u,
                             conf_kind=kw["conf_kind"], suppress_ids=kw["suppress_ids"],
                             zero_conf_ids=kw["zero_conf_ids"])
        x0[p] = rs_.x0 if rs_.valid else mask_id
        conf[p] = rs_.conf if rs_.valid else _NAN
        pprob[p] = rs_.pprob
        x0_out[b, p] = x0[p]
        buffer[p] = float(np.float32(conf[p]))
    valid = {p for p in read if not math.isnan(conf[p])}

    # 1 (cont.). Open the block, AdaBlock end chosen from the read window's delimiters.
    if opening:
        end = default_end
        if kw["adaptive_block"]:
            best_p = None
            for p in range(s, window_end):
                if p in valid and x0[p] in kw["delimiter_ids"]:
                    if best_p is None or pprob[p] > pprob[best_p]:
                        best_p = p
            if best_p is not None and pprob[best_p] >= kw["block_delta"]:
                end = best_p + 1
        st["block_start"], st["block_end"], st["step"] = s, end, 0
        st["block_masked"] = sum(xs[p] == mask_id for p in range(s, min(end, st["end_pos"])))

    # Window statistics over the read, valid positions of the look-ahead window.
    wc = [conf[p] for p in range(st["block_start"], window_end) if p in valid]
    if wc:
        mean = sum(wc) / len(wc)
        var = sum((c - mean) ** 2 for c in wc) / len(wc)
        window_stats[b] = torch.tensor([len(wc), mean, var], dtype=torch.float64).float()

    # 5. Candidates and the selection rule.
    bs, be = st["block_start"], st["block_end"]
    cands = [p for p in range(bs, be) if p in valid]
    if kw["random_remasking"]:
        if rank_u is not None:
            rank_key = {p: float(rank_u[b, p]) for p in cands}
        else:
            rank_key = {p: float(rank_uniform(st["seed"], st["offset"], p)) for p in cands}
    else:
        rank_key = conf
    k = topk_count(st["step"], st["block_masked"], kw["steps"], len(cands))
    chosen = select_positions(kw["rule"], cands, conf, rank_key, k, (bs, be), kw, filt, buffer)

    # 6. Commit (after selection: every rule saw the pre-step tokens).
    before = list(xs)
    for p in chosen:
        xs[p] = x0[p]

    def end_at(q_next):
        st["end_pos"] = min(st["end_pos"], q_next)
        for p in range(q_next, st["gen_end"]):
            xs[p] = eos_id

    # 7. EoTP.
    if kw["eotp"]:
        eos_committed = sorted(p for p in chosen if x0[p] == eos_id)
        if eos_committed:
            end_at(eos_committed[0] + 1)
        else:
            best_q = None
            for q in range(st["gen_start"], st["end_pos"]):
                if xs[q] == mask_id and q in valid and x0[q] == eos_id:
                    if best_q is None or conf[q] > conf[best_q]:
                        best_q = q
            if best_q is not None:
                xs[best_q] = eos_id
                end_at(best_q + 1)

    # 8. Early stop: the (END_POS-clipped) block is complete and holds an eos.
    stop = min(be, st["end_pos"])
    block_remaining = sum(xs[p] == mask_id for p in range(bs, stop))
    if kw["early_stop"] and block_remaining == 0 and any(xs[p] == eos_id for p in range(bs, stop)):
        end_at(be)

    # 9. Bookkeeping.
    for p in range(L):
        if p in chosen or xs[p] != before[p]:
            transfer[b, p] = True
    st["step"] += 1
    st["block_remaining"] = sum(xs[p] == mask_id for p in range(bs, min(be, st["end_pos"])))
    st["done"] = int(not any(xs[p] == mask_id for p in range(st["gen_start"], st["end_pos"])))
    st["offset"] += 1
    _store_state(state_row, st)


# --------------------------------------------------------------------------------------------
# The op
# --------------------------------------------------------------------------------------------

def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError("fused_unmask_reference: " + msg)


def _pack_rows(params, B: int) -> list:
    """Each sequence's numeric parameters {column: value} from the float64 pack (defaults if None),
    with the types the spec compares in: whole numbers as int, the rest as Python floats."""
    from ..fused_unmask_params import UNMASK_PARAM_COLUMNS, UNMASK_PARAM_DEFAULTS

    if params is None:
        return [dict(zip(UNMASK_PARAM_COLUMNS, UNMASK_PARAM_DEFAULTS)) for _ in range(B)]
    _check(tuple(params.shape) == (B, len(UNMASK_PARAM_COLUMNS)) and params.dtype == torch.float64,
           f"params must be [B, {len(UNMASK_PARAM_COLUMNS)}] float64")
    rows = []
    for b, values in enumerate(params.detach().cpu().tolist()):
        row = dict(zip(UNMASK_PARAM_COLUMNS, values))
        for name, lo in (("steps", 1), ("block_length", 1), ("window", 0)):
            v = row[name]
            _check(math.isfinite(v) and v >= lo and v == int(v),
                   f"{name} must be a whole number >= {lo}, got {v} for sequence {b}")
            row[name] = int(v)
        for name in ("temperature", "factor"):
            _check(math.isfinite(row[name]) and row[name] >= 0, f"{name} must be finite and >= 0 (sequence {b})")
        for name in ("threshold", "anchor_threshold", "relaxed_threshold", "filter_threshold", "block_delta",
                     "block_window_fraction"):
            _check(math.isfinite(row[name]) and 0 <= row[name] <= 1, f"{name} must be in [0, 1] (sequence {b})")
        rows.append(row)
    return rows


def fused_unmask_reference(logits, x, conf, state, mask_id, eos_id, params=None, row_start=None, gumbel_u=None,
                           rank_u=None, suppress_ids=None, zero_conf_ids=None, delimiter_ids=None,
                           filter_w1=None, filter_b1=None, filter_w2=None, filter_b2=None, rule=0, conf_kind=0,
                           shift=False, graded=False, random_remasking=False, adaptive_block=False, eotp=False,
                           early_stop=False):
    """Reference of `torch.ops.dllm.fused_unmask` (docs/fused_unmask.md): the op's signature.

    `params` is the per-sequence float64 pack (columns: fused_unmask_params.UNMASK_PARAM_COLUMNS).
    Mutates `x` [B, L] int64, `conf` [B, L] float32 and `state` [B, 11] int64 in place; returns
    `(x0 [B, L] int64, transfer [B, L] bool, window_stats [B, 3] float32)` on x's device.
    """
    _check(logits.dim() == 3, f"logits must be [B, R, V], got {tuple(logits.shape)}")
    _check(logits.dtype in (torch.float32, torch.float16, torch.bfloat16),
           f"logits must be float32/float16/bfloat16, got {logits.dtype}")
    B, R, V = logits.shape
    _check(B > 0 and V >= 2, f"need B > 0 and V >= 2, got B={B}, V={V}")
    _check(x.dim() == 2 and x.shape[0] == B and x.dtype == torch.int64, "x must be [B, L] int64")
    L = x.shape[1]
    _check(L > 0, "x must have at least one position")
    _check(tuple(conf.shape) == (B, L) and conf.dtype == torch.float32, "conf must be [B, L] float32")
    _check(tuple(state.shape) == (B, STATE_COLUMNS) and state.dtype == torch.int64, "state must be [B, 11] int64")
    _check(0 <= mask_id < V and 0 <= eos_id < V and mask_id != eos_id,
           "mask_id and eos_id must be distinct ids in [0, V)")
    _check(0 <= rule <= RULE_FILTER and 0 <= conf_kind <= CONF_NEG_ENTROPY, "bad rule or conf_kind")
    rows = _pack_rows(params, B)
    ids = {}
    for name, t in (("suppress_ids", suppress_ids), ("zero_conf_ids", zero_conf_ids),
                    ("delimiter_ids", delimiter_ids)):
        ids[name] = _id_list(t)
        _check(all(0 <= i < V for i in ids[name]), f"{name} holds ids outside [0, {V})")
    if gumbel_u is not None:
        _check(tuple(gumbel_u.shape) == (B, R, V), "gumbel_u must be [B, R, V]")
    if rank_u is not None:
        _check(tuple(rank_u.shape) == (B, L), "rank_u must be [B, L]")
    _check(R <= L, f"logits has R = {R} rows, more than the L = {L} positions of x (need R <= L)")
    if row_start is not None:
        _check(tuple(row_start.shape) == (B,), "row_start must be [B]")
        _check(int(row_start.min()) >= 0, f"row_start must be >= 0, got {int(row_start.min())}")
    parts = (filter_w1, filter_b1, filter_w2, filter_b2)
    filt = None
    _check(all(t is None for t in parts) or all(t is not None for t in parts),
           "filter_w1, filter_b1, filter_w2, filter_b2 go together")
    _check(rule != RULE_FILTER or filter_w1 is not None, "rule 4 (learned filter) needs filter_w1/b1/w2/b2")
    if filter_w1 is not None:
        filt = tuple(t.detach().to("cpu", torch.float64) for t in parts)
        H, W = filt[0].shape
        _check(tuple(filt[1].shape) == (H,) and tuple(filt[2].shape) == (W, H) and tuple(filt[3].shape) == (W,),
               "filter shapes must be w1 [H, W], b1 [H], w2 [W, H], b2 [W]")

    flags = dict(mask_id=int(mask_id), eos_id=int(eos_id), rule=int(rule), conf_kind=int(conf_kind),
                 shift=bool(shift), graded=bool(graded), random_remasking=bool(random_remasking),
                 adaptive_block=bool(adaptive_block), eotp=bool(eotp), early_stop=bool(early_stop),
                 suppress_ids=ids["suppress_ids"], zero_conf_ids=ids["zero_conf_ids"],
                 delimiter_ids=set(ids["delimiter_ids"]))

    logits_c = logits.detach().cpu()
    gumbel_c = gumbel_u.detach().cpu() if gumbel_u is not None else None
    rank_c = rank_u.detach().cpu() if rank_u is not None else None
    starts = row_start.detach().cpu().tolist() if row_start is not None else [0] * B
    x0 = x.detach().cpu().clone()
    transfer = torch.zeros(B, L, dtype=torch.bool)
    window_stats = torch.zeros(B, 3, dtype=torch.float32)
    state_c = state.detach().cpu().clone()
    for b in range(B):
        xs = [int(v) for v in x[b].tolist()]
        buffer = [float(v) for v in conf[b].tolist()]
        kw = dict(flags, **rows[b])  # this sequence's parameters
        _sequence_step(b, logits_c, xs, buffer, state_c[b], int(starts[b]), gumbel_c, rank_c, kw, filt,
                       x0, transfer, window_stats)
        x[b].copy_(torch.tensor(xs, dtype=torch.int64))
        conf[b].copy_(torch.tensor(buffer, dtype=torch.float32))
    state.copy_(state_c)
    return x0.to(x.device), transfer.to(x.device), window_stats.to(x.device)
