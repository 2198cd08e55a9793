"""fused_unmask, stage 2: the per-sequence policy (csrc/include/dllm/policy.h policy_step).

One program per sequence, vectorised over positions in tiles of TILE (a power of two). Block
opening (fixed / AdaBlock), candidates, the five selection rules, EoTP, early stop, bookkeeping,
transfer and window_stats follow policy.h step by step. Its numbers come from the sequence's row
of the float64 parameter pack.

The candidate and rule stage (count_candidates, mark_selection) is shared with `select`
(triton_kernels/select_policy.py), whose candidates are the caller's (READ_FROM, fused_unmask_common.py).
Ranks: rows of up to POLICY_SORT_MAX positions (the launcher's SORT_N, a power of two >= L) hold
the whole block in one vector and rank it by two bitonic sorts of packed (key, offset) words, O(n
log^2 n) work; LocalLeap's anchor distances come from two scans. Longer rows (SORT_N = 0) sort the
block in chunks of RANK_CHUNK words into the sequence's scratch row and rank each candidate by a
binary search of every sorted chunk (n / RANK_CHUNK searches of log2(RANK_CHUNK) + 1 loads each,
RANK_CHUNK candidates at a time), and LocalLeap's anchors come from the same scans carried across
tiles (the next anchor to the right kept in the scratch row).

Phases communicate through global memory (the selection is written into `transfer`, commits into
`x`), and one program's threads see each other's writes only after a CTA barrier: hence the
tl.debug_barrier() between phases.
"""
import triton
import triton.language as tl

from .fused_unmask_common import (BLOCK_END, BLOCK_MASKED, BLOCK_REMAINING, BLOCK_START, COL_ANCHOR, COL_COUNT,
                            COL_FACTOR, COL_FILTER_THRESHOLD, COL_RELAXED, COL_THRESHOLD, COL_WINDOW, DONE,
                            END_POS, GEN_END, GEN_START, OFFSET, READ_MASKED, SEED, STEP, compute_span,
                            load_block_params, load_state, pack_count, philox_uniform, position_is_read,
                            read_token, split_u64)

NEG_INF = tl.constexpr(float("-inf"))
RANK_STREAM = tl.constexpr(0xFFFFFFFF)  # philox.h kRankStream: the vocab index of the rank noise


@triton.jit
def read_flags(pos, x_row, L, active, gen_start, end_pos, span_start, span_end, row_start, R, shift,
               eotp, mask_id, READ_FROM: tl.constexpr):
    """(read, token) for a tile of positions, from the tokens currently in x (READ_MASKED) or the
    caller's candidate flags in x_row (select: see read_token)."""
    in_seq = (pos >= 0) & (pos < L)
    tok = read_token(x_row, pos, in_seq, mask_id, READ_FROM)
    read = in_seq & position_is_read(pos, tok, active, gen_start, end_pos, span_start, span_end,
                                     row_start, R, shift, eotp, mask_id)
    return read, tok


@triton.jit
def fold_best_tile(vals, ok, pos, best_pos, best, L):
    """Folds one tile into a running (position, value) maximum over tiles scanned in position
    order: the tile's largest `ok` value (its lowest position on ties) replaces the running one
    only when strictly larger, so the first position wins ties overall. best_pos < 0: none yet."""
    t_best = tl.max(tl.where(ok, vals, NEG_INF), 0)
    t_pos = tl.min(tl.where(ok & (vals == t_best), pos, L), 0)
    take = (t_pos < L) & ((best_pos < 0) | (t_best > best))
    return tl.where(take, t_pos, best_pos), tl.where(take, t_best, best)


@triton.jit
def count_equal(x_row, lo, hi, value, TILE: tl.constexpr):
    """Number of positions in [lo, hi) holding `value`."""
    n = lo * 0
    for p0 in range(lo, hi, TILE):
        pos = p0 + tl.arange(0, TILE)
        tok = tl.load(x_row + pos, mask=pos < hi, other=-1)
        n += tl.sum((tok == value).to(tl.int64), 0)
    return n


@triton.jit
def fill_eos(x_row, transfer_row, lo, hi, eos_id, TILE: tl.constexpr):
    """policy.h end_sequence_at (the fill): [lo, hi) becomes eos; changed positions are transfers."""
    for p0 in range(lo, hi, TILE):
        pos = p0 + tl.arange(0, TILE)
        tok = tl.load(x_row + pos, mask=pos < hi, other=eos_id)
        change = (pos < hi) & (tok != eos_id)
        tl.store(x_row + pos, tl.zeros_like(tok) + eos_id, mask=change)
        tl.store(transfer_row + pos, change, mask=change)


