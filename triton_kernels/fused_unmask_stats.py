"""fused_unmask, stage 1: one pass over every logits row the step reads (docs/fused_unmask.md §3-4).

Each program first decides from `x` and `state` whether its row is read (the rule of policy.h
position_is_read), so rows that are not needed are never loaded. A read row yields: the clean
maximum and its first index, the first-index argmax of the noisy logits `l + T*g` (Philox
Gumbel noise, or explicit uniforms), sum of exp and the entropy accumulator relative to the
maximum, the second-largest value (margin), and an invalid flag (NaN / +inf / all -inf).
Accumulation is float32 whatever the logits dtype.

Two layouts, chosen by shape on the host:
- `row_stats_kernel`: one program per row, tiles over the whole vocabulary (many rows);
- `split_stats_kernel` + `merge_stats_kernel`: each row's vocabulary split over several programs
  writing partial statistics, merged by a second tiny launch (few rows, e.g. one block at batch 1).
Both write x0, conf (in place, read positions only) and pprob (clean probability of x0).

The same kernels serve `select` (READ_FROM != READ_MASKED, fused_unmask_common.py): the rows read are
then the caller's candidates inside per-sequence bounds, each sequence's temperature comes from
its row of the parameter pack (column TEMP_COL), and an invalid row leaves x0 at x.
"""
import triton
import triton.language as tl

from .row_partial import fold_noisy_tile, fold_tile, merge_partials
from .fused_unmask_common import (READ_MASKED, compute_span, load_block_params, load_select_seq, load_state,
                            philox_uniform, position_is_read, read_token)

NEG_INF = tl.constexpr(float("-inf"))
# Largest Gumbel value our uniforms give: -log(-log(1 - 2^-24)) = 16.6355, rounded up. A tile whose
# clean maximum is more than T * GUMBEL_MAX below the best noisy value cannot win: skip its noise.
GUMBEL_MAX = tl.constexpr(16.65)
# Partial statistics per (row, split): float fields, then int fields.
N_PART_F = 6  # m1, m2, sum_exp, entropy, best noisy, clean value at the best noisy index
N_PART_I = 3  # first index of m1, index of the best noisy value, invalid flag


@triton.jit
def row_read_info(b, r, x_ptr, state_ptr, row_start_ptr, L, R, mask_id, shift, eotp, adaptive_block,
                  temperature, params_ptr, params_stride,
                  HAS_ROW_START: tl.constexpr, READ_FROM: tl.constexpr, TEMP_COL: tl.constexpr):
    """Is logits row r of sequence b read this step? Returns (read, position, seed, offset,
    temperature). fused_unmask: `state_ptr` is the state, `x_ptr` the tokens, the block length and
    window fraction come from the sequence's row of the pack; select: `state_ptr` holds the
    [B, SEQ_COLS] rows, `x_ptr` the candidate flags (READ_FLAGS)."""
    row_start = 0
    if HAS_ROW_START:
        row_start = tl.load(row_start_ptr + b)
    p = r + shift + row_start  # the position whose prediction row r holds
    in_seq = (p >= 0) & (p < L)
    tok = read_token(x_ptr + b * L, p, in_seq, mask_id, READ_FROM)
    if READ_FROM == READ_MASKED:
        (gen_start, gen_end, block_start, block_end, step, block_masked, block_remaining, end_pos,
         done, seed, offset) = load_state(state_ptr + b * 11, L)
        block_length, block_delta, block_window_fraction = load_block_params(params_ptr + b * params_stride)
        active, opening, span_start, span_end, default_end, window_end = compute_span(
            gen_start, gen_end, block_start, block_end, block_remaining, end_pos, done,
            block_length, adaptive_block, block_window_fraction)
        read = in_seq & position_is_read(p, tok, active, gen_start, end_pos, span_start, span_end,
                                         row_start, R, shift, eotp, mask_id)
    else:  # the caller's block is the whole span (eotp = 1: no span test)
        start, end, seed, offset = load_select_seq(state_ptr + b * 4, L)
        read = in_seq & position_is_read(p, tok, start <= end, start, end, start, end, row_start, R,
                                         shift, 1, mask_id)
    if TEMP_COL >= 0:  # per-sequence temperature, compared in float32 as the C++ does
        temperature = tl.load(params_ptr + b * params_stride + TEMP_COL).to(tl.float32)
    return read, p, seed, offset, temperature


