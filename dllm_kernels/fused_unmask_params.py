"""The per-request parameter pack of `fused_unmask`: one float64 column per numeric parameter.

The columns, their defaults and range kinds are defined once, in C++
(csrc/include/dllm/fused_unmask_params.h), and read here from the native library: `steps`, then the rules' columns (select's, at the same
indices), then the block scheduler's. A value may be a Python number (the same for every
sequence) or a [B] tensor, so one batch serves requests with different policies; tensor values
travel to the kernels as data, so changing them neither recompiles a `torch.compile`d caller nor
needs a new CUDA-graph capture.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from . import _native  # noqa: F401  (the op that names the columns)
from .select_params import SELECT_PARAM_COLUMNS, Value, pack_params

_names, _defaults, _kinds = torch.ops.dllm.fused_unmask_param_columns()
UNMASK_PARAM_COLUMNS: tuple = tuple(_names)
UNMASK_PARAM_DEFAULTS: tuple = tuple(_defaults)
UNMASK_PARAM_KINDS: tuple = tuple(_kinds)  # each column's range kind, as select_params.SELECT_PARAM_KINDS
UNMASK_DEFAULTS: Mapping[str, float] = dict(zip(UNMASK_PARAM_COLUMNS, UNMASK_PARAM_DEFAULTS))
assert UNMASK_PARAM_COLUMNS[1:len(SELECT_PARAM_COLUMNS)] == SELECT_PARAM_COLUMNS[1:], (
    "the rules' columns must sit at the same indices in both packs")


def pack_unmask_params(batch: int, device, values: Mapping[str, Optional[Value]], *,
                       op: str = "fused_unmask") -> torch.Tensor:
    """fused_unmask's pack [batch, len(UNMASK_PARAM_COLUMNS)] float64 (select_params.pack_params)."""
    return pack_params(UNMASK_PARAM_COLUMNS, UNMASK_PARAM_DEFAULTS, batch, device, values, op=op)
