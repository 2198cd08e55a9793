"""row_stats: the partial statistics of each logits row of a vocabulary slice (docs/row_stats.md).

One program per row; the row's pass is fused_unmask's (fused_unmask_stats.scan_vocab) run over global
ids: the row pointer is shifted back by `vocab_start`, so the ids it scans, the Philox counter of
each value and the suppressed ids all are global, and a slice draws the noise the whole row would.
"""
import triton
import triton.language as tl

from .fused_unmask_stats import NEG_INF, scan_vocab

# Columns of a partial (include/dllm/row_partial.h DLLM_ROW_PARTIAL_COLS).
ROW_STATS_COLUMNS = ("m1", "m2", "sum_exp", "entropy", "noisy_best", "noisy_clean", "idx", "noisy_idx", "bad")


@triton.jit
def row_stats_kernel(logits_ptr, stride_b, stride_r, gumbel_ptr, positions_ptr, seed_ptr, offset_ptr, temp_ptr,
                     suppress_ptr, n_suppress, out_ptr, R, V, vocab_start, HAS_SEED: tl.constexpr,
                     HAS_OFFSET: tl.constexpr, SAMPLING: tl.constexpr, CONF_KIND: tl.constexpr,
                     EXPLICIT_NOISE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Grid (R, B): the partial of row (b, r), written to out[b, r, :]."""
    r = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    at = b * R + r
    pos = tl.load(positions_ptr + at)
    out = out_ptr + at * 9
    if pos < 0:  # not read: the empty partial
        tl.store(out + 0, float("-inf"))
        tl.store(out + 1, float("-inf"))
        tl.store(out + 2, 0.0)
        tl.store(out + 3, 0.0)
        tl.store(out + 4, float("-inf"))
        tl.store(out + 5, float("-inf"))
        tl.store(out + 6, -1.0)
        tl.store(out + 7, -1.0)
        tl.store(out + 8, 0.0)
    else:
        seed = tl.load(seed_ptr + b) if HAS_SEED else tl.full((), 0, tl.int64)
        offset = tl.load(offset_ptr + b) if HAS_OFFSET else tl.full((), 0, tl.int64)
        temperature = tl.load(temp_ptr + b).to(tl.float32) if SAMPLING else 0.0
        row_ptr = logits_ptr + b * stride_b + r * stride_r - vocab_start
        noise_ptr = gumbel_ptr + at * V - vocab_start
        v_hi = vocab_start + V
        m1, m2, sum_exp, ent, bad, idx, noisy_best, noisy_idx, noisy_clean = scan_vocab(
            row_ptr, noise_ptr, vocab_start, v_hi, suppress_ptr, n_suppress, seed, offset, pos, temperature,
            CONF_KIND, SAMPLING, EXPLICIT_NOISE, BLOCK_V)
        has_noisy = noisy_best > NEG_INF
        tl.store(out + 0, m1.to(tl.float64))
        tl.store(out + 1, m2.to(tl.float64))
        tl.store(out + 2, sum_exp.to(tl.float64))
        tl.store(out + 3, ent.to(tl.float64))
        tl.store(out + 4, noisy_best.to(tl.float64))
        tl.store(out + 5, tl.where(has_noisy, noisy_clean, NEG_INF).to(tl.float64))
        tl.store(out + 6, tl.where(m1 > NEG_INF, idx, -1).to(tl.float64))
        tl.store(out + 7, tl.where(has_noisy, noisy_idx, -1).to(tl.float64))
        tl.store(out + 8, bad.to(tl.float64))