@triton.jit
def block_candidates(pos, x_row, conf_row, rank_u_row, L, active, gen_start, end_pos, span_start,
                     span_end, row_start, R, shift, eotp, mask_id, bs, be, seed, offset,
                     RANDOM_RANK: tl.constexpr, HAS_RANK_U: tl.constexpr, READ_FROM: tl.constexpr):
    """(candidate, conf, ranking key) for a tile of block positions: read, valid, inside the block."""
    read, tok = read_flags(pos, x_row, L, active, gen_start, end_pos, span_start, span_end, row_start,
                           R, shift, eotp, mask_id, READ_FROM)
    in_block = (pos >= bs) & (pos < be)
    c = tl.load(conf_row + pos, mask=in_block, other=float("nan"))
    cand = read & in_block & (c == c)
    key = c
    if RANDOM_RANK:  # `random` remasking: rank by uniforms instead of confidence
        if HAS_RANK_U:
            key = tl.load(rank_u_row + pos, mask=in_block, other=0.0)
        else:
            seed_lo, seed_hi = split_u64(seed)
            off_lo, off_hi = split_u64(offset)
            stream = tl.full(pos.shape, RANK_STREAM, tl.uint32)
            key = philox_uniform(stream, pos.to(tl.uint32), off_lo, off_hi, seed_lo,
                                 seed_hi)
    return cand, c, key


@triton.jit
def store_next_anchors(next_row, x_row, conf_row, L, active, gen_start, end_pos, span_start, span_end,
                       row_start, R, shift, eotp, mask_id, bs, be, anchor_threshold,
                       READ_FROM: tl.constexpr, TILE: tl.constexpr):
    """LocalLeap on a long block: next_row[o] = the offset of the first anchor (candidate with conf >=
    kappa) at or after block offset o, 2 L + 2 where there is none; a min-scan per tile, from the
    block's end back, carrying the first anchor of the tiles after it."""
    n_tiles = tl.cdiv(be - bs, TILE)
    none = (bs * 0 + 2 * L + 2).to(tl.int64)
    carry = none
    for t in range(0, n_tiles):
        pos = bs + (n_tiles - 1 - t) * TILE + tl.arange(0, TILE)
        cand, c, key = block_candidates(pos, x_row, conf_row, conf_row, L, active, gen_start, end_pos,
                                        span_start, span_end, row_start, R, shift, eotp, mask_id, bs,
                                        be, 0, 0, False, False, READ_FROM)
        off = (pos - bs).to(tl.int64)
        right = tl.associative_scan(tl.where(cand & (c >= anchor_threshold), off, none), 0, _min_combine,
                                    reverse=True)
        right = tl.minimum(right, carry)
        tl.store(next_row + off, right, mask=pos < be)
        carry = tl.min(right, 0)


@triton.jit
def filter_keep(offs, conf_row, bs, be, w1_ptr, b1_ptr, w2_ptr, b2_ptr, filter_width, filter_hidden,
                filter_threshold, FW_PAD: tl.constexpr, H_CHUNK: tl.constexpr):
    """Learn2PD filter for block offsets `offs`: sigmoid(W2 @ relu(W1 @ feat + b1) + b2) > theta,
    feat[j] = the finite conf of block offset j (else 0). The hidden layer is taken H_CHUNK units at
    a time, so the weight tiles held in registers stay small whatever the filter's size."""
    j = tl.arange(0, FW_PAD)
    jm = j < filter_width
    fpos = bs + j
    feat = tl.load(conf_row + fpos, mask=jm & (fpos < be), other=0.0)
    feat = tl.where((feat == feat) & (tl.abs(feat) != float("inf")), feat, 0.0)
    om = (offs >= 0) & (offs < filter_width)
    z = tl.load(b2_ptr + offs, mask=om, other=0.0)
    for h0 in range(0, filter_hidden, H_CHUNK):
        h = h0 + tl.arange(0, H_CHUNK)
        hm = h < filter_hidden
        w1 = tl.load(w1_ptr + h[:, None] * filter_width + j[None, :], mask=hm[:, None] & jm[None, :],
                     other=0.0)
        hidden = tl.maximum(tl.sum(w1 * feat[None, :], 1) + tl.load(b1_ptr + h, mask=hm, other=0.0), 0.0)
        w2 = tl.load(w2_ptr + offs[:, None] * filter_hidden + h[None, :], mask=om[:, None] & hm[None, :],
                     other=0.0)
        z += tl.sum(w2 * tl.where(hm, hidden, 0.0)[None, :], 1)
    return om & (tl.math.div_rn(1.0, 1.0 + tl.exp(-z)) > filter_threshold)


