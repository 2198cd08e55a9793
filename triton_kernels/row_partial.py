"""A row's statistics in Triton, written once for every pass that produces or merges them
(fused_unmask_stats over a row or a split of it, lm_head_row_stats over tiles of rows): the online
update by one tile of logits (fold_tile, fold_noisy_tile) and the in-order merge of a row's
partials (merge_partials), the rules include/dllm/row_partial.h states for C++.

A tile is a vector of one row's values (AXIS 0) or a [rows, ids] block (AXIS 1); `ids` are the
values' token ids, broadcastable against the tile, and `no_id` an id no value has. The running
state is the row's (or each row's) max `m1` and its first id `idx`, the second max `m2` (margin
only), the sum of exp(l - m1) and of exp(l - m1) * (l - m1) (entropy only), and the bad flag.
"""
import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))


@triton.jit
def fold_tile(v, ids, no_id, m1, m2, sum_exp, ent, bad, idx, AXIS: tl.constexpr, CONF_KIND: tl.constexpr):
    """(m1, m2, sum_exp, ent, bad, idx) after the tile v (float32; -inf where masked or suppressed),
    and the tile's own maximum."""
    bad = tl.maximum(bad, tl.max(((v != v) | (v == POS_INF)).to(tl.int32), AXIS))
    t_max = tl.max(v, AXIS)
    at_max = v == tl.expand_dims(t_max, AXIS)
    t_idx = tl.min(tl.where(at_max, ids, no_id), AXIS)
    if CONF_KIND == 1:  # margin: second largest value; equal to the max when it is shared
        n_top = tl.sum(at_max.to(tl.int32), AXIS)
        t_second = tl.where(n_top > 1, t_max, tl.max(tl.where(at_max, NEG_INF, v), AXIS))
        m2 = tl.maximum(tl.maximum(m2, t_second), tl.minimum(m1, t_max))
    idx = tl.where(t_max > m1, t_idx, idx)  # strict: the earlier tile keeps a tied maximum
    # Sums relative to the running maximum, rescaled when it grows.
    m_new = tl.maximum(m1, t_max)
    d = tl.where(m1 == NEG_INF, 0.0, m1 - m_new)
    scale = tl.exp(d)
    if CONF_KIND == 2:
        ent = (ent + d * sum_exp) * scale
    sum_exp = sum_exp * scale
    m_ref = tl.expand_dims(tl.where(m_new == NEG_INF, 0.0, m_new), AXIS)
    e = tl.exp(v - m_ref)
    sum_exp += tl.sum(e, AXIS)
    if CONF_KIND == 2:
        ent += tl.sum(e * tl.where(e > 0, v - m_ref, 0.0), AXIS)
    return m_new, m2, sum_exp, ent, bad, idx, t_max


@triton.jit
def fold_noisy_tile(noisy, v, ids, no_id, live, noisy_best, noisy_idx, noisy_clean, AXIS: tl.constexpr):
    """(noisy_best, noisy_idx, noisy_clean) after the tile's noisy values (l + T*g; -inf where
    masked): the first-id Gumbel-max winner and its clean value, kept where `live` (T > 0)."""
    n_max = tl.max(noisy, AXIS)
    n_idx = tl.min(tl.where(noisy == tl.expand_dims(n_max, AXIS), ids, no_id), AXIS)
    n_clean = tl.max(tl.where(ids == tl.expand_dims(n_idx, AXIS), v, NEG_INF), AXIS)
    better = live & (n_max > noisy_best)
    return (tl.where(better, n_max, noisy_best), tl.where(better, n_idx, noisy_idx),
            tl.where(better, n_clean, noisy_clean))


@triton.jit
def merge_partials(m1s, m2s, sums, ents, nbest, ncleans, idxs, nidxs, no_id, CONF_KIND: tl.constexpr):
    """A row's partials, vectors over its slices in order (an empty slice or padding: m1 and the
    noisy best -inf, ids < 0 or no_id), merged: (m1, m2, sum_exp, ent, idx, noisy_best, noisy_idx,
    noisy_clean), each id the lowest among the slices holding the best value (the first index)."""
    m1 = tl.max(m1s, 0)
    idx = tl.min(tl.where((m1s == m1) & (idxs >= 0), idxs, no_id), 0)
    m2 = NEG_INF
    if CONF_KIND == 1:
        n_top = tl.sum((m1s == m1).to(tl.int32), 0)
        m2 = tl.where(n_top > 1, m1, tl.maximum(tl.max(m2s, 0), tl.max(tl.where(m1s == m1, NEG_INF, m1s), 0)))
    has = m1s != NEG_INF  # slices with a finite maximum; the others hold no mass
    d = tl.where(has, m1s - m1, 0.0)
    w = tl.where(has, tl.exp(d), 0.0)
    sum_exp = tl.sum(w * sums, 0)
    ent = 0.0
    if CONF_KIND == 2:
        ent = tl.sum(tl.where(has, w * (ents + d * sums), 0.0), 0)
    noisy_best = tl.max(nbest, 0)
    win = (nbest == noisy_best) & (nidxs >= 0)
    noisy_idx = tl.min(tl.where(win, nidxs, no_id), 0)
    noisy_clean = tl.max(tl.where(win & (nidxs == noisy_idx), ncleans, NEG_INF), 0)
    return m1, m2, sum_exp, ent, idx, noisy_best, noisy_idx, noisy_clean
