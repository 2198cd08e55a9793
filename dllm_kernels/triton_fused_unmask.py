"""Triton implementation of `torch.ops.dllm.fused_unmask` (docs/fused_unmask.md).

`fused_unmask_triton` takes exactly the op's arguments (csrc/fused_unmask_args.h), checks them as
the C++ op does, reads every number from the per-sequence float64 parameter pack on the device, and runs the step in two or three kernel launches with no host
synchronisation, so it can be captured in a CUDA graph:

1. statistics of every read row (triton_kernels/fused_unmask_stats.py): one program per row, or, when
   rows are few, each row split over several programs plus a tiny merge launch;
2. the per-sequence policy (triton_kernels/fused_unmask_policy.py).

On CPU tensors it runs only under the Triton interpreter (TRITON_INTERPRET=1), which is how the
tests check it against the C++ op on machines without a GPU.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from ._triton_pkg import triton_kernels_module
from .triton_checks import ArgChecks, check_pack_values, default_pack
from .fused_unmask_params import UNMASK_PARAM_COLUMNS, UNMASK_PARAM_DEFAULTS, UNMASK_PARAM_KINDS

policy_kernel = triton_kernels_module("fused_unmask_policy").policy_kernel
_stats = triton_kernels_module("fused_unmask_stats")
row_stats_kernel, split_stats_kernel, merge_stats_kernel = (
    _stats.row_stats_kernel, _stats.split_stats_kernel, _stats.merge_stats_kernel)
N_PART_F, N_PART_I = _stats.N_PART_F, _stats.N_PART_I
assert tuple(UNMASK_PARAM_COLUMNS) == triton_kernels_module("fused_unmask_common").UNMASK_PARAM_COLUMNS, (
    "fused_unmask_common.py's pack columns differ from csrc/include/dllm/fused_unmask_params.h")
_COL = {name: i for i, name in enumerate(UNMASK_PARAM_COLUMNS)}

STATE_COLUMNS = 11


class FusedUnmaskArgumentError(ValueError, RuntimeError):
    """A bad argument: a ValueError, and a RuntimeError like the C++ op's TORCH_CHECK failures."""


_CHECKS = ArgChecks("fused_unmask", FusedUnmaskArgumentError)
_check, _check_tensor = _CHECKS.check, _CHECKS.tensor


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# The widest vector a policy program sorts (register tiles of this many int64): rows up to this
# long rank their blocks in one sort.
POLICY_SORT_MAX = 4096
# Longer rows sort chunks of this many words and binary-search them: narrower than one sort of the
# row, so the chunk sort compiles in seconds (a 4,096-wide one takes about a minute of CPU).
POLICY_RANK_CHUNK = 1024


def policy_sort_n(L: int, sort_n: Optional[int] = None) -> int:
    """SORT_N of the policy kernels from the row length only (a block never exceeds L): the next
    power of two, or 0 (sorted chunks) past POLICY_SORT_MAX. `sort_n` (tests) forces a value."""
    if sort_n is not None:
        return sort_n
    return _next_pow2(L) if L <= POLICY_SORT_MAX else 0


