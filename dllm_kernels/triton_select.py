"""Triton implementation of `torch.ops.dllm.select`, the stateless selection step (docs/select.md).

`triton_select` takes exactly the op's arguments (csrc/ops.cpp), checks them as the C++ op does
(csrc/select_args.h) and runs in two or three launches with no host synchronisation, so it can be
captured in a CUDA graph:

1. statistics of the caller's candidate rows: fused_unmask's kernels (triton_kernels/fused_unmask_stats.py)
   with READ_FROM set to the caller's candidates and the per-sequence temperature read from the
   parameter pack, one program per row or the split-vocabulary layout (triton_fused_unmask.launch_stats);
2. the rule per sequence (triton_kernels/select_policy.py), its numbers read from the pack.

The pack's values (and bounds, token ids) are checked on CPU only, as the C++ op does: on a GPU a
check would need a sync. On CPU tensors it runs only under the Triton interpreter (TRITON_INTERPRET=1).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._triton_pkg import triton_kernels_module
from .select_params import SELECT_PARAM_COLUMNS, SELECT_PARAM_DEFAULTS, SELECT_PARAM_KINDS
from .triton_checks import ArgChecks, check_pack_values, default_pack
from .triton_fused_unmask import _interpreting, _next_pow2, launch_stats, policy_scratch, policy_sort_n

_policy = triton_kernels_module("select_policy")
select_kernel = _policy.select_kernel
assert tuple(SELECT_PARAM_COLUMNS) == _policy.SELECT_PARAM_COLUMNS, (
    "select_policy.py's pack columns differ from csrc/include/dllm/select_params.h")
_COL = {name: i for i, name in enumerate(SELECT_PARAM_COLUMNS)}
READ_FLAGS, READ_ALL = 1, 2  # fused_unmask_common.py READ_FROM
SEQ_COLS = 4                 # fused_unmask_common.py: start, end, seed, offset
# ATen's names of the dtypes, as the C++ op's messages print them.
_DTYPE_NAMES = {torch.bool: "Bool", torch.int64: "Long", torch.float32: "Float", torch.float64: "Double",
                torch.int32: "Int", torch.float16: "Half", torch.bfloat16: "BFloat16", torch.int8: "Char",
                torch.uint8: "Byte", torch.int16: "Short"}


class SelectArgumentError(ValueError, RuntimeError):
    """A bad argument: a ValueError, and a RuntimeError like the C++ op's TORCH_CHECK failures."""


def _dtype_name(dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype))


_CHECKS = ArgChecks("select", SelectArgumentError, _dtype_name)
_check, _check_tensor = _CHECKS.check, _CHECKS.tensor


def _check_bounds(bounds: torch.Tensor, L: int) -> None:
    if bounds.device.type != "cpu":
        return
    for b, (s, e) in enumerate(bounds.tolist()):
        _check(0 <= s <= e <= L, f"bounds must satisfy 0 <= start <= end <= L = {L}, got [{s}, {e}) "
                                 f"for sequence {b}")


def _sequence_rows(B, L, bounds, seed, offset, device) -> torch.Tensor:
    """[B, SEQ_COLS] int64: start, end, seed, offset per sequence (device copies only: no sync)."""
    seq = torch.zeros((B, SEQ_COLS), dtype=torch.int64, device=device)
    if bounds is not None:
        seq[:, 0:2].copy_(bounds)
    else:
        seq[:, 1].fill_(L)
    if seed is not None:
        seq[:, 2].copy_(seed)
    if offset is not None:
        seq[:, 3].copy_(offset)
    return seq


