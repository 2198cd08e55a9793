"""Argument checks shared by the Triton launchers, worded as the C++ ops' (csrc/op_checks.h), so
a bad input raises the same message whichever backend serves the op."""
from __future__ import annotations

import math

import torch

from .policy import MAX_FILTER_HIDDEN, MAX_FILTER_WIDTH
from .row_stats import MAX_MERGED_PARTIALS, ROW_STATS_COLUMNS

LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ArgChecks:
    """The checks of one op: errors are `error(f"{op}: {msg}")`; `dtype_name` formats dtypes."""

    def __init__(self, op: str, error: type, dtype_name=str):
        self.op, self.error, self.dtype_name = op, error, dtype_name

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            raise self.error(f"{self.op}: {msg}")

    def tensor(self, t, logits, name, dtype, shape) -> None:
        check, dn = self.check, self.dtype_name
        check(isinstance(t, torch.Tensor), f"{name} must be a tensor, got {type(t).__name__}")
        check(t.device == logits.device, f"{name} is on {t.device} but logits is on {logits.device}")
        check(t.dtype == dtype, f"{name} must be {dn(dtype)}, got {dn(t.dtype)}")
        check(tuple(t.shape) == tuple(shape), f"{name} must have shape {list(shape)}, got {list(t.shape)}")
        check(t.is_contiguous(), f"{name} must be contiguous")

    def ids(self, t, logits, name, V) -> None:
        if t is None:
            return
        check = self.check
        check(t.device == logits.device, f"{name} is on {t.device} but logits is on {logits.device}")
        check(t.dtype == torch.int64, f"{name} must be int64, got {self.dtype_name(t.dtype)}")
        check(t.dim() == 1, f"{name} must be 1-D, got {t.dim()}-D")
        check(t.is_contiguous(), f"{name} must be contiguous")
        if t.device.type == "cpu" and t.numel() > 0:  # on a GPU this would sync: the kernels ignore such ids
            lo, hi = int(t.min()), int(t.max())
            check(lo >= 0 and hi < V, f"{name} holds ids outside [0, {V}): {lo}..{hi}")

    def logits(self, logits, min_vocab: int = 2) -> tuple:
        """Logits [B, R, V] in a supported dtype, contiguous along V -> (B, R, V); a vocabulary
        slice (row_stats) may hold one id (min_vocab 1)."""
        check = self.check
        check(isinstance(logits, torch.Tensor) and logits.dim() == 3,
              f"logits must be 3-D [B, R, V], got {getattr(logits, 'dim', lambda: '?')()}-D")
        check(logits.dtype in LOGITS_DTYPES,
              f"logits must be float32, float16 or bfloat16, got {self.dtype_name(logits.dtype)}")
        B, R, V = logits.shape
        check(B > 0, "empty batch (logits has B = 0)")
        check(V >= min_vocab, f"logits must have a vocabulary of at least {min_vocab}, got V = {V}")
        check(logits.stride(2) == 1,
              f"logits must be contiguous along the vocab dimension (stride(2) == 1), got stride {logits.stride(2)}")
        return B, R, V

    def logits_or_row_stats(self, logits, row_stats, vocab_size, gumbel_u) -> tuple:
        """op_checks.h check_logits_or_row_stats -> (B, R, V): with row_stats [W, B, R, C] the logits
        only give B and R and V is vocab_size."""
        check = self.check
        if row_stats is None:
            B, R, V = self.logits(logits)
            check(vocab_size in (0, V), f"vocab_size ({vocab_size}) must be 0 or logits' V = {V} "
                                        "when row_stats is not given")
            return B, R, V
        check(isinstance(logits, torch.Tensor) and logits.dim() == 3,
              "logits must be 3-D [B, R, *] (with row_stats it gives B and R)")
        B, R = logits.shape[:2]
        check(B > 0, "empty batch (logits has B = 0)")
        check(vocab_size >= 2, f"row_stats needs vocab_size >= 2 (the whole vocabulary), got {vocab_size}")
        check(gumbel_u is None, "gumbel_u does not go with row_stats (the noise is drawn when the statistics "
                                "are computed)")
        check(row_stats.device == logits.device, f"row_stats is on {row_stats.device} but logits is on {logits.device}")
        check(row_stats.dtype == torch.float64, f"row_stats must be float64, got {self.dtype_name(row_stats.dtype)}")
        n_cols = len(ROW_STATS_COLUMNS)
        check(row_stats.dim() == 4 and row_stats.shape[0] >= 1 and tuple(row_stats.shape[1:]) == (B, R, n_cols),
              f"row_stats must be [W >= 1, B = {B}, R = {R}, {n_cols}], got {list(row_stats.shape)}")
        check(row_stats.is_contiguous(), "row_stats must be contiguous")
        check(row_stats.shape[0] <= MAX_MERGED_PARTIALS,
              f"row_stats merges at most {MAX_MERGED_PARTIALS} partials per row, got W = {row_stats.shape[0]}")
        if row_stats.device.type == "cpu":
            ids = row_stats[..., [ROW_STATS_COLUMNS.index("idx"), ROW_STATS_COLUMNS.index("noisy_idx")]]
            bad = (ids != ids.floor()) | (ids < -1) | (ids >= vocab_size)
            if bool(bad.any()):
                check(False, f"row_stats holds an id outside [-1, vocab_size = {vocab_size}): {ids[bad][0].item()}")
        return B, R, vocab_size

    def step_head(self, logits, x, row_stats, vocab_size, gumbel_u) -> tuple:
        """The first checks of a selection step (fused_unmask, select) -> (B, R, V, L)."""
        B, R, V = self.logits_or_row_stats(logits, row_stats, vocab_size, gumbel_u)
        self.check(isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[0] == B,
                   f"x must be [B, L] with B = {B}, got {list(getattr(x, 'shape', []))}")
        L = x.shape[1]
        self.check(L > 0, "x must have at least one position")
        self.tensor(x, logits, "x", torch.int64, (B, L))
        return B, R, V, L

    def step_tail(self, logits, shape: tuple, gumbel_u, rank_u, ids: dict, rule: int, conf_kind: int,
                  filters: tuple, on_cpu_ok: bool) -> tuple:
        """The last checks of a selection step: noise tensors, id lists, rule, confidence kind, the
        learned filter and the device -> the filter's (width, hidden)."""
        B, R, V, L = shape
        if gumbel_u is not None:
            self.tensor(gumbel_u, logits, "gumbel_u", torch.float32, (B, R, V))
        if rank_u is not None:
            self.tensor(rank_u, logits, "rank_u", torch.float32, (B, L))
        for name, t in ids.items():
            self.ids(t, logits, name, V)
        self.check(0 <= rule <= 4, f"rule must be 0..4, got {rule}")
        self.check(0 <= conf_kind <= 2, f"conf_kind must be 0..2, got {conf_kind}")
        fw, fh = self.learned_filter(logits, *filters, rule == 4)
        self.check(logits.device.type == "cuda" or on_cpu_ok,
                   f"the Triton path needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {logits.device}")
        return fw, fh

    def partial_tail(self, device, temperature, conf_kind: int, vocab_start: int, V: int, on_cpu_ok: bool) -> None:
        """The last checks of a producer of row partials (row_stats, lm_head_row_stats): the
        temperatures' values (CPU only: on a GPU a check would sync), the confidence kind, the
        slice's place in the global vocabulary, the device."""
        check = self.check
        if temperature is not None and temperature.device.type == "cpu":
            check(bool(torch.isfinite(temperature).all()) and bool((temperature >= 0).all()),
                  "temperature must be finite and >= 0")
        check(0 <= conf_kind <= 2, f"conf_kind must be 0..2, got {conf_kind}")
        check(vocab_start >= 0 and vocab_start + V <= 2 ** 32,
              f"vocab_start must be >= 0 and vocab_start + V <= 2^32 (the noise key), got vocab_start = "
              f"{vocab_start}, V = {V}")
        check(device.type == "cuda" or on_cpu_ok,
              f"the Triton path needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {device}")

    def learned_filter(self, logits, w1, b1, w2, b2, required: bool):
        """The filter's four tensors (all or none) -> (width, hidden), (0, 0) without a filter."""
        check, parts = self.check, (w1, b1, w2, b2)
        any_filter, all_filter = any(t is not None for t in parts), all(t is not None for t in parts)
        check(not any_filter or all_filter, "filter_w1, filter_b1, filter_w2, filter_b2 go together")
        check(not required or all_filter, "rule 4 (learned filter) needs filter_w1/b1/w2/b2")
        if not all_filter:
            return 0, 0
        check(w1.dim() == 2, "filter_w1 must be [hidden, width]")
        fh, fw = w1.shape
        check(1 <= fw <= MAX_FILTER_WIDTH, f"filter width must be 1..{MAX_FILTER_WIDTH}, got {fw}")
        check(1 <= fh <= MAX_FILTER_HIDDEN, f"filter hidden size must be 1..{MAX_FILTER_HIDDEN}, got {fh}")
        self.tensor(w1, logits, "filter_w1", torch.float32, (fh, fw))
        self.tensor(b1, logits, "filter_b1", torch.float32, (fh,))
        self.tensor(w2, logits, "filter_w2", torch.float32, (fw, fh))
        self.tensor(b2, logits, "filter_b2", torch.float32, (fw,))
        return fw, fh