def policy_scratch(B: int, L: int, sort_n: int, stand_in: torch.Tensor, rank_chunk: Optional[int] = None):
    """(scratch, row stride, RANK_CHUNK) for the policy kernels' long-block ranking (SORT_N = 0): per
    sequence the row length rounded up to RANK_CHUNK sorted words, then L ranks, then L of
    LocalLeap's next anchors. The one-sort ranking needs none (an int64 `stand_in`, never read).
    `rank_chunk` (tests, a power of two) forces the chunk width."""
    chunk = rank_chunk or POLICY_RANK_CHUNK
    if sort_n > 0:
        return stand_in, 0, chunk
    _check(chunk & (chunk - 1) == 0 and chunk <= 1 << 16, f"rank_chunk must be a power of two <= 65536, got {chunk}")
    width = -(-L // chunk) * chunk + 2 * L
    return torch.empty((B, width), dtype=torch.int64, device=stand_in.device), width, chunk


def stats_layout(n_rows: int, V: int, device: torch.device, block_v: Optional[int] = None,
                 vocab_splits: Optional[int] = None):
    """(BLOCK_V, splits, chunk) from shapes only. Enough rows fill the GPU with one program per row;
    with fewer rows each row's vocabulary is split so that about two programs run per SM."""
    if block_v is None:
        block_v = min(_next_pow2(V), 1024 if _interpreting() else 2048)
    if vocab_splits is None:
        vocab_splits = 1
        target = 2 * _sm_count(device)
        if device.type == "cuda" and n_rows < target:
            vocab_splits = min(-(-target // max(n_rows, 1)), -(-V // (4 * block_v)), 64)
    vocab_splits = max(1, min(vocab_splits, -(-V // block_v)))
    chunk = -(-V // vocab_splits)
    chunk = -(-chunk // block_v) * block_v  # whole tiles per split
    vocab_splits = -(-V // chunk)
    return block_v, vocab_splits, chunk


def launch_stats(logits, row_stats, flags, seq, row_start_t, suppress_t, n_suppress, zero_t, n_zero, x0, conf,
                 pprob, gumbel_t, L, R, V, read_args, common, block_v=None, vocab_splits=None):
    """The statistics pass of fused_unmask and select (triton_kernels/fused_unmask_stats.py): W
    exchanged partials per row merged in order, or one program per row, or each row split over
    several programs plus the merge. `flags`/`seq` are the read rule's tensors (fused_unmask: x and
    the state; select: the candidates and the per-sequence rows); `read_args` the read rule's
    numbers, `common` its constexprs (SAMPLING and EXPLICIT_NOISE included)."""
    if R == 0:
        return
    merge_common = {k: v for k, v in common.items() if k != "EXPLICIT_NOISE"}
    if row_stats is not None:
        from .triton_row_stats import row_partials_for_merge

        W = row_stats.shape[0]
        part_f, part_i = row_partials_for_merge(row_stats)
        merge_stats_kernel[(R, x0.shape[0])](
            part_f, part_i, flags, seq, row_start_t, zero_t, n_zero, x0, conf, pprob, L, R, V,
            **read_args, N_SPLITS=W, SPLITS_PAD=_next_pow2(W), **merge_common, num_warps=1)
        return
    B = x0.shape[0]
    block_v, n_splits, chunk = stats_layout(B * R, V, logits.device, block_v, vocab_splits)
    warps = 8 if block_v >= 2048 else 4
    if n_splits == 1:
        row_stats_kernel[(R, B)](
            logits, logits.stride(0), logits.stride(1), gumbel_t, flags, seq, row_start_t, suppress_t,
            n_suppress, zero_t, n_zero, x0, conf, pprob, L, R, V, **read_args, **common, BLOCK_V=block_v,
            num_warps=warps)
        return
    part_f = torch.empty((B, R, n_splits, N_PART_F), dtype=torch.float32, device=x0.device)
    part_i = torch.empty((B, R, n_splits, N_PART_I), dtype=torch.int32, device=x0.device)
    split_stats_kernel[(n_splits, R, B)](
        logits, logits.stride(0), logits.stride(1), gumbel_t, flags, seq, row_start_t, suppress_t,
        n_suppress, part_f, part_i, L, R, V, chunk, **read_args, N_SPLITS=n_splits, **common,
        BLOCK_V=block_v, num_warps=warps)
    merge_stats_kernel[(R, B)](
        part_f, part_i, flags, seq, row_start_t, zero_t, n_zero, x0, conf, pprob, L, R, V,
        **read_args, N_SPLITS=n_splits, SPLITS_PAD=_next_pow2(n_splits), **merge_common, num_warps=1)


def fused_unmask_triton(logits, x, conf, state, mask_id, eos_id, params=None, row_start=None, gumbel_u=None,
                        rank_u=None, suppress_ids=None, zero_conf_ids=None, delimiter_ids=None, filter_w1=None,
                        filter_b1=None, filter_w2=None, filter_b2=None, row_stats=None, rule=0, conf_kind=0,
                        shift=False, graded=False, random_remasking=False, adaptive_block=False, eotp=False,
                        early_stop=False, vocab_size=0, *, block_v: Optional[int] = None,
                        vocab_splits: Optional[int] = None, policy_tile: Optional[int] = None,
                        sort_n: Optional[int] = None, rank_chunk: Optional[int] = None):
    """One fused_unmask step in Triton: the op's arguments, names and order (csrc/fused_unmask_args.h),
    so it is registered as the op's CUDA kernel as it stands. Updates x, conf and state in place;
    returns (x0, transfer, window_stats). The keyword-only layout knobs (never passed by the op) let
    tests force the split-vocabulary layout, the policy tile and the policy's ranking (sort_n=0:
    sorted chunks of rank_chunk words)."""
    B, R, V, L = _CHECKS.step_head(logits, x, row_stats, vocab_size, gumbel_u)
    _check_tensor(conf, logits, "conf", torch.float32, (B, L))
    _check_tensor(state, logits, "state", torch.int64, (B, STATE_COLUMNS))
    _check(R <= L, f"logits has R = {R} rows, more than the L = {L} positions of x (need R <= L)")
    if row_start is not None:
        _check_tensor(row_start, logits, "row_start", torch.int64, (B,))
        if row_start.device.type == "cpu":  # on a GPU this would sync: rows outside [0, R) are not read
            _check(int(row_start.min()) >= 0, f"row_start must be >= 0, got {int(row_start.min())}")
    _check(0 <= mask_id < V, f"mask_id must be in [0, {V}), got {mask_id}")
    _check(0 <= eos_id < V, f"eos_id must be in [0, {V}), got {eos_id}")
    _check(eos_id != mask_id, "eos_id must differ from mask_id")
    if params is not None:
        _check_tensor(params, logits, "params", torch.float64, (B, len(UNMASK_PARAM_COLUMNS)))
        check_pack_values(params, UNMASK_PARAM_COLUMNS, UNMASK_PARAM_KINDS, _CHECKS, bound_first=True)
    ids = dict(suppress_ids=suppress_ids, zero_conf_ids=zero_conf_ids, delimiter_ids=delimiter_ids)
    fw, fh = _CHECKS.step_tail(logits, (B, R, V, L), gumbel_u, rank_u, ids, rule, conf_kind,
                               (filter_w1, filter_b1, filter_w2, filter_b2), _interpreting())
    all_filter = fw > 0

    x0 = x.clone()
    transfer = torch.zeros((B, L), dtype=torch.bool, device=x.device)
    window_stats = torch.empty((B, 3), dtype=torch.float32, device=x.device)
    pprob = torch.empty((B, L), dtype=torch.float32, device=x.device)

    # Absent optional tensors: any tensor of the right element type stands in; constexpr flags or
    # zero counts keep the kernels from reading it.
    n_suppress = suppress_ids.numel() if suppress_ids is not None else 0
    n_zero = zero_conf_ids.numel() if zero_conf_ids is not None else 0
    n_delim = delimiter_ids.numel() if delimiter_ids is not None else 0
    suppress_t = suppress_ids if n_suppress else x
    zero_t = zero_conf_ids if n_zero else x
    delim_t = delimiter_ids if n_delim else x
    row_start_t = row_start if row_start is not None else x
    pack = params if params is not None else default_pack(x.device, UNMASK_PARAM_DEFAULTS)
    pack_stride = pack.stride(0) if params is not None else 0
    # Whether a sequence samples is in the pack, on the device: any pack may (the kernels take the
    # clean argmax where its temperature is 0); the defaults never do.
    sampling = params is not None
    explicit_noise = sampling and gumbel_u is not None
    gumbel_t = gumbel_u if explicit_noise else conf
    read_args = dict(mask_id=mask_id, shift=int(bool(shift)), eotp=int(bool(eotp)),
                     adaptive_block=int(bool(adaptive_block)), params_ptr=pack, params_stride=pack_stride)

    # READ_FROM=0: rows chosen by the state; each sequence's temperature from its row of the pack.
    common = dict(HAS_ROW_START=row_start is not None, CONF_KIND=int(conf_kind), READ_FROM=0,
                  TEMP_COL=_COL["temperature"])
    launch_stats(logits, row_stats, x, state, row_start_t, suppress_t, n_suppress, zero_t, n_zero, x0, conf,
                 pprob, gumbel_t, L, R, V, dict(read_args, temperature=0.0),
                 dict(common, SAMPLING=sampling, EXPLICIT_NOISE=explicit_noise), block_v, vocab_splits)

    if policy_tile is None:
        # From the shapes only (the block length is on the device): a block of up to L positions
        # fits one tile where it can; ranks then take one matrix.
        policy_tile = min(max(16, _next_pow2(L)), 64)
    sort_n = policy_sort_n(L, sort_n)
    scratch, scratch_stride, rank_chunk = policy_scratch(B, L, sort_n, state, rank_chunk)
    w_t = filter_w1 if all_filter else conf
    policy_kernel[(B,)](
        x, x0, conf, pprob, rank_u if rank_u is not None else conf, transfer, window_stats, state,
        scratch, scratch_stride, row_start_t, delim_t, n_delim, w_t, filter_b1 if all_filter else conf,
        filter_w2 if all_filter else conf, filter_b2 if all_filter else conf, fw, fh, L, R,
        eos_id=eos_id, graded=int(bool(graded)), early_stop=int(bool(early_stop)), **read_args,
        RULE=int(rule), RANDOM_RANK=bool(random_remasking) and rule in (0, 4),
        HAS_RANK_U=rank_u is not None, HAS_ROW_START=row_start is not None, TILE=policy_tile,
        FW_PAD=max(16, _next_pow2(fw)), H_CHUNK=min(32, max(16, _next_pow2(fh))), SORT_N=sort_n,
        RANK_CHUNK=rank_chunk, num_warps=8 if max(policy_tile, sort_n) >= 64 or sort_n == 0 else 4)
    return x0, transfer, window_stats