@triton.jit
def scan_vocab(row_ptr, noise_ptr, v_lo, v_hi, suppress_ptr, n_suppress, seed, offset, pos,
               temperature, CONF_KIND: tl.constexpr, SAMPLING: tl.constexpr,
               EXPLICIT_NOISE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Statistics of row_ptr[v_lo:v_hi] (one row, or one split of it), float32.

    Returns (m1, m2, sum_exp, ent, bad, idx, noisy_best, noisy_idx, noisy_clean); sum_exp and ent
    are relative to m1: sum exp(l - m1) and sum exp(l - m1) * (l - m1).
    """
    # Philox key (seed lo, hi) and counter words (offset lo, hi), as philox.h noise_uniform.
    seed_lo = (seed & 0xFFFFFFFF).to(tl.uint32)
    seed_hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    off_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
    off_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    pos_u32 = pos.to(tl.uint32)  # read positions are in [0, L)
    m1 = NEG_INF
    m2 = NEG_INF
    sum_exp = 0.0
    ent = 0.0
    bad = 0
    idx = v_hi
    noisy_best = NEG_INF
    noisy_idx = v_hi
    noisy_clean = NEG_INF
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        inb = offs < v_hi
        v = tl.load(row_ptr + offs, mask=inb, other=NEG_INF).to(tl.float32)
        for i in range(n_suppress):  # suppressed ids are -inf before everything else
            v = tl.where(offs == tl.load(suppress_ptr + i), NEG_INF, v)
        m1, m2, sum_exp, ent, bad, idx, t_max = fold_tile(v, offs, v_hi, m1, m2, sum_exp, ent, bad, idx, 0,
                                                          CONF_KIND)

        if SAMPLING:  # (select: a sequence with temperature 0 takes the clean argmax)
            if (temperature > 0) & (t_max + temperature * GUMBEL_MAX >= noisy_best):
                if EXPLICIT_NOISE:
                    u = tl.load(noise_ptr + offs, mask=inb, other=0.5)
                else:
                    u = philox_uniform(offs.to(tl.uint32), pos_u32, off_lo, off_hi, seed_lo, seed_hi)
                noisy = v + temperature * -tl.log(-tl.log(u))
                noisy_best, noisy_idx, noisy_clean = fold_noisy_tile(
                    noisy, v, offs, v_hi, temperature > 0, noisy_best, noisy_idx, noisy_clean, 0)
    return m1, m2, sum_exp, ent, bad, idx, noisy_best, noisy_idx, noisy_clean


@triton.jit
def finish_row(m1, m2, sum_exp, ent, bad, idx, noisy_best, noisy_idx, noisy_clean, zero_conf_ptr, n_zero_conf,
               mask_id, temperature, out_at, x0_ptr, conf_ptr, pprob_ptr, CONF_KIND: tl.constexpr,
               SAMPLING: tl.constexpr, INVALID_KEEPS_X: tl.constexpr):
    """From a row's statistics to x0, conf, pprob (invalid row: conf = NaN, x0 = mask_id, or left
    as it is with INVALID_KEEPS_X)."""
    valid = (bad == 0) & (m1 != NEG_INF)
    if SAMPLING:
        # No noisy value above -inf (explicit uniforms outside (0, 1)): the index is the sentinel
        # V, never a token, so the row is invalid (as in the C++ op).
        noisy = temperature > 0
        valid = valid & (~noisy | (noisy_best > NEG_INF))
        x0 = tl.where(noisy, noisy_idx, idx)
        l_x0 = tl.where(noisy, noisy_clean, m1)
    else:
        x0 = idx
        l_x0 = m1
    s = tl.where(valid, sum_exp, 1.0)
    m = tl.where(valid, m1, 0.0)
    pprob = tl.math.div_rn(tl.exp(tl.where(valid, l_x0, 0.0) - m), s)
    if CONF_KIND == 1:
        conf = tl.math.div_rn(1.0 - tl.exp(tl.where(valid, m2, 0.0) - m), s)
    elif CONF_KIND == 2:
        conf = tl.math.div_rn(tl.where(valid, ent, 0.0), s) - tl.log(s)
    else:
        conf = pprob
    for i in range(n_zero_conf):
        conf = tl.where(x0 == tl.load(zero_conf_ptr + i), 0.0, conf)
    if INVALID_KEEPS_X:
        tl.store(x0_ptr + out_at, x0.to(tl.int64), mask=valid)
    else:
        tl.store(x0_ptr + out_at, tl.where(valid, x0.to(tl.int64), mask_id))
    tl.store(conf_ptr + out_at, tl.where(valid, conf, float("nan")))
    tl.store(pprob_ptr + out_at, tl.where(valid, pprob, 0.0))


@triton.jit
def row_stats_kernel(logits_ptr, stride_b, stride_r, gumbel_ptr, x_ptr, state_ptr, row_start_ptr,
                     suppress_ptr, n_suppress, zero_conf_ptr, n_zero_conf, x0_ptr, conf_ptr, pprob_ptr,
                     L, R, V, mask_id, temperature, shift, eotp, adaptive_block, params_ptr,
                     params_stride, HAS_ROW_START: tl.constexpr,
                     CONF_KIND: tl.constexpr, SAMPLING: tl.constexpr, EXPLICIT_NOISE: tl.constexpr,
                     BLOCK_V: tl.constexpr, READ_FROM: tl.constexpr, TEMP_COL: tl.constexpr):
    """One program per logits row (grid (R, B)): the whole vocabulary in tiles of BLOCK_V."""
    r = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    read, p, seed, offset, temperature = row_read_info(
        b, r, x_ptr, state_ptr, row_start_ptr, L, R, mask_id, shift, eotp, adaptive_block,
        temperature, params_ptr, params_stride,
        HAS_ROW_START, READ_FROM, TEMP_COL)
    if read:
        row_ptr = logits_ptr + b * stride_b + r * stride_r
        noise_ptr = gumbel_ptr + (b * R + r) * V
        m1, m2, sum_exp, ent, bad, idx, noisy_best, noisy_idx, noisy_clean = scan_vocab(
            row_ptr, noise_ptr, 0, V, suppress_ptr, n_suppress, seed, offset, p, temperature,
            CONF_KIND, SAMPLING, EXPLICIT_NOISE, BLOCK_V)
        finish_row(m1, m2, sum_exp, ent, bad, idx, noisy_best, noisy_idx, noisy_clean, zero_conf_ptr, n_zero_conf,
                   mask_id, temperature, b * L + p, x0_ptr, conf_ptr, pprob_ptr, CONF_KIND, SAMPLING,
                   READ_FROM != READ_MASKED)


@triton.jit
def split_stats_kernel(logits_ptr, stride_b, stride_r, gumbel_ptr, x_ptr, state_ptr, row_start_ptr,
                       suppress_ptr, n_suppress, part_f_ptr, part_i_ptr, L, R, V, chunk, mask_id,
                       temperature, shift, eotp, adaptive_block, params_ptr, params_stride, N_SPLITS: tl.constexpr, HAS_ROW_START: tl.constexpr,
                       CONF_KIND: tl.constexpr, SAMPLING: tl.constexpr, EXPLICIT_NOISE: tl.constexpr,
                       BLOCK_V: tl.constexpr, READ_FROM: tl.constexpr, TEMP_COL: tl.constexpr):
    """Grid (N_SPLITS, R, B): partial statistics of vocab [split * chunk, (split + 1) * chunk)."""
    split = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    read, p, seed, offset, temperature = row_read_info(
        b, r, x_ptr, state_ptr, row_start_ptr, L, R, mask_id, shift, eotp, adaptive_block,
        temperature, params_ptr, params_stride,
        HAS_ROW_START, READ_FROM, TEMP_COL)
    if read:
        row_ptr = logits_ptr + b * stride_b + r * stride_r
        noise_ptr = gumbel_ptr + (b * R + r) * V
        v_lo = split * chunk
        v_hi = tl.minimum(v_lo + chunk, V)
        m1, m2, sum_exp, ent, bad, idx, noisy_best, noisy_idx, noisy_clean = scan_vocab(
            row_ptr, noise_ptr, v_lo, v_hi, suppress_ptr, n_suppress, seed, offset, p, temperature,
            CONF_KIND, SAMPLING, EXPLICIT_NOISE, BLOCK_V)
        # An empty split (v_lo >= V) reports index V, which never wins the merge.
        idx = tl.where(idx >= v_hi, V, idx)
        noisy_idx = tl.where(noisy_idx >= v_hi, V, noisy_idx)
        at = (b * R + r) * N_SPLITS + split
        pf = part_f_ptr + at * 6
        tl.store(pf + 0, m1)
        tl.store(pf + 1, m2)
        tl.store(pf + 2, sum_exp)
        tl.store(pf + 3, ent)
        tl.store(pf + 4, noisy_best)
        tl.store(pf + 5, noisy_clean)
        pi = part_i_ptr + at * 3
        tl.store(pi + 0, idx)
        tl.store(pi + 1, noisy_idx)
        tl.store(pi + 2, bad)


@triton.jit
def merge_stats_kernel(part_f_ptr, part_i_ptr, x_ptr, state_ptr, row_start_ptr, zero_conf_ptr,
                       n_zero_conf, x0_ptr, conf_ptr, pprob_ptr, L, R, V, mask_id, temperature, shift,
                       eotp, adaptive_block, params_ptr, params_stride, N_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
                       HAS_ROW_START: tl.constexpr, CONF_KIND: tl.constexpr, SAMPLING: tl.constexpr,
                       READ_FROM: tl.constexpr, TEMP_COL: tl.constexpr):
    """Grid (R, B): merges the N_SPLITS partials of a read row and writes x0, conf, pprob."""
    r = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    read, p, seed, offset, temperature = row_read_info(
        b, r, x_ptr, state_ptr, row_start_ptr, L, R, mask_id, shift, eotp, adaptive_block,
        temperature, params_ptr, params_stride,
        HAS_ROW_START, READ_FROM, TEMP_COL)
    if read:
        k = tl.arange(0, SPLITS_PAD)
        km = k < N_SPLITS
        at = (b * R + r) * N_SPLITS + k
        m1s = tl.load(part_f_ptr + at * 6 + 0, mask=km, other=NEG_INF)
        m2s = tl.load(part_f_ptr + at * 6 + 1, mask=km, other=NEG_INF)
        sums = tl.load(part_f_ptr + at * 6 + 2, mask=km, other=0.0)
        ents = tl.load(part_f_ptr + at * 6 + 3, mask=km, other=0.0)
        nbest = tl.load(part_f_ptr + at * 6 + 4, mask=km, other=NEG_INF)
        ncleans = tl.load(part_f_ptr + at * 6 + 5, mask=km, other=NEG_INF)
        idxs = tl.load(part_i_ptr + at * 3 + 0, mask=km, other=V)
        nidxs = tl.load(part_i_ptr + at * 3 + 1, mask=km, other=V)
        bad = tl.max(tl.load(part_i_ptr + at * 3 + 2, mask=km, other=0), 0)

        m1, m2, sum_exp, ent, idx, noisy_max, noisy_idx, noisy_clean = merge_partials(
            m1s, m2s, sums, ents, nbest, ncleans, idxs, nidxs, V, CONF_KIND)
        finish_row(m1, m2, sum_exp, ent, bad, idx, noisy_max, noisy_idx, noisy_clean, zero_conf_ptr, n_zero_conf,
                   mask_id, temperature, b * L + p, x0_ptr, conf_ptr, pprob_ptr, CONF_KIND, SAMPLING,
                   READ_FROM != READ_MASKED)
