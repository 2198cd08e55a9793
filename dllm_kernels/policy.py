"""Unmasking policies as plain dataclasses, and their translation into fused_unmask arguments.

A `Policy` is everything docs/policies.md lets a decoder choose: the selection rule and its
parameters, the confidence kind, sampling temperature, the block scheduler and the end-of-text
handling. It is frozen and hashable, so converted device tensors can be cached per device.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from .select_params import Value
from .fused_unmask_params import UNMASK_DEFAULTS, UNMASK_PARAM_COLUMNS, pack_unmask_params  # defined once in C++

RULES = {"topk": 0, "threshold": 1, "factor": 2, "localleap": 3, "filter": 4}
CONF_KINDS = {"prob": 0, "margin": 1, "neg_entropy": 2}

# Limits of the native learned-filter stage (csrc/include/dllm/policy.h).
MAX_FILTER_WIDTH = 128
MAX_FILTER_HIDDEN = 256


@dataclass(frozen=True, eq=False)
class LearnedFilter:
    """Learn2PD filter: Linear(width, hidden) -> ReLU -> Linear(hidden, width), float32.

    `w1` is [hidden, width], `b1` [hidden], `w2` [width, hidden], `b2` [width] (nn.Linear layout).
    Compared and hashed by identity: two filters are the same only if they are the same object.
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor

    def __post_init__(self):
        hidden, width = self.w1.shape if self.w1.dim() == 2 else (0, 0)
        if not (1 <= width <= MAX_FILTER_WIDTH and 1 <= hidden <= MAX_FILTER_HIDDEN):
            raise ValueError(
                f"LearnedFilter: w1 must be [hidden<= {MAX_FILTER_HIDDEN}, width <= {MAX_FILTER_WIDTH}], "
                f"got {tuple(self.w1.shape)}")
        expected = {"b1": (hidden,), "w2": (width, hidden), "b2": (width,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"LearnedFilter: {name} must have shape {shape}, "
                                 f"got {tuple(getattr(self, name).shape)}")

    @property
    def width(self) -> int:
        return self.w1.shape[1]

    @classmethod
    def from_modules(cls, first: torch.nn.Linear, second: torch.nn.Linear) -> "LearnedFilter":
        """From the two nn.Linear layers of a trained filter."""
        return cls(*(t.detach().float().contiguous() for t in
                     (first.weight, first.bias, second.weight, second.bias)))

    def tensors(self, device) -> tuple:
        return tuple(t.to(device=device, dtype=torch.float32).contiguous()
                     for t in (self.w1, self.b1, self.w2, self.b2))


def _is_number(value) -> bool:
    """A real number, not a bool (True would otherwise pass as 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_unit(name: str, value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"Policy: {name} must be in [0, 1], got {value!r}")


def _id_tuple(name: str, ids) -> tuple:
    """Token ids as a tuple: a sequence (or 1-D tensor) of ids, or one id alone."""
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    if _is_int(ids):
        ids = (ids,)
    try:
        out = tuple(ids)
    except TypeError:
        raise ValueError(f"Policy: {name} must be a token id or a sequence of token ids, "
                         f"got {type(ids).__name__}") from None
    for i in out:
        if not _is_int(i) or i < 0:
            raise ValueError(f"Policy: {name} must hold non-negative token ids, got {i!r}")
    return out


# The fields each rule reads; any other rule ignores them (a changed value then draws a warning).
RULE_FIELDS = {
    "steps": ("topk", "filter"), "random_remasking": ("topk", "filter"),
    "threshold": ("threshold",), "factor": ("factor",),
    "anchor_threshold": ("localleap",), "relaxed_threshold": ("localleap",), "window": ("localleap",),
    "graded": ("localleap",), "learned_filter": ("filter",), "filter_threshold": ("filter",),
}


@dataclass(frozen=True)
class Policy:
    """One unmasking policy (docs/policies.md §2-§4); defaults are the papers'.

    rule: "topk" (LLaDA low-confidence remasking, `steps` per block), "threshold" (Fast-dLLM),
    "factor" (Fast-dLLM dynamic), "localleap", or "filter" (Learn2PD; needs `learned_filter`).

    The default, `Policy()`, is LLaDA's own decoding: top-k low-confidence remasking with one token
    per step (`steps=None` means `steps = block_length`, also after `block_length` is changed),
    greedy. It is the quality baseline every faster rule is measured against, and its number of
    forwards is fixed (gen_length); `Policy(rule="threshold")` (Fast-dLLM, 0.9) is the fast choice.
    Fields a rule does not read (`RULE_FIELDS`) draw a warning when set to a non-default value.
    `suppress_ids`, `zero_conf_ids`, `delimiter_ids` take a sequence of ids or a single id.
    """

    rule: str = "topk"
    conf: str = "prob"
    temperature: float = UNMASK_DEFAULTS["temperature"]
    steps: Optional[int] = None
    threshold: float = UNMASK_DEFAULTS["threshold"]
    factor: float = UNMASK_DEFAULTS["factor"]
    anchor_threshold: float = UNMASK_DEFAULTS["anchor_threshold"]
    relaxed_threshold: float = UNMASK_DEFAULTS["relaxed_threshold"]
    window: int = int(UNMASK_DEFAULTS["window"])
    graded: bool = False
    learned_filter: Optional[LearnedFilter] = None
    filter_threshold: float = UNMASK_DEFAULTS["filter_threshold"]
    random_remasking: bool = False
    block_length: int = int(UNMASK_DEFAULTS["block_length"])
    adaptive_block: bool = False
    block_delta: float = UNMASK_DEFAULTS["block_delta"]
    block_window_fraction: float = UNMASK_DEFAULTS["block_window_fraction"]
    delimiter_ids: tuple = ()
    eotp: bool = False
    early_stop: bool = False
    shift: bool = False
    suppress_ids: tuple = ()
    zero_conf_ids: tuple = ()

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"Policy: rule must be one of {sorted(RULES)}, got {self.rule!r}")
        if self.conf not in CONF_KINDS:
            raise ValueError(f"Policy: conf must be one of {sorted(CONF_KINDS)}, got {self.conf!r}")
        if not (_is_number(self.temperature) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"Policy: temperature must be finite and >= 0, got {self.temperature!r}")
        if not (self.steps is None or (_is_int(self.steps) and self.steps >= 1)):
            raise ValueError(f"Policy: steps must be an int >= 1 (or None: one token per step), got {self.steps!r}")
        if not (_is_int(self.block_length) and self.block_length >= 1):
            raise ValueError(f"Policy: block_length must be an int >= 1, got {self.block_length!r}")
        if not (_is_int(self.window) and self.window >= 0):
            raise ValueError(f"Policy: window must be an int >= 0, got {self.window!r}")
        for name in ("threshold", "anchor_threshold", "relaxed_threshold", "filter_threshold",
                     "block_delta", "block_window_fraction"):
            _check_unit(name, getattr(self, name))
        if not (_is_number(self.factor) and math.isfinite(self.factor) and self.factor >= 0):
            raise ValueError(f"Policy: factor must be finite and >= 0, got {self.factor!r}")
        for name in ("delimiter_ids", "suppress_ids", "zero_conf_ids"):
            object.__setattr__(self, name, _id_tuple(name, getattr(self, name)))
        if self.rule == "filter" and self.learned_filter is None:
            raise ValueError("Policy: rule 'filter' needs learned_filter")
        if self.adaptive_block and not self.delimiter_ids:
            raise ValueError("Policy: adaptive_block needs delimiter_ids (LLaDA: (198,))")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        unused = [name for name, rules in RULE_FIELDS.items()
                  if self.rule not in rules and getattr(self, name) != defaults[name]]
        if unused:
            warnings.warn("Policy: " + "; ".join(f"{name} is unused by rule {self.rule!r} (read by rule "
                                                 f"{'/'.join(RULE_FIELDS[name])})" for name in unused),
                          UserWarning, stacklevel=3)

    @property
    def block_steps(self) -> int:
        """Steps of a top-k block: `steps`, or `block_length` (one token per step) when None."""
        return self.block_length if self.steps is None else self.steps

    def pack_values(self) -> dict:
        """This policy's value of every column of fused_unmask's parameter pack."""
        values = {name: getattr(self, name) for name in UNMASK_PARAM_COLUMNS if name != "steps"}
        return dict(values, steps=self.block_steps)

    def op_arguments(self, device, vocab_size: int, batch: int,
                     params: Optional[Mapping[str, Value]] = None) -> dict:
        """Keyword arguments of torch.ops.dllm.fused_unmask for this policy and a batch of `batch`
        sequences (tensors cached): the parameter pack, the lists, the filter and the mode switches.

        `params` overrides the policy's numeric fields per request: {name: number or [batch] tensor}
        for any column of the pack (UNMASK_PARAM_COLUMNS) that this rule reads. With `steps=None`, a
        per-request `block_length` also sets that request's steps (one token per step)."""
        # While torch.compile traces, build the tensors directly: Dynamo would skip the cache
        # wrapper anyway (and warn that it does).
        compiling = torch.compiler.is_compiling()
        device = torch.device(device)
        tensors = (_policy_tensors.__wrapped__ if compiling else _policy_tensors)(self, device)
        for name in ("delimiter_ids", "suppress_ids", "zero_conf_ids"):
            bad = [i for i in getattr(self, name) if i >= vocab_size]
            if bad:
                raise ValueError(f"Policy: {name} holds ids >= vocab size {vocab_size}: {bad}")
        if params:
            values = dict(self.pack_values(), **self._checked_overrides(params))
            if self.steps is None and "steps" not in params and "block_length" in params:
                values["steps"] = params["block_length"]
            pack = pack_unmask_params(batch, device, values)
        else:
            pack = (_policy_pack.__wrapped__ if compiling else _policy_pack)(self, device, batch)
        return dict(
            tensors, params=pack, rule=RULES[self.rule], conf_kind=CONF_KINDS[self.conf], shift=self.shift,
            graded=self.graded, random_remasking=self.random_remasking, adaptive_block=self.adaptive_block,
            eotp=self.eotp, early_stop=self.early_stop)

    def _checked_overrides(self, params: Mapping[str, Value]) -> dict:
        for name in params:
            if name not in UNMASK_PARAM_COLUMNS:
                raise ValueError(f"fused_unmask: unknown parameter {name!r} in params; known: "
                                 f"{list(UNMASK_PARAM_COLUMNS)}")
            if name in RULE_FIELDS and self.rule not in RULE_FIELDS[name]:
                raise ValueError(f"fused_unmask: {name} does not apply to rule {self.rule!r} (read by rule "
                                 f"{'/'.join(RULE_FIELDS[name])})")
        return dict(params)


@functools.lru_cache(maxsize=256)
def _policy_pack(policy: Policy, device: torch.device, batch: int) -> torch.Tensor:
    return pack_unmask_params(batch, device, policy.pack_values())


@functools.lru_cache(maxsize=256)
def _policy_tensors(policy: Policy, device: torch.device) -> dict:
    def ids(values):
        return torch.tensor(values, dtype=torch.int64, device=device) if values else None

    out = dict(suppress_ids=ids(policy.suppress_ids), zero_conf_ids=ids(policy.zero_conf_ids),
               delimiter_ids=ids(policy.delimiter_ids),
               filter_w1=None, filter_b1=None, filter_w2=None, filter_b2=None)
    if policy.learned_filter is not None:
        w1, b1, w2, b2 = policy.learned_filter.tensors(device)
        out.update(filter_w1=w1, filter_b1=b1, filter_w2=w2, filter_b2=b2)
    return out
