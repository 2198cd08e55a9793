"""Triton implementation of `torch.ops.dllm.lm_head_row_stats` (registered for CUDA).

`lm_head_row_stats_triton` takes the op's arguments (csrc/ops.cpp), checks them as the C++ op does
(csrc/lm_head_row_stats_args.h) and launches the fused GEMM + statistics kernel, with the
vocabulary split over several programs when the rows are few, then (more than one split) the
in-order merge; no host synchronisation. On CPU tensors it runs only under the Triton interpreter
(TRITON_INTERPRET=1), where it is tested at small shapes.
"""
from __future__ import annotations

import torch

from ._triton_pkg import triton_kernels_module
from .row_stats import MAX_MERGED_PARTIALS, ROW_STATS_COLUMNS
from .triton_checks import LOGITS_DTYPES, ArgChecks
from .triton_fused_unmask import _interpreting, _next_pow2

_kernels = triton_kernels_module("lm_head_row_stats")


class LmHeadRowStatsArgumentError(ValueError, RuntimeError):
    """A bad argument: a ValueError, and a RuntimeError like the C++ op's TORCH_CHECK failures."""


_CHECKS = ArgChecks("lm_head_row_stats", LmHeadRowStatsArgumentError)
# Programs the split aims at: enough to fill a large GPU (about 4 per SM on 132 SMs).
_TARGET_PROGRAMS = 512


def _same_device(t, hidden, name):
    _CHECKS.check(t.device == hidden.device, f"{name} is on {t.device} but hidden is on {hidden.device}")


def _blocks(N: int, V: int, d: int):
    """(BLOCK_M, BLOCK_N, BLOCK_K, splits, span): tiles, and the vocabulary split so that row tiles
    x splits reach _TARGET_PROGRAMS (at most MAX_MERGED_PARTIALS splits, each >= one tile)."""
    small = _interpreting()
    block_m = 16 if N <= 16 or small else (32 if N <= 32 else 64)
    block_n = 32 if small else 128
    block_k = 16 if small else 64
    row_tiles = -(-N // block_m)
    tiles = -(-V // block_n)
    splits = max(1, min(tiles, MAX_MERGED_PARTIALS, _TARGET_PROGRAMS // row_tiles))
    span = -(-tiles // splits) * block_n
    splits = -(-V // span)
    return block_m, block_n, block_k, splits, span


def lm_head_row_stats_triton(hidden, weight, bias, positions, seed=None, offset=None, temperature=None,
                             suppress_ids=None, conf_kind=0, vocab_start=0, *, splits=None):
    """The merged partials [B, R, C] float64 of hidden [B, R, d] @ weight[V, d].T (+ bias).
    `splits` forces the number of vocabulary splits (tests)."""
    check = _CHECKS.check
    check(isinstance(hidden, torch.Tensor) and hidden.dim() == 3, "hidden must be 3-D [B, R, d]")
    check(hidden.dtype in LOGITS_DTYPES, f"hidden must be float32, float16 or bfloat16, got {hidden.dtype}")
    B, R, d = hidden.shape
    check(B > 0, "empty batch (hidden has B = 0)")
    check(d >= 1, f"hidden must have d >= 1, got d = {d}")
    _same_device(weight, hidden, "weight")
    check(weight.dim() == 2 and weight.shape[1] == d and weight.shape[0] >= 1,
          f"weight must be [V >= 1, d = {d}] (the LM head, or the tied embedding), got {list(weight.shape)}")
    check(weight.dtype == hidden.dtype, f"weight must have hidden's dtype {hidden.dtype}, got {weight.dtype}")
    V = weight.shape[0]
    for name, t, dtype, shape in (("bias", bias, hidden.dtype, (V,)), ("positions", positions, torch.int64, (B, R)),
                                  ("seed", seed, torch.int64, (B,)), ("offset", offset, torch.int64, (B,)),
                                  ("temperature", temperature, torch.float64, (B,))):
        if t is not None:
            _same_device(t, hidden, name)
            _CHECKS.tensor(t, t, name, dtype, shape)  # its own device: hidden's was checked above
    if suppress_ids is not None:
        _same_device(suppress_ids, hidden, "suppress_ids")
        _CHECKS.ids(suppress_ids, suppress_ids, "suppress_ids", 2 ** 63 - 1)
    _CHECKS.partial_tail(hidden.device, temperature, conf_kind, vocab_start, V, _interpreting())
    N = B * R
    n_cols = len(ROW_STATS_COLUMNS)
    out = torch.empty((B, R, n_cols), dtype=torch.float64, device=hidden.device)
    if N == 0:
        return out
    h = hidden.reshape(N, d)
    if h.stride(1) != 1:
        h = h.contiguous()
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    block_m, block_n, block_k, n_splits, span = _blocks(N, V, d)
    if splits is not None:  # ceil(V / splits) ids per split, rounded up to whole tiles
        per_split = -(-V // splits)
        span = -(-per_split // block_n) * block_n
        n_splits = -(-V // span)
    part = out if n_splits == 1 else torch.empty((n_splits, N, n_cols), dtype=torch.float64, device=hidden.device)
    n_suppress = suppress_ids.numel() if suppress_ids is not None else 0
    _kernels.lm_head_partial_kernel[(-(-N // block_m), n_splits)](
        h, w, bias if bias is not None else h, positions, seed if seed is not None else positions,
        offset if offset is not None else positions, temperature if temperature is not None else out,
        suppress_ids if n_suppress else positions, n_suppress, part, N, R, d, V, int(vocab_start), span,
        h.stride(0), w.stride(0), HAS_BIAS=bias is not None, HAS_SEED=seed is not None,
        HAS_OFFSET=offset is not None, SAMPLING=temperature is not None, CONF_KIND=int(conf_kind),
        IEEE_DOT=hidden.dtype == torch.float32, UPCAST=_interpreting() and hidden.dtype == torch.bfloat16, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4)
    if n_splits > 1:
        _kernels.merge_partials_kernel[(N,)](part, out, N, N_SPLITS=n_splits, SPLITS_PAD=_next_pow2(n_splits),
                                             CONF_KIND=int(conf_kind), num_warps=1)
    return out
