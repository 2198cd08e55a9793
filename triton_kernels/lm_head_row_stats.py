"""lm_head_row_stats: the LM head fused with the row-statistics pass (docs/lm_head_row_stats.md).

`lm_head_partial_kernel`, grid (row tiles, vocabulary splits): a program holds BLOCK_M rows of the
hidden states and walks its split of the vocabulary in tiles of BLOCK_N, each tile's logits
tl.dot(hidden, weight^T) accumulated in float32 over d and rounded to the input dtype (the logits
the unfused head would hold), then folded into each row's online statistics in registers (row_partial.fold_tile, the rule of
fused_unmask's pass): max and
first argmax, second max, sum of exp and entropy terms relative to the running max, the Gumbel-max
winner (Philox keyed by global ids, fused_unmask_common.philox_uniform), NaN/+inf. No logits reach
memory. Each (split, row) writes its partial (row_stats' layout); `merge_partials_kernel` merges a
row's splits in order with the rule of row_stats.cpp merge_row_partials.
"""
import triton
import triton.language as tl

from .fused_unmask_common import philox_uniform
from .row_partial import fold_noisy_tile, fold_tile, merge_partials

NEG_INF = tl.constexpr(float("-inf"))
N_COLS = tl.constexpr(9)  # row_stats' columns (include/dllm/row_partial.h)


