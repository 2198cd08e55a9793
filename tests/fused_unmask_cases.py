"""Shared generators and comparison helpers for fused_unmask tests (every backend uses them)."""
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

import dllm_kernels as dk
from dllm_kernels import state as S
from dllm_kernels.reference import fused_unmask_reference as _reference_op
from dllm_kernels.reference import noise_uniform, row_statistics
from dllm_kernels.fused_unmask_params import UNMASK_PARAM_COLUMNS, UNMASK_PARAM_DEFAULTS

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def unmask_pack(batch, device="cpu", **values):
    """fused_unmask's parameter pack [batch, P] float64 from numbers (one per batch) or [batch]
    tensors, defaults elsewhere, *unchecked*: bad values reach the op's own checks."""
    cols = []
    for name, default in zip(UNMASK_PARAM_COLUMNS, UNMASK_PARAM_DEFAULTS):
        v = values.pop(name, default)
        cols.append(torch.as_tensor(v, dtype=torch.float64).reshape(-1).expand(batch))
    assert not values, f"not pack columns: {sorted(values)}"
    return torch.stack(cols, 1).contiguous().to(device)


def op_positional(logits, x, conf, state, row_start=None, gumbel_u=None, rank_u=None, suppress_ids=None,
                  zero_conf_ids=None, delimiter_ids=None, filter_w1=None, filter_b1=None, filter_w2=None,
                  filter_b2=None, *, mask_id, eos_id, **kw):
    """The flat keyword form the tests write (every number its own keyword, as the cases draw them)
    -> (the op's required arguments, its keyword arguments with the numbers in the pack `params`)."""
    numbers = {name: kw.pop(name) for name in UNMASK_PARAM_COLUMNS if name in kw}
    params = unmask_pack(x.shape[0], x.device, **numbers)
    return (logits, x, conf, state, mask_id, eos_id), dict(
        kw, params=params, row_start=row_start, gumbel_u=gumbel_u, rank_u=rank_u, suppress_ids=suppress_ids,
        zero_conf_ids=zero_conf_ids, delimiter_ids=delimiter_ids, filter_w1=filter_w1, filter_b1=filter_b1,
        filter_w2=filter_w2, filter_b2=filter_b2)


def in_flat_form(op):
    """`op` (any backend, in the op's signature) called in the flat keyword form."""
    def call(*args, **kwargs):
        pos, kw = op_positional(*args, **kwargs)
        return op(*pos, **kw)
    return call


# torch.ops.dllm.fused_unmask (the C++ CPU op for CPU tensors) and the reference, in the flat form.
cpu_op = in_flat_form(torch.ops.dllm.fused_unmask)
fused_unmask_reference = in_flat_form(_reference_op)
TOL = 1e-5  # decisions closer than this to a threshold or a tie are allowed to differ (docs/policies.md §1)


def rule_id(fields):
    """A test id for a dict of policy fields: the rule, with "-random" under random remasking."""
    return fields["rule"] + ("-random" if fields.get("random_remasking") else "")


def peaked_logits(B, R, V, dtype, gen, spread=12.0):
    """Random logits with one boosted token per row: confidences spread across (0, 1), not uniform."""
    logits = torch.randn(B, R, V, generator=gen) * 2.0
    top = torch.randint(0, V, (B, R, 1), generator=gen)
    logits.scatter_add_(2, top, torch.rand(B, R, 1, generator=gen) * spread)
    return logits.to(dtype)


def tied_logits(B, L, V, gen):
    """Copies of four random rows: every position's confidence ties exactly with a quarter of the
    others (bit for bit: the same row, the same sums), and the four values lie far apart."""
    rows = torch.randn(4, V, generator=gen) * 2.0
    return rows[torch.randint(0, 4, (B, L), generator=gen)]