@triton.jit
def count_candidates(x_row, conf_row, L, active, gen_start, end_pos, span_start, span_end, row_start,
                     R, shift, eotp, mask_id, bs, be, READ_FROM: tl.constexpr, TILE: tl.constexpr):
    """Number of candidates in the block [bs, be)."""
    n_cand = bs * 0
    for p0 in range(bs, be, TILE):
        pos = p0 + tl.arange(0, TILE)
        cand, c, key = block_candidates(pos, x_row, conf_row, conf_row, L, active, gen_start, end_pos,
                                        span_start, span_end, row_start, R, shift, eotp, mask_id, bs,
                                        be, 0, 0, False, False, READ_FROM)
        n_cand += tl.sum(cand.to(tl.int64), 0)
    return n_cand


@triton.jit
def sorted_ranks(key, cand, SORT_N: tl.constexpr):
    """policy.h candidate_rank for a whole block in one vector of SORT_N block offsets: the number
    of candidates with a larger key, or an equal key and a lower offset. Two bitonic sorts of
    packed int64 words (O(n log^2 n) compare-exchanges, log^2 n deep) instead of comparing every
    pair: (key descending, offset) gives the order, (offset, place in that order) maps it back.
    Non-candidates sort after every candidate."""
    off = tl.arange(0, SORT_N).to(tl.int64)
    by_rank = tl.sort(rank_words(key, cand, off))
    by_offset = tl.sort(((by_rank & 0xFFFFFFFF) << 32) | off)
    return (by_offset & 0xFFFFFFFF).to(tl.int32)


@triton.jit
def rank_words(key, cand, off):
    """Distinct int64 words, one per block offset, in ranking order when sorted ascending: (key
    descending, offset); non-candidates after every candidate."""
    key = tl.where(key == 0.0, 0.0, key)  # -0.0 ties with +0.0, as the float comparisons have it
    bits = key.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)  # int order == float order
    high = tl.where(cand, -ordered, 0x7FFFFFFF)  # finite keys: |ordered| < 2^31 - 2^23
    return (high << 32) | off.to(tl.int64)


@triton.jit
def sort_rank_chunks(words_row, rank_row, x_row, conf_row, rank_u_row, L, active, gen_start, end_pos,
                     span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be, seed, offset,
                     RANDOM_RANK: tl.constexpr, HAS_RANK_U: tl.constexpr, READ_FROM: tl.constexpr,
                     RANK_CHUNK: tl.constexpr):
    """The block's rank words, each chunk of RANK_CHUNK offsets sorted, into words_row[0, n) (n: the
    block length rounded up to RANK_CHUNK; the padding's words sort last), and unsorted into
    rank_row[0, be - bs), where store_chunk_ranks replaces each by its rank: the words (and, for
    random remasking, their Philox draws) are made once."""
    for c0 in range(bs, be, RANK_CHUNK):
        pos = c0 + tl.arange(0, RANK_CHUNK)
        cand, c, key = block_candidates(pos, x_row, conf_row, rank_u_row, L, active, gen_start, end_pos,
                                        span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be,
                                        seed, offset, RANDOM_RANK, HAS_RANK_U, READ_FROM)
        words = rank_words(key, cand, pos - bs)
        tl.store(rank_row + (pos - bs), words, mask=pos < be)
        tl.store(words_row + (pos - bs), tl.sort(words))


@triton.jit
def store_chunk_ranks(rank_row, words_row, n_block, RANK_CHUNK: tl.constexpr):
    """rank_row[o]: block offset o's rank word (from sort_rank_chunks, before a barrier) replaced by
    its rank from the sorted chunks, RANK_CHUNK offsets at a time so that many searches share each
    load's latency."""
    for o0 in range(0, n_block, RANK_CHUNK):
        off = o0 + tl.arange(0, RANK_CHUNK)
        word = tl.load(rank_row + off, mask=off < n_block, other=0)
        rank = chunk_ranks(word, words_row, n_block, RANK_CHUNK)
        tl.store(rank_row + off, rank.to(tl.int64), mask=off < n_block)