def triton_select(logits, x, candidates=None, params=None, bounds=None, row_start=None, seed=None,
                  offset=None, gumbel_u=None, rank_u=None, prev_conf=None, suppress_ids=None,
                  zero_conf_ids=None, filter_w1=None, filter_b1=None, filter_w2=None, filter_b2=None,
                  rule=1, conf_kind=0, shift=False, graded=False, random_remasking=False, commit=False,
                  row_stats=None, vocab_size=0, *,
                  block_v: Optional[int] = None, vocab_splits: Optional[int] = None,
                  policy_tile: Optional[int] = None, sort_n: Optional[int] = None,
                  rank_chunk: Optional[int] = None):
    """One select step in Triton: the op's arguments, names and order (csrc/ops.cpp), so it is
    registered as the op's CUDA kernel as it stands. Returns (x0, conf, transfer); writes x at the
    chosen positions only with `commit`. The keyword-only layout knobs (never passed by the op) let
    tests force the split-vocabulary layout, the rule's tile and its ranking (sort_n=0: sorted chunks
    of rank_chunk words)."""
    B, R, V, L = _CHECKS.step_head(logits, x, row_stats, vocab_size, gumbel_u)
    if candidates is not None:
        _check_tensor(candidates, logits, "candidates", torch.bool, (B, L))
    if params is not None:
        _check_tensor(params, logits, "params", torch.float64, (B, len(SELECT_PARAM_COLUMNS)))
        check_pack_values(params, SELECT_PARAM_COLUMNS, SELECT_PARAM_KINDS, _CHECKS)
    if bounds is not None:
        _check_tensor(bounds, logits, "bounds", torch.int64, (B, 2))
        _check_bounds(bounds, L)
    for name, t in (("row_start", row_start), ("seed", seed), ("offset", offset)):
        if t is not None:
            _check_tensor(t, logits, name, torch.int64, (B,))
    if prev_conf is not None:
        _check_tensor(prev_conf, logits, "prev_conf", torch.float32, (B, L))
    ids = dict(suppress_ids=suppress_ids, zero_conf_ids=zero_conf_ids)
    fw, fh = _CHECKS.step_tail(logits, (B, R, V, L), gumbel_u, rank_u, ids, rule, conf_kind,
                               (filter_w1, filter_b1, filter_w2, filter_b2), _interpreting())

    device = x.device
    x0 = x.clone()
    conf = prev_conf.clone() if prev_conf is not None else torch.full((B, L), float("nan"), device=device)
    transfer = torch.zeros((B, L), dtype=torch.bool, device=device)
    pprob = torch.empty((B, L), dtype=torch.float32, device=device)  # written by the shared pass, unused
    seq = _sequence_rows(B, L, bounds, seed, offset, device)
    pack = params if params is not None else default_pack(device, SELECT_PARAM_DEFAULTS)
    pack_stride = pack.stride(0) if params is not None else 0
    read_from = READ_FLAGS if candidates is not None else READ_ALL
    flags = candidates.view(torch.int8) if candidates is not None else x

    # Absent optional tensors: any tensor of the right element type stands in; constexpr flags or
    # zero counts keep the kernels from reading it.
    n_suppress = suppress_ids.numel() if suppress_ids is not None else 0
    n_zero = zero_conf_ids.numel() if zero_conf_ids is not None else 0
    suppress_t = suppress_ids if n_suppress else x
    zero_t = zero_conf_ids if n_zero else x
    row_start_t = row_start if row_start is not None else x
    # Whether a sequence samples is in the pack, on the device: any pack may (the kernels take the
    # clean argmax where its temperature is 0); the defaults never do.
    sampling = params is not None
    explicit_noise = sampling and gumbel_u is not None
    gumbel_t = gumbel_u if explicit_noise else conf
    # The caller's candidates through fused_unmask's read rule: flag == mask_id (1), no span test.
    read_args = dict(mask_id=1, shift=int(bool(shift)), eotp=1, adaptive_block=0, temperature=0.0,
                     params_ptr=pack, params_stride=pack_stride)
    common = dict(HAS_ROW_START=row_start is not None, CONF_KIND=int(conf_kind), SAMPLING=sampling,
                  READ_FROM=read_from, TEMP_COL=_COL["temperature"] if params is not None else -1)

    launch_stats(logits, row_stats, flags, seq, row_start_t, suppress_t, n_suppress, zero_t, n_zero, x0, conf,
                 pprob, gumbel_t, L, R, V, read_args, dict(common, EXPLICIT_NOISE=explicit_noise),
                 block_v, vocab_splits)

    if policy_tile is None:
        policy_tile = min(max(16, _next_pow2(L)), 64)  # the block may be the whole row
    sort_n = policy_sort_n(L, sort_n)
    scratch, scratch_stride, rank_chunk = policy_scratch(B, L, sort_n, seq, rank_chunk)
    all_filter = fw > 0
    select_kernel[(B,)](
        flags, x, x0, conf, rank_u if rank_u is not None else conf, transfer, seq, scratch, scratch_stride,
        pack, pack_stride,
        row_start_t, filter_w1 if all_filter else conf, filter_b1 if all_filter else conf,
        filter_w2 if all_filter else conf, filter_b2 if all_filter else conf, fw, fh, L, R,
        shift=int(bool(shift)), graded=int(bool(graded)), commit=int(bool(commit)), RULE=int(rule),
        RANDOM_RANK=bool(random_remasking) and rule in (0, 4), HAS_RANK_U=rank_u is not None,
        HAS_ROW_START=row_start is not None, READ_FROM=read_from, TILE=policy_tile,
        FW_PAD=max(16, _next_pow2(fw)), H_CHUNK=min(32, max(16, _next_pow2(fh))), SORT_N=sort_n,
        RANK_CHUNK=rank_chunk, num_warps=8 if max(policy_tile, sort_n) >= 64 or sort_n == 0 else 4)
    return x0, conf, transfer
