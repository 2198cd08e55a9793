"""select, stage 2: the rule over each sequence's candidates (csrc/cpu/policy_cpu.h select_step).

One program per sequence (grid (B,)). The block is the caller's [start, end) and the candidates
are the rows the statistics pass read there with a valid conf (the same read rule, READ_FROM);
the rule is fused_unmask's (fused_unmask_policy.mark_selection). Its numbers are loaded from that
sequence's row of the float64 parameter pack and compared in float32, as the C++ op does, so a
new threshold needs neither a recompile nor a new CUDA-graph capture.
"""
import triton
import triton.language as tl

from .fused_unmask_common import (COL_ANCHOR, COL_COUNT, COL_FACTOR, COL_FILTER_THRESHOLD, COL_RELAXED, COL_THRESHOLD,
                            COL_WINDOW, SELECT_PARAM_COLUMNS, load_select_seq)  # noqa: F401 (columns: launcher)
from .fused_unmask_policy import count_candidates, mark_selection

@triton.jit
def select_kernel(flags_ptr, x_ptr, x0_ptr, conf_ptr, rank_u_ptr, transfer_ptr, seq_ptr, scratch_ptr,
                  scratch_stride, params_ptr,
                  params_stride, row_start_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, filter_width,
                  filter_hidden, L, R, shift, graded, commit, RULE: tl.constexpr,
                  RANDOM_RANK: tl.constexpr, HAS_RANK_U: tl.constexpr, HAS_ROW_START: tl.constexpr,
                  READ_FROM: tl.constexpr, TILE: tl.constexpr, FW_PAD: tl.constexpr,
                  H_CHUNK: tl.constexpr, SORT_N: tl.constexpr, RANK_CHUNK: tl.constexpr):
    """Sequence b: the rule's choice into `transfer` (zero on entry), then x = x0 there if commit."""
    b = tl.program_id(0).to(tl.int64)
    flags_row = flags_ptr + b * L  # READ_FLAGS: the candidates as int8 (READ_ALL: not read)
    conf_row = conf_ptr + b * L
    transfer_row = transfer_ptr + b * L
    row_start = 0
    if HAS_ROW_START:
        row_start = tl.load(row_start_ptr + b)
    start, end, seed, offset = load_select_seq(seq_ptr + b * 4, L)
    prm = params_ptr + b * params_stride
    k = tl.load(prm + COL_COUNT).to(tl.int64)
    threshold = tl.load(prm + COL_THRESHOLD).to(tl.float32)
    factor = tl.load(prm + COL_FACTOR).to(tl.float32)
    anchor_threshold = tl.load(prm + COL_ANCHOR).to(tl.float32)
    relaxed_threshold = tl.load(prm + COL_RELAXED).to(tl.float32)
    window = tl.load(prm + COL_WINDOW).to(tl.int64)
    filter_threshold = tl.load(prm + COL_FILTER_THRESHOLD).to(tl.float32)

    # The read rule with the caller's block as generation range and span: active, flag == 1
    # (mask_id), no span test (eotp = 1).
    active = start <= end
    n_cand = count_candidates(flags_row, conf_row, L, active, start, end, start, end, row_start, R,
                              shift, 1, 1, start, end, READ_FROM, TILE)
    mark_selection(flags_row, conf_row, rank_u_ptr + b * L, transfer_row, scratch_ptr + b * scratch_stride,
                   L, active, start, end, start, end, row_start, R, shift, 1, 1, start, end, seed, offset, n_cand,
                   tl.minimum(k, n_cand), threshold, factor, anchor_threshold, relaxed_threshold,
                   window, graded, filter_threshold, w1_ptr, b1_ptr, w2_ptr, b2_ptr, filter_width,
                   filter_hidden, RULE, RANDOM_RANK, HAS_RANK_U, READ_FROM, TILE, FW_PAD, H_CHUNK,
                   SORT_N, RANK_CHUNK)
    if commit != 0:
        tl.debug_barrier()  # the selection above was written by other threads of this program
        for p0 in range(start, end, TILE):
            pos = p0 + tl.arange(0, TILE)
            inb = pos < end
            sel = tl.load(transfer_row + pos, mask=inb, other=0) != 0
            pred = tl.load(x0_ptr + b * L + pos, mask=sel, other=0)
            tl.store(x_ptr + b * L + pos, pred, mask=sel)