@triton.jit
def ranked_tile(pos, rank_row, x_row, conf_row, L, active, gen_start, end_pos, span_start, span_end,
                row_start, R, shift, eotp, mask_id, bs, be, READ_FROM: tl.constexpr):
    """(candidate, conf, rank) for a tile of a long block after store_chunk_ranks: the ranks come
    from the scratch row, so no ranking key (nor its Philox draw) is made here."""
    cand, c, key = block_candidates(pos, x_row, conf_row, conf_row, L, active, gen_start, end_pos,
                                    span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be,
                                    0, 0, False, False, READ_FROM)
    rank = tl.load(rank_row + (pos - bs), mask=pos < be, other=0).to(tl.int32)
    return cand, c, rank


@triton.jit
def chunk_ranks(word, words_row, n_block, RANK_CHUNK: tl.constexpr):
    """policy.h candidate_rank from the sorted chunks: the number of words below `word` (candidates
    ranked above it), a branch-free lower bound in each chunk."""
    rank = tl.zeros(word.shape, dtype=tl.int32)
    for c0 in range(0, n_block, RANK_CHUNK):
        chunk = words_row + c0
        lo = tl.zeros(word.shape, dtype=tl.int32)
        for s in tl.static_range(1, 17):  # halves RANK_CHUNK / 2, ..., 1 (RANK_CHUNK <= 2^16)
            if (RANK_CHUNK >> s) > 0:
                lo = tl.where(tl.load(chunk + lo + ((RANK_CHUNK >> s) - 1)) < word, lo + (RANK_CHUNK >> s), lo)
        rank += lo + (tl.load(chunk + lo) < word).to(tl.int32)
    return rank


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_combine(a, b):
    return tl.minimum(a, b)


@triton.jit
def nearest_anchor_distance(anchor, L, SORT_N: tl.constexpr):
    """anchor_distance for a whole block in one vector: the nearest anchor on each side by a max-
    and a min-scan (O(n)); L + 1 where there is none."""
    off = tl.arange(0, SORT_N)
    left = tl.associative_scan(tl.where(anchor, off, -1), 0, _max_combine)
    right = tl.associative_scan(tl.where(anchor, off, SORT_N), 0, _min_combine, reverse=True)
    none = L + 1
    d_left = tl.where(left >= 0, off - left, none)
    d_right = tl.where(right < SORT_N, right - off, none)
    return tl.minimum(d_left, d_right)


@triton.jit
def localleap_selects(c, rank, dist, anchor_threshold, relaxed_threshold, window, graded):
    """LocalLeap's picks among a block's candidates (any shape): the anchors (c >= kappa), the
    top-ranked one, and those within `window` of an anchor (dist, 0: none) passing the relaxed
    threshold, which with `graded` rises linearly from tau_rel at distance 1 to kappa at W + 1."""
    relaxed = tl.zeros_like(c) + relaxed_threshold
    if graded != 0:
        span = (anchor_threshold - relaxed_threshold) * (dist - 1).to(tl.float32)
        relaxed = relaxed_threshold + tl.math.div_rn(span, (tl.zeros_like(dist) + tl.maximum(window, 1)).to(tl.float32))
    near = (dist >= 1) & (dist <= window) & (c >= relaxed)
    return (c >= anchor_threshold) | (rank == 0) | near


