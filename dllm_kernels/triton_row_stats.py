"""Triton implementation of `torch.ops.dllm.row_stats` (registered for CUDA), and the reshaping
of exchanged partials into the split-row merge's layout for select / fused_unmask `row_stats=`.

`row_stats_triton` takes the op's arguments (csrc/ops.cpp), checks them as the C++ op does
(csrc/row_stats_args.h) and runs one launch with no host synchronisation (capturable in a CUDA
graph). On CPU tensors it runs only under the Triton interpreter (TRITON_INTERPRET=1).
"""
from __future__ import annotations

import torch

from ._triton_pkg import triton_kernels_module
from .row_stats import ROW_STATS_COLUMNS
from .triton_checks import ArgChecks
from .triton_fused_unmask import N_PART_F, N_PART_I, _interpreting, _next_pow2

_kernels = triton_kernels_module("row_stats")
assert tuple(ROW_STATS_COLUMNS) == _kernels.ROW_STATS_COLUMNS, (
    "triton_kernels/row_stats.py's columns differ from csrc/include/dllm/row_partial.h")


class RowStatsArgumentError(ValueError, RuntimeError):
    """A bad argument: a ValueError, and a RuntimeError like the C++ op's TORCH_CHECK failures."""


_CHECKS = ArgChecks("row_stats", RowStatsArgumentError)


def row_stats_triton(logits, positions, seed=None, offset=None, temperature=None, gumbel_u=None,
                     suppress_ids=None, conf_kind=0, vocab_start=0, *, block_v=None):
    """The partials [B, R, C] float64 of logits [B, R, V_slice] (docs/row_stats.md)."""
    B, R, V = _CHECKS.logits(logits, min_vocab=1)
    _CHECKS.tensor(positions, logits, "positions", torch.int64, (B, R))
    for name, t in (("seed", seed), ("offset", offset)):
        if t is not None:
            _CHECKS.tensor(t, logits, name, torch.int64, (B,))
    if temperature is not None:
        _CHECKS.tensor(temperature, logits, "temperature", torch.float64, (B,))
    if gumbel_u is not None:
        _CHECKS.tensor(gumbel_u, logits, "gumbel_u", torch.float32, (B, R, V))
    _CHECKS.ids(suppress_ids, logits, "suppress_ids", 2 ** 63 - 1)
    _CHECKS.partial_tail(logits.device, temperature, conf_kind, vocab_start, V, _interpreting())
    out = torch.empty((B, R, len(ROW_STATS_COLUMNS)), dtype=torch.float64, device=logits.device)
    if R == 0:
        return out
    n_suppress = suppress_ids.numel() if suppress_ids is not None else 0
    block_v = block_v or min(_next_pow2(V), 1024 if _interpreting() else 2048)
    _kernels.row_stats_kernel[(R, B)](
        logits, logits.stride(0), logits.stride(1), gumbel_u if gumbel_u is not None else out, positions,
        seed if seed is not None else positions, offset if offset is not None else positions,
        temperature if temperature is not None else out, suppress_ids if n_suppress else positions, n_suppress,
        out, R, V, int(vocab_start), HAS_SEED=seed is not None, HAS_OFFSET=offset is not None,
        SAMPLING=temperature is not None, CONF_KIND=int(conf_kind), EXPLICIT_NOISE=gumbel_u is not None,
        BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4)
    return out


def row_partials_for_merge(row_stats: torch.Tensor):
    """[W, B, R, C] float64 partials -> the split-row merge's (part_f [B, R, W, N_PART_F] float32,
    part_i [B, R, W, N_PART_I] int32) (triton_kernels/fused_unmask_stats.py). Device ops only."""
    by_row = row_stats.permute(1, 2, 0, 3)
    part_f = by_row[..., :N_PART_F].to(torch.float32).contiguous()
    part_i = by_row[..., N_PART_F:N_PART_F + N_PART_I].to(torch.int32).contiguous()
    return part_f, part_i