def check_pack_values(params: torch.Tensor, columns: tuple, kinds: tuple, op: ArgChecks, *,
                      bound_first: bool = False) -> None:
    """csrc/param_pack_check.h check_param_pack: each value of a parameter pack in its column's
    range kind, on CPU only (on a GPU a check would sync; the kernels clamp the counts they index
    with). `bound_first` words whole numbers as fused_unmask does ("steps must be >= 1 (a whole
    number)") rather than as select ("k must be a whole number >= 0")."""
    if params.device.type != "cpu":
        return
    for b, row in enumerate(params.tolist()):
        for name, kind, v in zip(columns, kinds, row):
            got = f"got {v} for sequence {b}"
            if kind in ("whole1", "whole0"):
                lo = 1 if kind == "whole1" else 0
                ok = math.isfinite(v) and v >= lo and v == math.floor(v) and v < 9.0e15
                op.check(ok, f"{name} must be >= {lo} (a whole number), {got}" if bound_first
                         else f"{name} must be a whole number >= {lo}, {got}")
            elif kind == "finite0":
                op.check(math.isfinite(v) and v >= 0.0, f"{name} must be finite and >= 0, {got}")
            elif kind == "unit":
                op.check(math.isfinite(v) and 0.0 <= v <= 1.0, f"{name} must be in [0, 1], {got}")
            else:
                raise AssertionError(f"{op.op}: column {name} has an unknown range kind {kind!r}")


_DEFAULT_PACKS: dict = {}


def default_pack(device: torch.device, key: tuple) -> torch.Tensor:
    """A pack's defaults `key` (its column defaults) as one [1, P] float64 row per device, read
    with row stride 0. Made on first use; a CUDA graph that calls an op without `params` must be
    warmed up outside the capture."""
    row = _DEFAULT_PACKS.get((device, key))
    if row is None:
        row = torch.tensor([key], dtype=torch.float64, device=device)
        _DEFAULT_PACKS[(device, key)] = row
    return row