@triton.jit
def mark_selection_sorted(x_row, conf_row, rank_u_row, transfer_row, L, active, gen_start, end_pos,
                          span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be, seed, offset,
                          n_cand, k, threshold, factor, anchor_threshold, relaxed_threshold, window,
                          graded, filter_threshold, w1_ptr, b1_ptr, w2_ptr, b2_ptr, filter_width,
                          filter_hidden, RULE: tl.constexpr, RANDOM_RANK: tl.constexpr,
                          HAS_RANK_U: tl.constexpr, READ_FROM: tl.constexpr, FW_PAD: tl.constexpr,
                          H_CHUNK: tl.constexpr, SORT_N: tl.constexpr):
    """mark_selection for a block of at most SORT_N positions: the same decisions, every rule's
    ranks from one sort (the ranking key is conf, or the random key for rules 0 and 4) and
    LocalLeap's anchor distances from scans."""
    pos = bs + tl.arange(0, SORT_N)
    cand, c, key = block_candidates(pos, x_row, conf_row, rank_u_row, L, active, gen_start, end_pos,
                                    span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be,
                                    seed, offset, RANDOM_RANK, HAS_RANK_U, READ_FROM)
    rank = sorted_ranks(key, cand, SORT_N)
    if RULE == 0:
        sel = rank < k
    elif RULE == 1:
        sel = (c >= threshold) | (rank == 0)
    elif RULE == 2:
        # 1-based r = rank + 1 >= 2 fails when c < 1 - f / (r + 1); the run ends before it.
        bar = 1.0 - tl.math.div_rn(tl.zeros([SORT_N], dtype=tl.float32) + factor, (rank + 2).to(tl.float32))
        fails = cand & (rank >= 1) & ~(c >= bar)
        run = tl.minimum(n_cand, tl.min(tl.where(fails, rank, L + 1), 0).to(tl.int64))
        sel = rank < run
    elif RULE == 3:
        dist = nearest_anchor_distance(cand & (c >= anchor_threshold), L, SORT_N)
        sel = localleap_selects(c, rank, dist, anchor_threshold, relaxed_threshold, window, graded)
    else:
        sel = rank < k
    sel = cand & sel
    tl.store(transfer_row + pos, sel, mask=sel)
    if RULE == 4:  # the filter's picks among the first filter_width offsets (stores of True only)
        fpos = bs + tl.arange(0, FW_PAD)
        fcand, fc, fkey = block_candidates(fpos, x_row, conf_row, conf_row, L, active, gen_start, end_pos,
                                           span_start, span_end, row_start, R, shift, eotp, mask_id, bs,
                                           be, 0, 0, False, False, READ_FROM)
        keep = filter_keep((fpos - bs).to(tl.int32), conf_row, bs, be, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                           filter_width, filter_hidden, filter_threshold, FW_PAD, H_CHUNK)
        fsel = fcand & keep
        tl.store(transfer_row + fpos, fsel, mask=fsel)