def long_block_case(fields, block, B, L, R, V, gen):
    """(policy, logits, x, state, row_start) for the long-block ranking tests: B >= 2 sequences of L
    positions, sequence 1's block starting at a third of the row (the others at 0); the policy `fields` with a
    random learned filter for rule "filter"; tied logits (tied_logits) for R rows, which cover the
    last 70 and 64 positions (row_start) when R < L."""
    filt = None
    if fields["rule"] == "filter":
        filt = dk.LearnedFilter(torch.randn(8, 16, generator=gen), torch.randn(8, generator=gen),
                                torch.randn(16, 8, generator=gen), torch.randn(16, generator=gen))
    policy = dk.Policy(block_length=block, learned_filter=filt, **fields)
    logits = tied_logits(B, R, V, gen)
    row_start = None if R == L else torch.tensor([L - 70, L - 64])
    x = torch.full((B, L), V - 1)
    x[1, : L // 3] = 0  # sequence 1 starts later: a block not at offset 0
    st = dk.DecodeState.new(B, L, gen_start=[0, L // 3] + [0] * (B - 2), seed=9)
    return policy, logits, x, st, row_start


def boost_token(logits, b, r, token, amount):
    """Make `token` likely at row r of sequence b (e.g. eos or a delimiter)."""
    logits[b, r, token] = logits[b, r].float().max() + amount


@dataclass
class Batch:
    """A batch of sequences at different stages: fresh, mid-block, further on, done."""
    x: torch.Tensor
    state: dk.DecodeState
    mask_id: int
    eos_id: int
    V: int


def make_batch(B, L, V, gen, *, gen_starts=None, mid_block=True, block_length=8, seed=0):
    mask_id, eos_id = V - 1, V - 2
    if gen_starts is None:
        gen_starts = [int(torch.randint(0, max(1, L // 3), (1,), generator=gen)) for _ in range(B)]
    x = torch.randint(0, V - 2, (B, L), generator=gen)
    for b, g0 in enumerate(gen_starts):
        x[b, g0:] = mask_id
    st = dk.DecodeState.new(B, L, gen_start=gen_starts, seed=seed + 17)
    if mid_block:
        # Sequence 1 sits inside its second block with part of it decoded.
        b = 1 % B
        g0 = gen_starts[b]
        bs = min(g0 + block_length, L)
        be = min(bs + block_length, L)
        if be > bs:
            x[b, g0:bs] = torch.randint(0, V - 2, (bs - g0,), generator=gen)
            x[b, bs:bs + (be - bs) // 2] = torch.randint(0, V - 2, ((be - bs) // 2,), generator=gen)
            st.state[b, S.BLOCK_START], st.state[b, S.BLOCK_END] = bs, be
            st.state[b, S.STEP] = 1
            st.state[b, S.BLOCK_MASKED] = be - bs
            st.state[b, S.BLOCK_REMAINING] = int((x[b, bs:be] == mask_id).sum())
            st.conf[b, g0:bs + (be - bs) // 2] = torch.rand(bs + (be - bs) // 2 - g0, generator=gen)
            st.state[b, S.OFFSET] = 3
    return Batch(x, st, mask_id, eos_id, V)


def critical_values(kw, n):
    """Values a confidence must not sit within TOL of for the decision to be unambiguous."""
    vals = [kw.get("threshold", 0.9), kw.get("anchor_threshold", 0.9), kw.get("relaxed_threshold", 0.75),
            kw.get("block_delta", 0.3)]
    f = kw.get("factor", 1.0)
    vals += [1.0 - f / (r + 1) for r in range(2, n + 2)]
    W = kw.get("window", 4)
    if kw.get("graded") and W > 0:
        lo, hi = kw.get("relaxed_threshold", 0.75), kw.get("anchor_threshold", 0.9)
        vals += [lo + (hi - lo) * (d - 1) / W for d in range(1, W + 1)]
    return vals


def ambiguous_sequences(logits, ref_conf, read_mask, kw, row_of, gumbel_u=None, seeds=None, offsets=None,
                        filter_probs=None):
    """Sequences whose decision may legitimately differ between float32 and float64.

    read_mask: [B, L] positions the reference read; row_of(b, p) -> logits row index.
    """
    B, L = read_mask.shape
    out = set()
    for b in range(B):
        ps = [p for p in range(L) if read_mask[b, p]]
        confs = [float(ref_conf[b, p]) for p in ps if not math.isnan(float(ref_conf[b, p]))]
        crit = critical_values(kw, len(ps) + 1)
        if any(abs(c - v) < TOL for c in confs for v in crit):
            out.add(b)
            continue
        s = sorted(confs)
        if any(abs(s[i + 1] - s[i]) < 1e-6 + TOL * abs(s[i]) for i in range(len(s) - 1)):
            out.add(b)
            continue
        if filter_probs is not None and any(abs(float(q) - kw["filter_threshold"]) < 1e-4 for q in filter_probs[b]):
            out.add(b)
            continue
        if kw.get("temperature", 0.0) > 0:
            for p in ps:
                r = row_of(b, p)
                V = logits.shape[-1]
                u = (gumbel_u[b, r] if gumbel_u is not None
                     else noise_uniform(int(seeds[b]), int(offsets[b]), np.arange(V), p))
                st = row_statistics(logits[b, r].double(), temperature=kw["temperature"], uniforms=u,
                                    conf_kind=kw.get("conf_kind", 0))
                if st.noisy_gap < 1e-4:
                    out.add(b)
                    break
    return out


def run_both(op, logits, batch, kw, row_start=None, gumbel_u=None, rank_u=None):
    """One step through `op` and the reference on copies of the same inputs."""
    xs = [batch.x.clone(), batch.x.clone()]
    confs = [batch.state.conf.clone(), batch.state.conf.clone()]
    states = [batch.state.state.clone(), batch.state.state.clone()]
    full = dict(mask_id=batch.mask_id, eos_id=batch.eos_id, **kw)
    opt = dict(row_start=row_start, gumbel_u=gumbel_u, rank_u=rank_u)
    ref = fused_unmask_reference(logits, xs[1], confs[1], states[1], **opt, **full)
    got = op(logits, xs[0], confs[0], states[0], **opt, **full)
    return (xs[0], confs[0], states[0], got), (xs[1], confs[1], states[1], ref)


def assert_same_decisions(got, ref, skip=()):
    (x, conf, state, (x0, transfer, ws)), (rx, rconf, rstate, (rx0, rtransfer, rws)) = got, ref
    for b in range(x.shape[0]):
        if b in skip:
            continue
        assert torch.equal(state[b], rstate[b]), f"seq {b}: state {state[b].tolist()} != {rstate[b].tolist()}"
        assert torch.equal(x[b], rx[b]), f"seq {b}: x differs at {torch.nonzero(x[b] != rx[b]).flatten().tolist()}"
        assert torch.equal(transfer[b], rtransfer[b]), f"seq {b}: transfer differs"
        assert torch.equal(x0[b], rx0[b]), f"seq {b}: x0 differs at {torch.nonzero(x0[b] != rx0[b]).flatten().tolist()}"
        torch.testing.assert_close(conf[b], rconf[b], rtol=2e-5, atol=2e-6, equal_nan=True,
                                   msg=lambda m: f"seq {b}: conf: {m}")
        torch.testing.assert_close(ws[b], rws[b].to(ws.dtype), rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"seq {b}: window_stats: {m}")


@dataclass
class Scenario:
    """A random policy configuration, drawn from a seed so failures can be replayed."""
    seed: int
    kw: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    V: int = 257
    L: int = 40
    B: int = 3
    use_gumbel_u: bool = False
    use_row_start: bool = False

    @classmethod
    def draw(cls, seed, rule=None, conf_kind=None, dtype=None):
        rnd = random.Random(seed)
        rule = rnd.randrange(5) if rule is None else rule
        kw = dict(rule=rule, conf_kind=rnd.randrange(3) if conf_kind is None else conf_kind,
                  temperature=rnd.choice([0.0, 0.0, 0.7, 1.0]), shift=rnd.random() < 0.25,
                  steps=rnd.choice([1, 2, 3, 5, 8]), threshold=rnd.choice([0.5, 0.7, 0.9]),
                  factor=rnd.choice([0.5, 1.0, 2.0]), anchor_threshold=rnd.choice([0.8, 0.9]),
                  relaxed_threshold=rnd.choice([0.5, 0.75]), window=rnd.choice([0, 1, 2, 4]),
                  graded=rnd.random() < 0.4, filter_threshold=rnd.choice([0.5, 0.9, 0.96]),
                  random_remasking=rule == 0 and rnd.random() < 0.3, block_length=rnd.choice([1, 4, 8, 13]),
                  adaptive_block=rnd.random() < 0.4, block_delta=rnd.choice([0.3, 0.5]),
                  block_window_fraction=rnd.choice([0.25, 0.5]), eotp=rnd.random() < 0.35,
                  early_stop=rnd.random() < 0.3)
        if kw["conf_kind"] == 2:  # negative entropy is <= 0: no threshold in [0, 1] passes, argmax only
            kw["threshold"] = 0.5
        V = rnd.choice([3, 17, 257, 1000, 2053])
        return cls(seed=seed, kw=kw, dtype=DTYPES[rnd.randrange(3)] if dtype is None else dtype, V=V,
                   L=rnd.choice([1, 9, 40]), B=rnd.choice([1, 3, 4]), use_gumbel_u=rnd.random() < 0.3,
                   use_row_start=rnd.random() < 0.3)

    def tensors(self):
        """Optional tensors (suppress / zero-conf / delimiter ids, filter) for this scenario."""
        gen = torch.Generator().manual_seed(self.seed)
        V = self.V
        extra = {}
        rnd = random.Random(self.seed + 1)
        if rnd.random() < 0.3 and V > 4:
            extra["suppress_ids"] = torch.tensor([rnd.randrange(V - 2)], dtype=torch.int64)
        if rnd.random() < 0.3 and V > 4:
            extra["zero_conf_ids"] = torch.tensor([V - 2, rnd.randrange(V - 2)], dtype=torch.int64)
        if self.kw["adaptive_block"] or rnd.random() < 0.2:
            extra["delimiter_ids"] = torch.tensor([min(5, V - 3)], dtype=torch.int64)
        if self.kw["rule"] == 4:
            width, hidden = rnd.choice([(8, 8), (32, 16)])
            extra["filter_w1"] = torch.randn(hidden, width, generator=gen) * 2
            extra["filter_b1"] = torch.randn(hidden, generator=gen)
            extra["filter_w2"] = torch.randn(width, hidden, generator=gen) * 2
            extra["filter_b2"] = torch.randn(width, generator=gen)
        return extra
