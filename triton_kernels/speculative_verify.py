"""speculative_verify in Triton: one program per sequence walks its target rows in order (a loop
that stops at the first rejection), the same decisions as csrc/include/dllm/speculative_verify.h.
Semantics: docs/speculative_verify.md. Accumulation in float32 whatever the input dtypes."""
import triton
import triton.language as tl

from .fused_unmask_common import philox_uniform

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))
ROW_STREAM = tl.constexpr(0x80000000)   # or-ed into counter word 1 (the row index)
ACCEPT_INDEX = tl.constexpr(0xFFFFFFFF)  # counter word 0 of the acceptance uniform


@triton.jit
def row_softmax(row_ptr, V, inv_t, BLOCK_V: tl.constexpr):
    """(max of l/T, sum exp(l/T - max), valid, first argmax of l) of one row; invalid when a value is
    NaN or +inf or all are -inf."""
    m = NEG_INF
    s = 0.0
    bad = 0
    best = NEG_INF
    arg = -1
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        l = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF).to(tl.float32)
        bad = tl.maximum(bad, tl.max(((l != l) | (l == POS_INF)).to(tl.int32), 0))
        l = tl.where(l != l, NEG_INF, l)
        t_max = tl.max(l, 0)
        t_arg = tl.min(tl.where(l == t_max, offs, V), 0)
        arg = tl.where(t_max > best, t_arg, arg)  # strict: an earlier tile keeps a tied maximum
        best = tl.maximum(best, t_max)
        z = l * inv_t
        m_new = tl.maximum(m, t_max * inv_t)
        scale = tl.where(m == m_new, 1.0, tl.exp(m - m_new))
        s = s * scale + tl.sum(tl.where(z == NEG_INF, 0.0, tl.exp(z - m_new)), 0)
        m = m_new
    valid = (bad == 0) & (m > NEG_INF)
    return m, s, valid, arg


@triton.jit
def draft_prob(q_ptr, idx, msk, qm, qs, qvalid, inv_t, Q_LOGITS: tl.constexpr):
    """The draft probability at `idx` (given probabilities cleaned of NaN/negative/inf, or the softmax
    of given logits)."""
    q = tl.load(q_ptr + idx, mask=msk, other=0.0).to(tl.float32)
    if Q_LOGITS:
        q = tl.where(qvalid & msk, tl.exp(q * inv_t - qm) / qs, 0.0)
    else:
        q = tl.where((q >= 0.0) & (q < POS_INF), q, 0.0)
    return q


@triton.jit
def speculative_verify_kernel(logits_ptr, s_lb, s_lk, tokens_ptr, q_ptr, s_qb, s_qk, lens_ptr, seed_ptr, offset_ptr,
                              accepted_ptr, emitted_ptr, K, V, temperature, GREEDY: tl.constexpr,
                              Q_LOGITS: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.minimum(tl.maximum(tl.load(lens_ptr + b), 0), K)  # out-of-range lengths clamp (no device check)
    seed = tl.load(seed_ptr + b)
    offset = tl.load(offset_ptr + b)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = (offset & 0xFFFFFFFF).to(tl.uint32)
    c3 = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    inv_t = 1.0
    if not GREEDY:
        inv_t = 1.0 / temperature
    offs0 = tl.arange(0, BLOCK_V)
    k = n * 0
    going = n >= 0
    while going:
        row = logits_ptr + b * s_lb + k * s_lk
        m, s, valid, best = row_softmax(row, V, inv_t, BLOCK_V)
        t = tl.load(tokens_ptr + b * K + k, mask=k < n, other=-1)
        in_range = (t >= 0) & (t < V)
        c1 = (k + ROW_STREAM).to(tl.uint32)
        if GREEDY:
            emit = tl.where(valid, best, -1)
            accept = valid & (k < n) & (t == best)
        else:
            qrow = q_ptr + b * s_qb + k * s_qk
            qm = 0.0
            qs = 1.0
            qvalid = valid
            if Q_LOGITS:
                if k < n:  # the bonus row has no draft row
                    qm, qs, qvalid, _ = row_softmax(qrow, V, inv_t, BLOCK_V)
            t_safe = tl.where(in_range, t, 0)
            lt = tl.load(row + t_safe).to(tl.float32)
            pt = tl.where(in_range & valid, tl.exp(lt * inv_t - m) / s, 0.0)
            qt = tl.where(in_range & (k < n), draft_prob(qrow, t_safe, k < n, qm, qs, qvalid, inv_t, Q_LOGITS), 0.0)
            u = philox_uniform((k * 0 + ACCEPT_INDEX).to(tl.uint32), c1, c2, c3, k0, k1)
            accept = valid & (k < n) & (u * qt < pt)
            residual = k < n
            # The sample where drafting stops: Gumbel-max over max(p - q, 0) after a rejection, over
            # p for the bonus token; a residual with no positive entry falls back to p.
            best_p = NEG_INF
            arg_p = -1
            best_r = NEG_INF
            arg_r = -1
            if valid & (accept == 0):
                for v0 in range(0, V, BLOCK_V):
                    offs = v0 + offs0
                    msk = offs < V
                    l = tl.load(row + offs, mask=msk, other=NEG_INF).to(tl.float32)
                    p = tl.where(msk, tl.exp(l * inv_t - m) / s, 0.0)
                    uv = philox_uniform(offs.to(tl.uint32), c1, c2, c3, k0, k1)
                    g = -tl.log(-tl.log(uv))
                    key_p = tl.where(p > 0.0, tl.log(p) + g, NEG_INF)
                    tp = tl.max(key_p, 0)
                    ta = tl.min(tl.where(key_p == tp, offs, V), 0)
                    arg_p = tl.where((tp > best_p) & (tp > NEG_INF), ta, arg_p)
                    best_p = tl.maximum(best_p, tp)
                    if residual:
                        q = draft_prob(qrow, offs, msk, qm, qs, qvalid, inv_t, Q_LOGITS)
                        r = tl.where(p > 0.0, p - q, 0.0)
                        key_r = tl.where(r > 0.0, tl.log(r) + g, NEG_INF)
                        tr = tl.max(key_r, 0)
                        tra = tl.min(tl.where(key_r == tr, offs, V), 0)
                        arg_r = tl.where((tr > best_r) & (tr > NEG_INF), tra, arg_r)
                        best_r = tl.maximum(best_r, tr)
            emit = tl.where(accept, t, tl.where(valid, tl.where(arg_r >= 0, arg_r, arg_p), -1))
        tl.store(emitted_ptr + b * (K + 1) + k, emit)
        going = accept
        k = tl.where(accept, k + 1, k)
    tl.store(accepted_ptr + b, k)