@triton.jit
def mark_selection(x_row, conf_row, rank_u_row, transfer_row, scratch_row, L, active, gen_start,
                   end_pos, span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be, seed, offset,
                   n_cand, k, threshold, factor, anchor_threshold, relaxed_threshold, window, graded,
                   filter_threshold, w1_ptr, b1_ptr, w2_ptr, b2_ptr, filter_width, filter_hidden,
                   RULE: tl.constexpr, RANDOM_RANK: tl.constexpr, HAS_RANK_U: tl.constexpr,
                   READ_FROM: tl.constexpr, TILE: tl.constexpr, FW_PAD: tl.constexpr,
                   H_CHUNK: tl.constexpr, SORT_N: tl.constexpr, RANK_CHUNK: tl.constexpr):
    """The rule over the block's candidates (policy.h select rules): marks its choice in
    `transfer` (zero on entry). `k` (rules 0 and 4) is already capped at n_cand. The caller commits
    afterwards, so that every rank here sees the pre-step tokens. SORT_N > 0 (a power of two >= the
    block's length): the whole block in one vector, ranks by sorting (mark_selection_sorted);
    SORT_N = 0 (any block length): tiles of TILE, ranks by binary searches of the block's chunks
    sorted into `scratch_row` (the launcher's scratch: the row length rounded up to RANK_CHUNK sorted
    words, then L ranks, then L of LocalLeap's next anchors)."""
    if SORT_N > 0:
        mark_selection_sorted(x_row, conf_row, rank_u_row, transfer_row, L, active, gen_start, end_pos,
                              span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be, seed,
                              offset, n_cand, k, threshold, factor, anchor_threshold, relaxed_threshold,
                              window, graded, filter_threshold, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                              filter_width, filter_hidden, RULE, RANDOM_RANK, HAS_RANK_U, READ_FROM,
                              FW_PAD, H_CHUNK, SORT_N)
    else:
        # A long block: its chunks sorted into the scratch row (and LocalLeap's next anchors after
        # them), read back by other threads of this program after the barrier.
        rank_row = scratch_row + tl.cdiv(L, RANK_CHUNK) * RANK_CHUNK
        next_row = rank_row + L
        sort_rank_chunks(scratch_row, rank_row, x_row, conf_row, rank_u_row, L, active, gen_start,
                         end_pos, span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be, seed,
                         offset, RANDOM_RANK, HAS_RANK_U, READ_FROM, RANK_CHUNK)
        if RULE == 3:
            store_next_anchors(next_row, x_row, conf_row, L, active, gen_start, end_pos, span_start,
                               span_end, row_start, R, shift, eotp, mask_id, bs, be, anchor_threshold,
                               READ_FROM, TILE)
        tl.debug_barrier()
        store_chunk_ranks(rank_row, scratch_row, be - bs, RANK_CHUNK)
        tl.debug_barrier()
        run = n_cand  # factor rule: longest leading run of the descending order that passes
        if RULE == 2:
            for p0 in range(bs, be, TILE):
                pos = p0 + tl.arange(0, TILE)
                cand, c, rank = ranked_tile(pos, rank_row, x_row, conf_row, L, active, gen_start, end_pos,
                                            span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be,
                                            READ_FROM)
                # 1-based r = rank + 1 >= 2 fails when c < 1 - f / (r + 1); the run ends before it.
                bar = 1.0 - tl.math.div_rn(tl.zeros([TILE], dtype=tl.float32) + factor,
                                           (rank + 2).to(tl.float32))
                fails = cand & (rank >= 1) & ~(c >= bar)
                run = tl.minimum(run, tl.min(tl.where(fails, rank, L + 1), 0).to(tl.int64))

        left = (bs * 0 - 1).to(tl.int64)  # LocalLeap: the last anchor before the tile
        for p0 in range(bs, be, TILE):
            pos = p0 + tl.arange(0, TILE)
            cand, c, rank = ranked_tile(pos, rank_row, x_row, conf_row, L, active, gen_start, end_pos,
                                        span_start, span_end, row_start, R, shift, eotp, mask_id, bs, be,
                                        READ_FROM)
            if RULE == 0:
                sel = rank < k
            elif RULE == 1:
                sel = (c >= threshold) | (rank == 0)
            elif RULE == 2:
                sel = rank < run
            elif RULE == 3:
                off = (pos - bs).to(tl.int64)
                lscan = tl.associative_scan(tl.where(cand & (c >= anchor_threshold), off, -1), 0,
                                            _max_combine)
                lscan = tl.maximum(lscan, left)
                left = tl.max(lscan, 0)
                right = tl.load(next_row + off, mask=pos < be, other=2 * L + 2)
                none = L + 1
                dist = tl.minimum(tl.where(lscan >= 0, off - lscan, none),
                                  tl.where(right < 2 * L + 2, right - off, none)).to(tl.int32)
                sel = localleap_selects(c, rank, dist, anchor_threshold, relaxed_threshold, window, graded)
            else:
                keep = filter_keep((pos - bs).to(tl.int32), conf_row, bs, be, w1_ptr, b1_ptr, w2_ptr,
                                   b2_ptr, filter_width, filter_hidden, filter_threshold, FW_PAD, H_CHUNK)
                sel = (rank < k) | keep
            sel = cand & sel
            tl.store(transfer_row + pos, sel, mask=sel)


