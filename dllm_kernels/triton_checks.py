"""Argument checks shared by the Triton launchers, worded as the C++ ops' (csrc/op_checks.h), so
a bad input raises the same message whichever backend serves the op."""
from __future__ import annotations

import torch

from .policy import MAX_FILTER_HIDDEN, MAX_FILTER_WIDTH


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
