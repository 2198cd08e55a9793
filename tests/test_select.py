"""`select` (the stateless selection op): the C++ CPU op against the float64 reference, per-request
parameters, candidates and bounds, sampling, bad inputs, opcheck and torch.compile."""
import math
import random

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.reference.select import select_reference
from dllm_kernels.select_params import SELECT_PARAM_COLUMNS, SELECT_PARAM_DEFAULTS
from fused_unmask_cases import DTYPES, TOL, ambiguous_sequences, peaked_logits

RULE_NAMES = ["topk", "threshold", "factor", "localleap", "filter"]
CONF_NAMES = ["prob", "margin", "neg_entropy"]


def _filter(gen, width=16, hidden=8):
    return dk.LearnedFilter(torch.randn(hidden, width, generator=gen) * 2, torch.randn(hidden, generator=gen),
                            torch.randn(width, hidden, generator=gen) * 2, torch.randn(width, generator=gen))


def _draw(seed, rule, conf, dtype, *, B=4, L=37, V=1001):
    """One random stateless call: per-sequence parameters, ragged candidates, bounds, row windows."""
    rnd = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    R = L if rnd.random() < 0.5 else max(1, L - 5)
    logits = peaked_logits(B, R, V, dtype, gen)
    x = torch.randint(0, V, (B, L), generator=gen)
    candidates = torch.rand(B, L, generator=gen) < rnd.choice([0.2, 0.6, 1.0])
    starts = torch.randint(0, max(1, L // 2), (B,), generator=gen)
    ends = torch.minimum(starts + torch.randint(1, L + 1, (B,), generator=gen), torch.tensor(L))
    kw = dict(rule=rule, conf=conf, bounds=torch.stack([starts, ends], 1),
              row_start=torch.randint(-2, 3, (B,), generator=gen) if R < L else None,
              shift=rnd.random() < 0.3, seed=torch.randint(-2 ** 62, 2 ** 62, (B,), generator=gen),
              offset=torch.randint(0, 1000, (B,), generator=gen),
              temperature=rnd.choice([0.0, 0.0, torch.tensor([0.0, 0.7, 1.0, 0.3])[:B]]))
    if kw["row_start"] is not None:
        kw["row_start"] = kw["row_start"].clamp(min=0)
    per_seq = lambda values: torch.tensor([rnd.choice(values) for _ in range(B)], dtype=torch.float64)
    if rule in ("topk", "filter"):
        kw["k"] = torch.randint(0, 6, (B,), generator=gen)
        kw["random_remasking"] = rnd.random() < 0.3
    if rule == "threshold":
        kw["threshold"] = per_seq([0.3, 0.5, 0.9]) if conf != "neg_entropy" else 0.5
    if rule == "factor":
        kw["factor"] = per_seq([0.5, 1.0, 2.0])
    if rule == "localleap":
        kw.update(anchor_threshold=per_seq([0.6, 0.9]), relaxed_threshold=per_seq([0.3, 0.5]),
                  window=per_seq([0, 1, 2, 4]), graded=rnd.random() < 0.5)
    if rule == "filter":
        kw.update(learned_filter=_filter(gen), filter_threshold=per_seq([0.5, 0.9]))
    if rnd.random() < 0.3:
        kw["suppress_ids"] = [rnd.randrange(V)]
    if rnd.random() < 0.3:
        kw["zero_conf_ids"] = [rnd.randrange(V), rnd.randrange(V)]
    return logits, x, candidates, kw


def _thresholds_of(kw, b):
    """The rule's parameters for sequence b, as ambiguous_sequences reads them."""
    out = {}
    for name in ("threshold", "factor", "anchor_threshold", "relaxed_threshold", "window", "temperature"):
        v = kw.get(name)
        if v is None:
            continue
        out[name] = float(v[b]) if isinstance(v, torch.Tensor) and v.dim() == 1 else float(v)
    out["window"] = int(out.get("window", 4))
    out["graded"] = kw.get("graded", False)
    out["conf_kind"] = CONF_NAMES.index(kw["conf"])
    return out


def _compare(logits, x, candidates, kw, backend="auto", against="reference"):
    """`backend`'s result against `against`'s on the same draw, decision for decision except in
    sequences with a near-tie; returns the number of sequences excused."""
    got = dk.select(logits, x.clone(), candidates, backend=backend, **kw)
    ref = dk.select(logits, x.clone(), candidates, backend=against, **kw)
    B, L = x.shape
    read = ~torch.isnan(ref.conf)
    shift = 1 if kw.get("shift") else 0
    rs = kw.get("row_start")
    excused = 0
    for b in range(B):
        row_of = lambda bb, p: p - shift - (int(rs[bb]) if rs is not None else 0)
        seq_kw = _thresholds_of(kw, b)
        ambiguous = b in ambiguous_sequences(
            logits[b:b + 1], ref.conf[b:b + 1], read[b:b + 1], seq_kw,
            lambda _, p: row_of(b, p), seeds=kw["seed"][b:b + 1], offsets=kw["offset"][b:b + 1])
        if ambiguous:
            excused += 1
            continue
        assert torch.equal(got.x0[b], ref.x0[b]), f"seq {b}: x0 differs"
        assert torch.equal(got.transfer[b], ref.transfer[b]), (
            f"seq {b}: transfer {got.transfer[b].nonzero().flatten().tolist()} != "
            f"{ref.transfer[b].nonzero().flatten().tolist()}")
        torch.testing.assert_close(got.conf[b], ref.conf[b], rtol=2e-5, atol=2e-6, equal_nan=True)
    return excused


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("conf", CONF_NAMES)
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_select_matches_reference(rule, conf, dtype):
    excused = sum(_compare(*_draw(seed, rule, conf, dtype)) for seed in range(3))
    assert excused <= 3, f"{excused} of 12 sequences excused as near-ties"


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_select_odd_sizes(rule):
    """V not a multiple of any tile, L = 1, one candidate, no candidate."""
    for V, L in ((3, 1), (17, 5), (2053, 9)):
        logits, x, cand, kw = _draw(11 + V, rule, "prob", torch.float32, B=2, L=L, V=V)
        _compare(logits, x, cand, kw)
        one = torch.zeros_like(cand)
        one[:, L // 2] = True
        _compare(logits, x, one, dict(kw, bounds=None, row_start=None))
        none = dk.select(logits, x, torch.zeros_like(cand), **kw)
        assert not none.transfer.any() and torch.isnan(none.conf).all()


def test_long_block_matches_reference():
    """A whole-sequence block of 1,500 positions (the rank pass is a sort, not all pairs)."""
    gen = torch.Generator().manual_seed(5)
    logits = peaked_logits(1, 1500, 64, torch.float32, gen)
    x = torch.zeros(1, 1500, dtype=torch.int64)
    for rule, extra in (("topk", dict(k=300)), ("factor", dict(factor=1.0)), ("threshold", dict(threshold=0.5)),
                        ("localleap", dict(anchor_threshold=0.6, relaxed_threshold=0.4, window=3))):
        got = dk.select(logits, x, rule=rule, **extra)
        ref = dk.select(logits, x, rule=rule, backend="reference", **extra)
        assert torch.equal(got.transfer, ref.transfer), rule


def test_per_request_parameters_equal_separate_calls():
    """One batch with a different threshold per sequence gives what each gets alone."""
    gen = torch.Generator().manual_seed(3)
    logits = peaked_logits(3, 16, 300, torch.float32, gen)
    x = torch.zeros(3, 16, dtype=torch.int64)
    thr = torch.tensor([0.2, 0.5, 0.95], dtype=torch.float64)
    both = dk.select(logits, x, rule="threshold", threshold=thr)
    for b in range(3):
        alone = dk.select(logits[b:b + 1], x[b:b + 1], rule="threshold", threshold=float(thr[b]))
        assert torch.equal(both.transfer[b], alone.transfer[0])
    counts = both.transfer.sum(1)
    assert counts[0] > counts[2], "a lower threshold must commit more"


def test_commit_writes_x_only_when_asked():
    gen = torch.Generator().manual_seed(4)
    logits = peaked_logits(2, 8, 50, torch.float32, gen)
    x = torch.full((2, 8), 49, dtype=torch.int64)
    cand = x == 49
    before = x.clone()
    out = dk.select(logits, x, cand, rule="topk", k=3)
    assert torch.equal(x, before)
    out2 = dk.select(logits, x, cand, rule="topk", k=3, commit=True)
    assert torch.equal(out.transfer, out2.transfer)
    assert torch.equal(x[out2.transfer], out2.x0[out2.transfer])
    assert torch.equal(x[~out2.transfer], before[~out2.transfer])


def test_sampling_seeds_and_generator():
    gen = torch.Generator().manual_seed(6)
    logits = peaked_logits(2, 32, 100, torch.float32, gen, spread=3.0)
    x = torch.zeros(2, 32, dtype=torch.int64)
    a = dk.select(logits, x, rule="topk", k=4, temperature=1.0, seed=7, offset=0)
    b = dk.select(logits, x, rule="topk", k=4, temperature=1.0, seed=7, offset=0)
    c = dk.select(logits, x, rule="topk", k=4, temperature=1.0, seed=7, offset=1)
    assert torch.equal(a.x0, b.x0) and not torch.equal(a.x0, c.x0)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(dk.select(logits, x, rule="topk", k=4, temperature=1.0, generator=g1).x0,
                       dk.select(logits, x, rule="topk", k=4, temperature=1.0, generator=g2).x0)
    # Sampling draws equal fused_unmask's for the same key: same Philox stream, same position.
    ref = dk.select(logits, x, rule="topk", k=4, temperature=1.0, seed=7, offset=0, backend="reference")
    assert torch.equal(a.x0, ref.x0)


def test_prev_conf_feeds_the_filter_and_passes_through():
    gen = torch.Generator().manual_seed(8)
    logits = peaked_logits(1, 16, 40, torch.float32, gen)
    x = torch.zeros(1, 16, dtype=torch.int64)
    cand = torch.zeros(1, 16, dtype=torch.bool)
    cand[0, 8:] = True
    prev = torch.rand(1, 16, generator=gen)
    filt = _filter(gen)
    got = dk.select(logits, x, cand, rule="filter", k=1, learned_filter=filt, prev_conf=prev)
    ref = dk.select(logits, x, cand, rule="filter", k=1, learned_filter=filt, prev_conf=prev, backend="reference")
    assert torch.equal(got.transfer, ref.transfer)
    assert torch.equal(got.conf[0, :8], prev[0, :8])


BAD = [
    (dict(rule="nope"), "rule"),
    (dict(rule="topk"), "needs k"),
    (dict(rule="threshold", k=3), "k does not apply"),
    (dict(rule="threshold", threshold=1.5), "threshold must be in"),
    (dict(rule="threshold", threshold=True), "threshold must be a number"),
    (dict(rule="topk", k=2.5), "k must be a whole number"),
    (dict(rule="topk", k=-1), "k must be a whole number"),
    (dict(rule="topk", k=torch.tensor([1, -2])), "k must be a whole number"),
    (dict(rule="threshold", threshold=torch.tensor([0.5, 2.0])), "threshold must be in"),
    (dict(rule="threshold", threshold=torch.tensor([0.5, 0.5, 0.5])), "threshold must be a number or a \\[2\\]"),
    (dict(rule="factor", factor=float("nan")), "factor must be finite"),
    (dict(rule="threshold", temperature=-1.0), "temperature"),
    (dict(rule="threshold", graded=True), "graded"),
    (dict(rule="threshold", random_remasking=True), "random_remasking"),
    (dict(rule="filter", k=1), "learned_filter"),
    (dict(rule="threshold", bounds=torch.tensor([[0, 9], [0, 3]])), "bounds"),
    (dict(rule="threshold", bounds=torch.tensor([[4, 3], [0, 3]])), "bounds"),
    (dict(rule="threshold", seed=[1, 2, 3]), "seed"),
    (dict(rule="threshold", suppress_ids=[70]), "suppress_ids"),
    (dict(rule="threshold", suppress_ids=object()), "suppress_ids"),
    (dict(rule="threshold", conf="logit"), "conf"),
]


@pytest.mark.parametrize("kw,match", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_name_the_argument(kw, match):
    logits = torch.randn(2, 8, 50)
    x = torch.zeros(2, 8, dtype=torch.int64)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        dk.select(logits, x, **kw)


OP_BAD = [
    (lambda l, x: (l.double(), x), {}, "logits must be float32"),
    (lambda l, x: (l, x.int()), {}, "x must be"),
    (lambda l, x: (l, x[:1]), {}, "x must be \\[B, L\\]"),
    (lambda l, x: (l, x), dict(candidates=torch.ones(2, 8)), "candidates must be Bool"),
    (lambda l, x: (l, x), dict(params=torch.zeros(2, 3, dtype=torch.float64)), "params must have shape"),
    (lambda l, x: (l, x), dict(params=torch.zeros(2, len(SELECT_PARAM_COLUMNS))), "params must be Double"),
    (lambda l, x: (l, x), dict(row_start=torch.zeros(3, dtype=torch.int64)), "row_start must have shape"),
    (lambda l, x: (l, x), dict(prev_conf=torch.zeros(2, 8, dtype=torch.float64)), "prev_conf must be Float"),
    (lambda l, x: (l, x), dict(rule=7), "rule must be 0..4"),
    (lambda l, x: (l, x), dict(rule=4), "needs filter_w1"),
    (lambda l, x: (l[:, :, :1], x), {}, "vocabulary of at least 2"),
    (lambda l, x: (l.transpose(1, 2), x), {}, "contiguous along the vocab"),
]


@pytest.mark.parametrize("make,kw,match", OP_BAD, ids=[m for _, _, m in OP_BAD])
def test_raw_op_bad_inputs(make, kw, match):
    logits = torch.randn(2, 8, 50)
    x = torch.zeros(2, 8, dtype=torch.int64)
    l, xx = make(logits, x)
    before = xx.clone()
    with pytest.raises(RuntimeError, match=match):
        torch.ops.dllm.select(l, xx, **kw)
    assert torch.equal(xx, before)


def test_raw_op_callable_with_required_arguments_only():
    logits = torch.randn(2, 8, 50)
    x0, conf, transfer = torch.ops.dllm.select(logits, torch.zeros(2, 8, dtype=torch.int64))
    assert transfer.sum(1).min() >= 1  # threshold 0.9 or the argmax
    assert dict(zip(SELECT_PARAM_COLUMNS, SELECT_PARAM_DEFAULTS))["threshold"] == dk.Policy().threshold


def test_nan_rows_are_never_candidates():
    logits = torch.randn(1, 6, 20)
    logits[0, 2, 3] = float("nan")
    logits[0, 4, 1] = float("inf")
    x = torch.zeros(1, 6, dtype=torch.int64)
    out = dk.select(logits, x, rule="topk", k=6)
    assert out.transfer[0].tolist() == [True, True, False, True, False, True]
    assert math.isnan(out.conf[0, 2]) and math.isnan(out.conf[0, 4])


@pytest.mark.parametrize("with_optional", [False, True])
def test_opcheck_select(with_optional):
    gen = torch.Generator().manual_seed(9)
    logits = peaked_logits(2, 8, 33, torch.float32, gen)
    x = torch.zeros(2, 8, dtype=torch.int64)
    kwargs = dict(rule=1)
    if with_optional:
        filt = _filter(gen, width=8)
        w1, b1, w2, b2 = filt.tensors("cpu")
        params = torch.tensor([SELECT_PARAM_DEFAULTS] * 2, dtype=torch.float64)
        kwargs = dict(candidates=torch.rand(2, 8, generator=gen) < 0.7, params=params,
                      bounds=torch.tensor([[0, 8], [2, 6]]), row_start=torch.tensor([0, 1]),
                      seed=torch.tensor([1, 2]), offset=torch.tensor([0, 5]), rank_u=torch.rand(2, 8, generator=gen),
                      prev_conf=torch.rand(2, 8, generator=gen), suppress_ids=torch.tensor([3]),
                      zero_conf_ids=torch.tensor([4]), filter_w1=w1, filter_b1=b1, filter_w2=w2, filter_b2=b2,
                      rule=4, random_remasking=True, commit=True)
    torch.library.opcheck(torch.ops.dllm.select.default, (logits, x), kwargs)


def test_torch_compile_no_recompile_when_a_threshold_changes():
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()

    @torch.compile(backend=counter, fullgraph=True)
    def step(logits, x, threshold):
        out = dk.select(logits, x, x == 0, rule="threshold", threshold=threshold, commit=True)
        return out.transfer

    gen = torch.Generator().manual_seed(10)
    logits = peaked_logits(2, 8, 40, torch.float32, gen)
    seen = []
    for thr in (0.9, 0.5, 0.1):
        x = torch.zeros(2, 8, dtype=torch.int64)
        seen.append(int(step(logits, x, torch.tensor([thr, thr], dtype=torch.float64)).sum()))
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} frames"
    assert seen[0] <= seen[1] <= seen[2] and seen[0] < seen[2], seen
