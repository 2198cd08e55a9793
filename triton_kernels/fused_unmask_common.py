"""Pieces shared by the fused_unmask Triton kernels: the state row, the read rule, Philox.

Each helper mirrors a function of csrc/include/dllm/policy.h or philox.h (named in its docstring),
so the statistics pass and the policy stage decide "is this row read?" exactly as the C++ op does,
without talking to each other. Semantics: docs/fused_unmask.md.
"""
import triton
import triton.language as tl

# State columns (docs/fused_unmask.md, "State columns").
GEN_START = tl.constexpr(0)
GEN_END = tl.constexpr(1)
BLOCK_START = tl.constexpr(2)
BLOCK_END = tl.constexpr(3)
STEP = tl.constexpr(4)
BLOCK_MASKED = tl.constexpr(5)
BLOCK_REMAINING = tl.constexpr(6)
END_POS = tl.constexpr(7)
DONE = tl.constexpr(8)
SEED = tl.constexpr(9)
OFFSET = tl.constexpr(10)
STATE_COLS = 11

# Which rows a pass reads (constexpr READ_FROM): fused_unmask's rule over the state and the masked
# tokens, or select's caller-given candidates inside per-sequence bounds: flags read in place of
# the tokens (the caller's bool candidates viewed as int8, compared with mask_id = 1), or all.
READ_MASKED = tl.constexpr(0)
READ_FLAGS = tl.constexpr(1)
READ_ALL = tl.constexpr(2)
# select's per-sequence row (int64 [B, SEQ_COLS]): the block [start, end) and the noise key.
SEQ_START = tl.constexpr(0)
SEQ_END = tl.constexpr(1)
SEQ_SEED = tl.constexpr(2)
SEQ_OFFSET = tl.constexpr(3)
SEQ_COLS = 4

# Columns of the float64 parameter packs (csrc/include/dllm/select_params.h, fused_unmask_params.h):
# column 0 is the count (select's k, fused_unmask's steps), the rules' columns follow at the same
# indices in both, then fused_unmask's block scheduler. The launchers check these tuples against
# the native lists at import.
SELECT_PARAM_COLUMNS = ("k", "threshold", "factor", "anchor_threshold", "relaxed_threshold", "window",
                        "temperature", "filter_threshold")
UNMASK_PARAM_COLUMNS = ("steps",) + SELECT_PARAM_COLUMNS[1:] + ("block_length", "block_delta",
                                                                "block_window_fraction")
COL_COUNT = tl.constexpr(0)
COL_THRESHOLD = tl.constexpr(1)
COL_FACTOR = tl.constexpr(2)
COL_ANCHOR = tl.constexpr(3)
COL_RELAXED = tl.constexpr(4)
COL_WINDOW = tl.constexpr(5)
COL_TEMPERATURE = 6  # read by the statistics pass (TEMP_COL)
COL_FILTER_THRESHOLD = tl.constexpr(7)
COL_BLOCK_LENGTH = tl.constexpr(8)
COL_BLOCK_DELTA = tl.constexpr(9)
COL_BLOCK_WINDOW_FRACTION = tl.constexpr(10)


@triton.jit
def load_state(state_row, L):
    """policy.h load_state: every position clamped into [0, L] and ordered.

    (min/max written inline: nested @jit calls are costly under the interpreter.)"""
    gen_start = tl.minimum(tl.maximum(tl.load(state_row + GEN_START), 0), L)
    gen_end = tl.minimum(tl.maximum(tl.load(state_row + GEN_END), gen_start), L)
    block_start = tl.minimum(tl.maximum(tl.load(state_row + BLOCK_START), gen_start), gen_end)
    block_end = tl.minimum(tl.maximum(tl.load(state_row + BLOCK_END), block_start), gen_end)
    step = tl.maximum(tl.load(state_row + STEP), 0)
    block_masked = tl.maximum(tl.load(state_row + BLOCK_MASKED), 0)
    block_remaining = tl.maximum(tl.load(state_row + BLOCK_REMAINING), 0)
    end_pos = tl.minimum(tl.maximum(tl.load(state_row + END_POS), gen_start), gen_end)
    done = tl.load(state_row + DONE) != 0
    seed = tl.load(state_row + SEED)
    offset = tl.load(state_row + OFFSET)
    return (gen_start, gen_end, block_start, block_end, step, block_masked, block_remaining, end_pos,
            done, seed, offset)


