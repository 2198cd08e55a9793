"""`select`: the stateless selection step, for decoders that keep their own loop and state.

Given one step's logits and the caller's candidate positions, it computes each candidate's
prediction and confidence in one pass over its logits row and applies a selection rule; it
never opens a block, keeps no state, and writes `x` only with `commit=True`. The same two
stages (statistics pass, rule) run inside `fused_unmask`, which adds the block scheduler, the
top-k schedule, EoTP and early stop on top. Semantics: docs/select.md.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch

from .policy import CONF_KINDS, RULES, LearnedFilter
from .policy import RULE_FIELDS as POLICY_RULE_FIELDS
from .row_stats import logits_or_row_stats
from .select_params import SELECT_PARAM_COLUMNS, Value, pack_select_params
from .state import per_sequence_int64

# "native": the op (C++ on CPU, Triton on CUDA); "triton": the Triton kernels directly (CUDA, or
# CPU tensors under TRITON_INTERPRET=1); "reference": the float64 reference.
BACKENDS = ("auto", "native", "triton", "reference")

# The pack columns each rule reads (every rule reads temperature): Policy's table, with the
# caller's per-step `k` in place of the top-k schedule's `steps`.
RULE_FIELDS = {
    rule: tuple(name for name in ("k" if f == "steps" else f for f, rules in POLICY_RULE_FIELDS.items()
                                  if rule in rules) if name in SELECT_PARAM_COLUMNS)
    for rule in RULES
}


class SelectResult(NamedTuple):
    x0: torch.Tensor        # [B, L] int64: prediction at read positions, x elsewhere
    conf: torch.Tensor      # [B, L] float32: confidence at read positions (NaN: invalid row), prev_conf elsewhere
    transfer: torch.Tensor  # [B, L] bool: positions the rule chose


def _ids(name: str, ids, device) -> Optional[torch.Tensor]:
    if ids is None:
        return None
    if isinstance(ids, torch.Tensor):
        return ids.to(device=device, dtype=torch.int64).reshape(-1).contiguous()
    if isinstance(ids, int):
        ids = (ids,)
    try:
        values = [int(i) for i in ids]
    except TypeError:
        raise TypeError(f"select: {name} must be a sequence of token ids, got {type(ids).__name__}") from None
    return torch.tensor(values, dtype=torch.int64, device=device) if values else None


def _per_sequence_ids(name: str, value, batch: int, device) -> Optional[torch.Tensor]:
    return None if value is None else per_sequence_int64(value, batch, name, op="select", device=device)


def _bounds(bounds, batch: int, device) -> Optional[torch.Tensor]:
    if bounds is None:
        return None
    if isinstance(bounds, torch.Tensor) and bounds.dim() == 2:
        return bounds.to(device=device, dtype=torch.int64).contiguous()
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise ValueError("select: bounds must be a [B, 2] tensor or a (start, end) pair of ints or [B] tensors")
    start = _per_sequence_ids("bounds start", bounds[0], batch, device)
    end = _per_sequence_ids("bounds end", bounds[1], batch, device)
    return torch.stack([start, end], dim=1).contiguous()


def noise_keys(batch: int, device, *, seed, offset, temperature: Value, random_remasking: bool,
               generator: Optional[torch.Generator], explicit: bool = False):
    """The [B] int64 Philox (seed, offset) of a step (either may be None): the caller's, or, when the
    step draws noise (temperature > 0 or random remasking) with neither seeds nor `explicit`
    uniforms, seeds drawn from `generator` (default: torch's)."""
    seed_t = _per_sequence_ids("seed", seed, batch, device)
    offset_t = _per_sequence_ids("offset", offset, batch, device)
    random = random_remasking or not (isinstance(temperature, (int, float)) and temperature == 0)
    if random and seed_t is None and not explicit:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        seed_t = torch.randint(-2 ** 63, 2 ** 63 - 1, (batch,), generator=generator, dtype=torch.int64,
                               device=gen_device).to(device)
    return seed_t, offset_t


def select(logits: torch.Tensor, x: torch.Tensor, candidates: Optional[torch.Tensor] = None, *,
           rule: str = "threshold", k: Optional[Value] = None, threshold: Optional[Value] = None,
           factor: Optional[Value] = None, anchor_threshold: Optional[Value] = None,
           relaxed_threshold: Optional[Value] = None, window: Optional[Value] = None, graded: bool = False,
           conf: str = "prob", temperature: Value = 0.0, learned_filter: Optional[LearnedFilter] = None,
           filter_threshold: Optional[Value] = None, random_remasking: bool = False,
           suppress_ids: Union[Sequence[int], torch.Tensor, None] = None,
           zero_conf_ids: Union[Sequence[int], torch.Tensor, None] = None, shift: bool = False,
           row_start: Optional[torch.Tensor] = None, bounds=None, generator: Optional[torch.Generator] = None,
           seed=None, offset=None, gumbel_u: Optional[torch.Tensor] = None, rank_u: Optional[torch.Tensor] = None,
           prev_conf: Optional[torch.Tensor] = None, commit: bool = False, backend: str = "auto",
           row_stats: Optional[torch.Tensor] = None, vocab_size: Optional[int] = None) -> SelectResult:
    """Choose which candidate positions to commit this step (docs/select.md).

    logits: [B, R, V]; row r holds position `row_start[b] + r` (+1 with `shift`). x: [B, L] int64.
    candidates: [B, L] bool (default: every position), restricted to `bounds` (a [B, 2] tensor
    or a (start, end) pair: the rule's block, default [0, L)). rule: "topk" (needs `k`),
    "threshold", "factor", "localleap", "filter" (needs `k` and `learned_filter`). Each numeric
    parameter is a number or a [B] tensor (per-request policies in one batch); a parameter the
    rule does not read is an error. Randomness (temperature > 0, random_remasking): Philox keyed by
    `seed`/`offset` ([B] tensors or ints; capturable in a CUDA graph), else seeds drawn from
    `generator` (default: torch's), or explicit `gumbel_u` / `rank_u` uniforms.
    row_stats: [W, B, R, C] partial statistics of W vocabulary slices in order (dllm_kernels.row_stats,
    docs/row_stats.md) in place of the logits, which may then be None; `vocab_size` is the whole
    vocabulary. Sampling noise was drawn when the partials were computed (with their seeds).
    """
    if backend not in BACKENDS:
        raise ValueError(f"select: backend must be one of {BACKENDS}, got {backend!r}")
    if rule not in RULES:
        raise ValueError(f"select: rule must be one of {sorted(RULES)}, got {rule!r}")
    if conf not in CONF_KINDS:
        raise ValueError(f"select: conf must be one of {sorted(CONF_KINDS)}, got {conf!r}")
    logits = logits_or_row_stats("select", logits, row_stats, vocab_size, backend)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("select: logits must be a 3-D tensor [B, R, V]")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError("select: x must be a 2-D tensor [B, L]")
    given = dict(k=k, threshold=threshold, factor=factor, anchor_threshold=anchor_threshold,
                 relaxed_threshold=relaxed_threshold, window=window, filter_threshold=filter_threshold)
    for name, v in given.items():
        if v is not None and name not in RULE_FIELDS[rule]:
            raise ValueError(f"select: {name} does not apply to rule {rule!r} (it reads {RULE_FIELDS[rule]})")
    if rule in ("topk", "filter") and k is None:
        raise ValueError(f"select: rule {rule!r} needs k (tokens to commit per sequence)")
    if graded and rule != "localleap":
        raise ValueError("select: graded applies to rule 'localleap' only")
    if random_remasking and rule not in ("topk", "filter"):
        raise ValueError("select: random_remasking applies to rules 'topk' and 'filter' only")
    if (rule == "filter") != (learned_filter is not None):
        raise ValueError("select: learned_filter goes with rule 'filter' (and that rule needs one)")

    B, device = logits.shape[0], logits.device
    params = pack_select_params(B, device, dict(given, temperature=temperature))
    seed_t, offset_t = noise_keys(B, device, seed=seed, offset=offset, temperature=temperature,
                                  random_remasking=random_remasking, generator=generator,
                                  explicit=gumbel_u is not None or rank_u is not None)
    filt = learned_filter.tensors(device) if learned_filter is not None else (None,) * 4
    args = (logits, x, candidates, params, _bounds(bounds, B, device), row_start, seed_t, offset_t, gumbel_u,
            rank_u, prev_conf, _ids("suppress_ids", suppress_ids, device),
            _ids("zero_conf_ids", zero_conf_ids, device)) + tuple(filt)
    flags = dict(rule=RULES[rule], conf_kind=CONF_KINDS[conf], shift=bool(shift), graded=bool(graded),
                 random_remasking=bool(random_remasking), commit=bool(commit))
    if row_stats is not None:
        flags.update(row_stats=row_stats, vocab_size=int(vocab_size))
    if backend == "reference":
        from .reference.select import select_reference

        return SelectResult(*select_reference(*args, **flags))
    if backend == "triton":
        from .triton_select import triton_select

        return SelectResult(*triton_select(*args, **flags))
    return SelectResult(*torch.ops.dllm.select(*args, **flags))
