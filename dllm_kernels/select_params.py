"""The per-request parameter pack of `select`: one float64 column per numeric parameter.

The columns, their defaults and range kinds are defined once, in C++
(csrc/include/dllm/select_params.h), and read here from the native library. A value may be a Python number (the same for every
sequence) or a tensor with one value per sequence, so one batch can serve requests with
different policies; tensor values travel to the kernels as data, so changing them neither
recompiles a `torch.compile`d caller nor needs a new CUDA-graph capture.
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping, Optional, Union

import torch

from . import _native  # noqa: F401  (the op that names the columns)

_names, _defaults, _kinds = torch.ops.dllm.select_param_columns()
SELECT_PARAM_COLUMNS: tuple = tuple(_names)
SELECT_PARAM_DEFAULTS: tuple = tuple(_defaults)
# Each column's range kind (csrc/include/dllm/param_kind.h): "whole1", "whole0", "finite0" or "unit".
SELECT_PARAM_KINDS: tuple = tuple(_kinds)
SELECT_DEFAULTS: Mapping[str, float] = dict(zip(SELECT_PARAM_COLUMNS, SELECT_PARAM_DEFAULTS))

# Columns holding whole numbers (with their least value), and those in [0, 1]; any other column
# is finite and >= 0. One table for both packs (select's, and fused_unmask's), from their kinds.
_all_kinds = dict(zip(SELECT_PARAM_COLUMNS, SELECT_PARAM_KINDS))
_unmask_names, _, _unmask_kinds = torch.ops.dllm.fused_unmask_param_columns()
_all_kinds.update(zip(_unmask_names, _unmask_kinds))
WHOLE_COLUMNS = {name: int(kind == "whole1") for name, kind in _all_kinds.items() if kind.startswith("whole")}
UNIT_COLUMNS = tuple(name for name, kind in _all_kinds.items() if kind == "unit")

Value = Union[int, float, torch.Tensor]


def _check_scalar(op: str, name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{op}: {name} must be a number or a tensor, got {type(v).__name__}")
    v = float(v)
    if name in WHOLE_COLUMNS and not (math.isfinite(v) and v >= WHOLE_COLUMNS[name] and v == int(v)):
        raise ValueError(f"{op}: {name} must be a whole number >= {WHOLE_COLUMNS[name]}, got {v!r}")
    if name in UNIT_COLUMNS and not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{op}: {name} must be in [0, 1], got {v!r}")
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{op}: {name} must be finite and >= 0, got {v!r}")
    return v


def pack_params(columns: tuple, defaults: tuple, batch: int, device, values: Mapping[str, Optional[Value]], *,
                op: str) -> torch.Tensor:
    """[batch, len(columns)] float64 on `device`: each column from `values[name]` (a number, a
    0-d tensor or a [batch] tensor), its default where absent or None. Python numbers are checked
    here; a tensor's values are checked by the op on CPU (on CUDA a check would need a host sync)."""
    unknown = set(values) - set(columns)
    if unknown:
        raise ValueError(f"{op}: unknown parameters {sorted(unknown)}; known: {list(columns)}")
    cols = []
    for name, default in zip(columns, defaults):
        v = values.get(name)
        if v is None:
            v = default
        if isinstance(v, torch.Tensor):
            if v.dim() > 1 or (v.dim() == 1 and v.shape[0] not in (1, batch)):
                raise ValueError(f"{op}: {name} must be a number or a [{batch}] tensor, got shape {tuple(v.shape)}")
            if v.dtype == torch.bool or v.is_complex():
                raise TypeError(f"{op}: {name} must hold real numbers, got {v.dtype}")
            cols.append(v.to(device=device, dtype=torch.float64).reshape(-1).expand(batch))
        else:
            cols.append(torch.full((batch,), _check_scalar(op, name, v), dtype=torch.float64, device=device))
    return torch.stack(cols, dim=1).contiguous()


def pack_select_params(batch: int, device, values: Mapping[str, Optional[Value]], *,
                       op: str = "select") -> torch.Tensor:
    """select's pack [batch, len(SELECT_PARAM_COLUMNS)] (see pack_params)."""
    return pack_params(SELECT_PARAM_COLUMNS, SELECT_PARAM_DEFAULTS, batch, device, values, op=op)