@triton.jit
def lm_head_partial_kernel(h_ptr, w_ptr, bias_ptr, positions_ptr, seed_ptr, offset_ptr, temp_ptr, suppress_ptr,
                           n_suppress, part_ptr, N, R, d, V, vocab_start, span, stride_h, stride_w,
                           HAS_BIAS: tl.constexpr, HAS_SEED: tl.constexpr, HAS_OFFSET: tl.constexpr,
                           SAMPLING: tl.constexpr, CONF_KIND: tl.constexpr, IEEE_DOT: tl.constexpr,
                           UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid (cdiv(N, BLOCK_M), splits): partials of rows [m0, m0 + BLOCK_M) over local vocabulary
    ids [split * span, (split + 1) * span), written to part[split, row, :]."""
    pid_m = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_in = rows < N
    pos = tl.load(positions_ptr + rows, mask=row_in, other=-1)
    b = rows // R
    v_lo = split * span
    v_hi = tl.minimum(v_lo + span, V)
    ks = tl.arange(0, BLOCK_K)

    m1 = tl.full((BLOCK_M,), NEG_INF, tl.float32)
    m2 = tl.full((BLOCK_M,), NEG_INF, tl.float32)
    sum_exp = tl.zeros((BLOCK_M,), tl.float32)
    ent = tl.zeros((BLOCK_M,), tl.float32)
    bad = tl.zeros((BLOCK_M,), tl.int32)
    idx = tl.full((BLOCK_M,), -1, tl.int64)
    noisy_best = tl.full((BLOCK_M,), NEG_INF, tl.float32)
    noisy_idx = tl.full((BLOCK_M,), -1, tl.int64)
    noisy_clean = tl.full((BLOCK_M,), NEG_INF, tl.float32)
    if SAMPLING:
        temperature = tl.load(temp_ptr + b, mask=row_in, other=0.0).to(tl.float32)
        seed = tl.load(seed_ptr + b, mask=row_in, other=0) if HAS_SEED else tl.zeros((BLOCK_M,), tl.int64)
        offset = tl.load(offset_ptr + b, mask=row_in, other=0) if HAS_OFFSET else tl.zeros((BLOCK_M,), tl.int64)
        seed_lo = (seed & 0xFFFFFFFF).to(tl.uint32)[:, None]
        seed_hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)[:, None]
        off_lo = (offset & 0xFFFFFFFF).to(tl.uint32)[:, None]
        off_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)[:, None]
        pos_u32 = tl.maximum(pos, 0).to(tl.uint32)[:, None]

    for v0 in range(v_lo, v_hi, BLOCK_N):
        cols = v0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_in = cols < v_hi
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, d, BLOCK_K):
            k_in = (k0 + ks) < d
            h = tl.load(h_ptr + rows[:, None] * stride_h + (k0 + ks)[None, :], mask=row_in[:, None] & k_in[None, :],
                        other=0.0)
            w = tl.load(w_ptr + cols[None, :] * stride_w + (k0 + ks)[:, None], mask=col_in[None, :] & k_in[:, None],
                        other=0.0)
            if UPCAST:  # the interpreter has no bfloat16 dot: the products are exact in float32 anyway
                acc = tl.dot(h.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
            elif IEEE_DOT:
                acc = tl.dot(h, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(h, w, acc)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_in, other=0.0).to(tl.float32)[None, :]
        # The logits in the input dtype, as the unfused head would store them.
        v = acc.to(h_ptr.dtype.element_ty).to(tl.float32)
        gid = vocab_start + cols  # global ids
        for i in range(n_suppress):
            v = tl.where(gid[None, :] == tl.load(suppress_ptr + i), NEG_INF, v)
        v = tl.where(col_in[None, :], v, NEG_INF)
        m1, m2, sum_exp, ent, bad, idx, _ = fold_tile(v, gid[None, :], 2 ** 62, m1, m2, sum_exp, ent, bad, idx, 1,
                                                      CONF_KIND)

        if SAMPLING:
            u = philox_uniform(gid.to(tl.uint32)[None, :], pos_u32, off_lo, off_hi, seed_lo, seed_hi)
            noisy = v + temperature[:, None] * -tl.log(-tl.log(u))
            noisy = tl.where(col_in[None, :], noisy, NEG_INF)
            noisy_best, noisy_idx, noisy_clean = fold_noisy_tile(
                noisy, v, gid[None, :], 2 ** 62, temperature > 0, noisy_best, noisy_idx, noisy_clean, 1)

    read = pos >= 0  # a row not read, or an empty split, is the empty partial
    has = read & (m1 > NEG_INF)
    has_noisy = read & (noisy_best > NEG_INF)
    out = part_ptr + (split * N + rows) * N_COLS
    tl.store(out + 0, tl.where(read, m1, NEG_INF).to(tl.float64), mask=row_in)
    tl.store(out + 1, tl.where(read, m2, NEG_INF).to(tl.float64), mask=row_in)
    tl.store(out + 2, tl.where(read, sum_exp, 0.0).to(tl.float64), mask=row_in)
    tl.store(out + 3, tl.where(read, ent, 0.0).to(tl.float64), mask=row_in)
    tl.store(out + 4, tl.where(has_noisy, noisy_best, NEG_INF).to(tl.float64), mask=row_in)
    tl.store(out + 5, tl.where(has_noisy, noisy_clean, NEG_INF).to(tl.float64), mask=row_in)
    tl.store(out + 6, tl.where(has, idx, -1).to(tl.float64), mask=row_in)
    tl.store(out + 7, tl.where(has_noisy, noisy_idx, -1).to(tl.float64), mask=row_in)
    tl.store(out + 8, tl.where(read, bad, 0).to(tl.float64), mask=row_in)


@triton.jit
def merge_partials_kernel(part_ptr, out_ptr, N, N_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
                          CONF_KIND: tl.constexpr):
    """Grid (N,): row i's N_SPLITS partials part[:, i, :] merged in order into out[i, :]."""
    i = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, SPLITS_PAD).to(tl.int64)
    km = k < N_SPLITS
    at = part_ptr + (k * N + i) * N_COLS
    m1s = tl.load(at + 0, mask=km, other=float("-inf")).to(tl.float32)
    m2s = tl.load(at + 1, mask=km, other=float("-inf")).to(tl.float32)
    sums = tl.load(at + 2, mask=km, other=0.0).to(tl.float32)
    ents = tl.load(at + 3, mask=km, other=0.0).to(tl.float32)
    nbest = tl.load(at + 4, mask=km, other=float("-inf")).to(tl.float32)
    ncleans = tl.load(at + 5, mask=km, other=float("-inf")).to(tl.float32)
    idxs = tl.load(at + 6, mask=km, other=-1.0).to(tl.int64)
    nidxs = tl.load(at + 7, mask=km, other=-1.0).to(tl.int64)
    bad = tl.max(tl.load(at + 8, mask=km, other=0.0), 0)

    m1, m2, sum_exp, ent, idx, noisy_max, noisy_idx, noisy_clean = merge_partials(
        m1s, m2s, sums, ents, nbest, ncleans, idxs, nidxs, 2 ** 62, CONF_KIND)
    idx = tl.where(m1 > NEG_INF, idx, -1)
    has_noisy = noisy_max > NEG_INF
    out = out_ptr + i * N_COLS
    tl.store(out + 0, m1.to(tl.float64))
    tl.store(out + 1, m2.to(tl.float64))
    tl.store(out + 2, sum_exp.to(tl.float64))
    tl.store(out + 3, ent.to(tl.float64))
    tl.store(out + 4, noisy_max.to(tl.float64))
    tl.store(out + 5, tl.where(has_noisy, noisy_clean, NEG_INF).to(tl.float64))
    tl.store(out + 6, idx.to(tl.float64))
    tl.store(out + 7, tl.where(has_noisy, noisy_idx, -1).to(tl.float64))
    tl.store(out + 8, bad)