@triton.jit
def policy_kernel(x_ptr, x0_ptr, conf_ptr, pprob_ptr, rank_u_ptr, transfer_ptr, window_stats_ptr,
                  state_ptr, scratch_ptr, scratch_stride, row_start_ptr, delim_ptr, n_delim, w1_ptr, b1_ptr,
                  w2_ptr, b2_ptr, filter_width, filter_hidden, L, R, params_ptr, params_stride, mask_id, eos_id, shift,
                  graded, adaptive_block, eotp, early_stop,
                  RULE: tl.constexpr, RANDOM_RANK: tl.constexpr, HAS_RANK_U: tl.constexpr,
                  HAS_ROW_START: tl.constexpr, TILE: tl.constexpr, FW_PAD: tl.constexpr,
                  H_CHUNK: tl.constexpr, SORT_N: tl.constexpr, RANK_CHUNK: tl.constexpr):
    """Grid (B,): one step of the policy for sequence b. `transfer` must be zero on entry. Its
    numbers come from the sequence's row of the float64 pack, compared in float32 as the C++ does."""
    b = tl.program_id(0).to(tl.int64)
    prm = params_ptr + b * params_stride
    steps = pack_count(tl.load(prm + COL_COUNT), 1)
    threshold = tl.load(prm + COL_THRESHOLD).to(tl.float32)
    factor = tl.load(prm + COL_FACTOR).to(tl.float32)
    anchor_threshold = tl.load(prm + COL_ANCHOR).to(tl.float32)
    relaxed_threshold = tl.load(prm + COL_RELAXED).to(tl.float32)
    window = pack_count(tl.load(prm + COL_WINDOW), 0)
    filter_threshold = tl.load(prm + COL_FILTER_THRESHOLD).to(tl.float32)
    block_length, block_delta, block_window_fraction = load_block_params(prm)
    x_row = x_ptr + b * L
    x0_row = x0_ptr + b * L
    conf_row = conf_ptr + b * L
    pprob_row = pprob_ptr + b * L
    rank_u_row = rank_u_ptr + b * L
    transfer_row = transfer_ptr + b * L
    state_row = state_ptr + b * 11
    row_start = 0
    if HAS_ROW_START:
        row_start = tl.load(row_start_ptr + b)
    (gen_start, gen_end, bs, be, step, block_masked, block_remaining, end_pos, done, seed,
     offset) = load_state(state_row, L)
    active, opening, span_start, span_end, default_end, window_end = compute_span(
        gen_start, gen_end, bs, be, block_remaining, end_pos, done, block_length, adaptive_block,
        block_window_fraction)

    ws_n = tl.zeros([], dtype=tl.float64)
    ws_mean = tl.zeros([], dtype=tl.float64)
    ws_var = tl.zeros([], dtype=tl.float64)
    if active:
        # 1. Open a block: [s, s + n), or AdaBlock's [s, p + 1) at the most probable delimiter.
        if opening:
            new_end = default_end
            if adaptive_block != 0:
                best_p = gen_start * 0 - 1
                best = 0.0
                for p0 in range(span_start, window_end, TILE):
                    pos = p0 + tl.arange(0, TILE)
                    read, tok = read_flags(pos, x_row, L, active, gen_start, end_pos, span_start,
                                           span_end, row_start, R, shift, eotp, mask_id, READ_MASKED)
                    ok = read & (pos < window_end)
                    c = tl.load(conf_row + pos, mask=ok, other=float("nan"))
                    pred = tl.load(x0_row + pos, mask=ok, other=-1)
                    delim = tl.zeros([TILE], dtype=tl.int1)
                    for d in range(n_delim):
                        delim = delim | (pred == tl.load(delim_ptr + d))
                    ok = ok & (c == c) & delim
                    pp = tl.load(pprob_row + pos, mask=ok, other=0.0)
                    best_p, best = fold_best_tile(pp, ok, pos, best_p, best, L)
                new_end = tl.where((best_p >= 0) & (best >= block_delta), best_p + 1, default_end)
            bs = span_start
            be = new_end
            step = step * 0
            block_masked = count_equal(x_row, bs, tl.minimum(be, end_pos), mask_id, TILE)

        # 2. Window statistics: count, mean, variance of conf over read positions of the window.
        w_sum = tl.zeros([], dtype=tl.float64)
        w_sum2 = tl.zeros([], dtype=tl.float64)
        for p0 in range(bs, window_end, TILE):
            pos = p0 + tl.arange(0, TILE)
            read, tok = read_flags(pos, x_row, L, active, gen_start, end_pos, span_start, span_end,
                                   row_start, R, shift, eotp, mask_id, READ_MASKED)
            c = tl.load(conf_row + pos, mask=read & (pos < window_end), other=float("nan"))
            ok = read & (pos < window_end) & (c == c)
            c64 = tl.where(ok, c, 0.0).to(tl.float64)
            ws_n += tl.sum(ok.to(tl.float64), 0)
            w_sum += tl.sum(c64, 0)
            w_sum2 += tl.sum(c64 * c64, 0)
        if ws_n > 0:
            ws_mean = w_sum / ws_n
            ws_var = w_sum2 / ws_n - ws_mean * ws_mean

        # 3. Selection: candidates, their count, the top-k count of the LLaDA schedule (every
        # remaining candidate once the steps are spent), the rule's choice into `transfer`.
        n_cand = count_candidates(x_row, conf_row, L, active, gen_start, end_pos, span_start, span_end,
                                  row_start, R, shift, eotp, mask_id, bs, be, READ_MASKED, TILE)
        k = tl.where(step >= steps, n_cand,
                     tl.minimum(block_masked // steps + (step < block_masked % steps).to(tl.int64),
                                n_cand))
        mark_selection(x_row, conf_row, rank_u_row, transfer_row, scratch_ptr + b * scratch_stride, L,
                       active, gen_start, end_pos, span_start, span_end, row_start, R, shift, eotp,
                       mask_id, bs, be, seed, offset, n_cand, k, threshold, factor, anchor_threshold,
                       relaxed_threshold, window, graded, filter_threshold, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                       filter_width, filter_hidden, RULE, RANDOM_RANK, HAS_RANK_U, READ_MASKED, TILE,
                       FW_PAD, H_CHUNK, SORT_N, RANK_CHUNK)
        tl.debug_barrier()

        # 4. Commit: x = x0 at the selected positions; note the first committed eos (EoTP).
        first_eos = gen_end * 0 + L
        for p0 in range(bs, be, TILE):
            pos = p0 + tl.arange(0, TILE)
            inb = pos < be
            sel = tl.load(transfer_row + pos, mask=inb, other=0) != 0
            pred = tl.load(x0_row + pos, mask=inb, other=-1)
            tl.store(x_row + pos, pred, mask=sel)
            first_eos = tl.minimum(first_eos, tl.min(tl.where(sel & (pred == eos_id), pos, L), 0))
        tl.debug_barrier()

        # 5. EoTP: end after the first committed eos, else at the most confident predicted eos.
        if eotp != 0:
            end_from = tl.where(first_eos < L, first_eos + 1, -1)
            if first_eos >= L:
                best_q = gen_start * 0 - 1
                best = 0.0
                for q0 in range(gen_start, end_pos, TILE):
                    pos = q0 + tl.arange(0, TILE)
                    read, tok = read_flags(pos, x_row, L, active, gen_start, end_pos, span_start,
                                           span_end, row_start, R, shift, eotp, mask_id, READ_MASKED)
                    pred = tl.load(x0_row + pos, mask=read, other=-1)
                    c = tl.load(conf_row + pos, mask=read, other=float("nan"))
                    ok = read & (pred == eos_id) & (c == c)
                    best_q, best = fold_best_tile(c, ok, pos, best_q, best, L)
                if best_q >= 0:
                    tl.store(x_row + best_q, eos_id)
                    tl.store(transfer_row + best_q, best_q >= 0)
                    end_from = best_q + 1
            if end_from >= 0:
                end_pos = tl.minimum(end_pos, end_from)
                fill_eos(x_row, transfer_row, end_from, gen_end, eos_id, TILE)
            tl.debug_barrier()

        # 6. Early stop: a finished block holding an eos ends the sequence at the block's end.
        block_stop = tl.minimum(be, end_pos)
        block_remaining = count_equal(x_row, bs, block_stop, mask_id, TILE)
        if early_stop != 0:
            if block_remaining == 0:
                if count_equal(x_row, bs, block_stop, eos_id, TILE) > 0:
                    end_pos = tl.minimum(end_pos, be)
                    fill_eos(x_row, transfer_row, be, gen_end, eos_id, TILE)
                    tl.debug_barrier()

        # 7. Bookkeeping.
        step = step + 1
        done = count_equal(x_row, gen_start, end_pos, mask_id, TILE) == 0
        offset = offset + 1
        tl.store(state_row + BLOCK_START, bs)
        tl.store(state_row + BLOCK_END, be)
        tl.store(state_row + STEP, step)
        tl.store(state_row + BLOCK_MASKED, block_masked)
        tl.store(state_row + BLOCK_REMAINING, block_remaining)
        tl.store(state_row + END_POS, end_pos)
        tl.store(state_row + DONE, done.to(tl.int64))
        tl.store(state_row + OFFSET, offset)
        tl.store(state_row + GEN_START, gen_start)
        tl.store(state_row + GEN_END, gen_end)
        tl.store(state_row + SEED, seed)
    else:
        if done == 0:  # nothing left to open: complete; the sanitised state is stored
            tl.store(state_row + GEN_START, gen_start)
            tl.store(state_row + GEN_END, gen_end)
            tl.store(state_row + BLOCK_START, bs)
            tl.store(state_row + BLOCK_END, be)
            tl.store(state_row + STEP, step)
            tl.store(state_row + BLOCK_MASKED, block_masked)
            tl.store(state_row + BLOCK_REMAINING, block_remaining)
            tl.store(state_row + END_POS, end_pos)
            tl.store(state_row + DONE, gen_start * 0 + 1)
            tl.store(state_row + SEED, seed)
            tl.store(state_row + OFFSET, offset)
    tl.store(window_stats_ptr + b * 3 + 0, ws_n.to(tl.float32))
    tl.store(window_stats_ptr + b * 3 + 1, ws_mean.to(tl.float32))
    tl.store(window_stats_ptr + b * 3 + 2, ws_var.to(tl.float32))