@triton.jit
def load_select_seq(seq_row, L):
    """select's (start, end, seed, offset), bounds clamped into 0 <= start <= end <= L (the op
    checks them on CPU only: on a GPU the check would sync)."""
    start = tl.minimum(tl.maximum(tl.load(seq_row + SEQ_START), 0), L)
    end = tl.minimum(tl.maximum(tl.load(seq_row + SEQ_END), start), L)
    return start, end, tl.load(seq_row + SEQ_SEED), tl.load(seq_row + SEQ_OFFSET)


@triton.jit
def pack_count(v, lo):
    """fused_unmask_params.h pack_count: a float64 count column as int64, at least `lo` (NaN too):
    the op checks the pack on CPU only."""
    return tl.where(v >= lo, tl.minimum(v, 9.0e15), lo * 1.0).to(tl.int64)


@triton.jit
def load_block_params(prm):
    """The block scheduler's columns of one sequence's row `prm` of fused_unmask's pack:
    (block_length, block_delta, block_window_fraction), compared in float32 as the C++ does."""
    block_length = pack_count(tl.load(prm + COL_BLOCK_LENGTH), 1)
    block_delta = tl.load(prm + COL_BLOCK_DELTA).to(tl.float32)
    block_window_fraction = tl.load(prm + COL_BLOCK_WINDOW_FRACTION).to(tl.float32)
    return block_length, block_delta, block_window_fraction


@triton.jit
def read_token(row, pos, in_seq, mask_id, READ_FROM: tl.constexpr):
    """What position_is_read compares with mask_id: x's token (READ_MASKED), the caller's
    candidate flag (READ_FLAGS, `row` the int8 flags, mask_id = 1), or mask_id itself (READ_ALL)."""
    if READ_FROM == READ_ALL:
        tok = tl.where(in_seq, mask_id, -1)
    else:
        tok = tl.load(row + pos, mask=in_seq, other=-1)
    return tok


@triton.jit
def compute_span(gen_start, gen_end, block_start, block_end, block_remaining, end_pos, done,
                 block_length, adaptive_block, block_window_fraction):
    """policy.h compute_span: the rows this step may read, and the look-ahead window.

    Returns (active, opening, span_start, span_end, default_end, window_end).
    """
    # float32 product, truncated: the same rounding as the C++ `float * int64` cast.
    w_full = ((gen_end - gen_start).to(tl.float32) * block_window_fraction).to(tl.int64)
    is_open = block_remaining > 0
    s = tl.where(is_open, block_start, block_end)
    remaining = end_pos - s
    n = tl.minimum(remaining, block_length)
    w = tl.minimum(w_full, remaining)
    reach = tl.where((adaptive_block != 0) & (w > n), w, n)
    active = (done == 0) & (is_open | (s < end_pos))
    opening = active & (block_remaining == 0)
    span_end = tl.where(is_open, block_end, s + reach)
    default_end = tl.where(is_open, block_end, s + n)
    window_end = tl.where(is_open, tl.minimum(tl.maximum(block_start + w_full, block_start), end_pos),
                          s + tl.maximum(w, 0))
    return active, opening, s, span_end, default_end, window_end


@triton.jit
def position_is_read(pos, x_tok, active, gen_start, end_pos, span_start, span_end, row_start, R,
                     shift, eotp, mask_id):
    """policy.h position_is_read, for a scalar or a vector of positions `pos` with tokens `x_tok`."""
    r = pos - shift - row_start
    in_span = (pos >= span_start) & (pos < span_end)
    return (active & (x_tok == mask_id) & (pos >= gen_start) & (pos < end_pos) & (r >= 0) & (r < R)
            & ((eotp != 0) | in_span))


@triton.jit
def split_u64(v):
    """(low, high) 32-bit words of an int64 as uint32 (C++ static_cast<uint32_t>(v), (v >> 32))."""
    lo = (v & 0xFFFFFFFF).to(tl.uint32)
    hi = ((v >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return lo, hi


@triton.jit
def philox_uniform(c0, c1, c2, c3, k0, k1):
    """philox.h: first word of Philox4x32-10 on counter (c0..c3), key (k0, k1), as a uniform in (0, 1).

    All inputs uint32 (scalars or tensors of one shape). u = (r >> 9) * 2^-23 + 2^-24 is exact in
    float32, so every backend sees the same number.
    """
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return (c0 >> 9).to(tl.float32) * 1.1920928955078125e-07 + 5.9604644775390625e-08
