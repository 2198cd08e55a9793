"""The Triton `select` (dllm_kernels/triton_select.py) against the C++ CPU op and the float64
reference, on the draws tests/test_select.py uses. Without a GPU the kernels run under the Triton
interpreter (tests/conftest.py), so shapes stay small."""
import functools

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels import triton_select as st
from dllm_kernels.select_params import SELECT_PARAM_COLUMNS, pack_select_params
from test_select import CONF_NAMES, RULE_NAMES, _compare, _draw, _filter
from fused_unmask_cases import DTYPES, peaked_logits

SMALL = dict(B=2, L=12, V=97)


def _both(draw, max_excused):
    """Triton against the reference and against the C++ op on one draw."""
    excused = _compare(*draw, backend="triton", against="reference")
    excused += _compare(*draw, backend="triton", against="native")
    assert excused <= max_excused, f"{excused} sequences excused as near-ties"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("conf", CONF_NAMES)
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_rule_by_conf_kind_by_dtype(rule, conf, dtype):
    _both(_draw(21, rule, conf, dtype, **SMALL), max_excused=2)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_odd_vocabulary_one_position_one_and_no_candidate(rule):
    for V, L in ((3, 1), (131, 5)):
        logits, x, cand, kw = _draw(11 + V, rule, "prob", torch.float32, B=2, L=L, V=V)
        _both((logits, x, cand, kw), max_excused=1)
        one = torch.zeros_like(cand)
        one[:, L // 2] = True
        _both((logits, x, one, dict(kw, bounds=None, row_start=None)), max_excused=1)
        none = dk.select(logits, x, torch.zeros_like(cand), backend="triton", **kw)
        assert not none.transfer.any() and torch.isnan(none.conf).all()
        assert torch.equal(none.x0, x)


def test_split_vocabulary_layout(monkeypatch):
    """Each row's vocabulary over three programs plus the merge launch, sampling included."""
    forced = functools.partial(st.triton_select, block_v=32, vocab_splits=3)
    monkeypatch.setattr(st, "triton_select", forced)
    for rule, conf in (("threshold", "neg_entropy"), ("topk", "margin")):
        logits, x, cand, kw = _draw(41, rule, conf, torch.float32, B=2, L=10, V=150)
        kw["temperature"] = torch.tensor([0.0, 0.8])
        _both((logits, x, cand, kw), max_excused=1)


def test_long_block(monkeypatch):
    """A whole-row block of 100 positions, past one rank tile (64 wide, as on a GPU) into a partial
    second one: the launcher's sort (128 wide) and the long rows' ranking (sort_n=0: chunks of 16
    sorted, then binary-searched; the 7th chunk partly padding) both rank it; top-k cuts the order
    at 30, the factor rule follows its leading run. Longer blocks take the same paths and cost the
    interpreter one program per row."""
    gen = torch.Generator().manual_seed(5)
    L = 100
    logits = peaked_logits(1, L, 4, torch.float32, gen)
    x = torch.zeros(1, L, dtype=torch.int64)
    launcher = st.triton_select
    for sort_n in (None, 0):
        monkeypatch.setattr(st, "triton_select", functools.partial(launcher, sort_n=sort_n, rank_chunk=16))
        for rule, extra in (("topk", dict(k=30)), ("factor", dict(factor=1.0))):
            got = dk.select(logits, x, rule=rule, backend="triton", **extra)
            ref = dk.select(logits, x, rule=rule, **extra)
            assert torch.equal(got.transfer, ref.transfer), (rule, sort_n)
            assert torch.equal(got.x0, ref.x0)
        assert int(got.transfer.sum()) > 1  # the factor run went past the first candidate


def test_per_request_parameters_equal_separate_calls():
    gen = torch.Generator().manual_seed(3)
    logits = peaked_logits(3, 10, 60, torch.float32, gen)
    x = torch.zeros(3, 10, dtype=torch.int64)
    thr = torch.tensor([0.2, 0.5, 0.95], dtype=torch.float64)
    both = dk.select(logits, x, rule="threshold", threshold=thr, backend="triton")
    native = dk.select(logits, x, rule="threshold", threshold=thr)
    assert torch.equal(both.transfer, native.transfer)
    for b in range(3):
        alone = dk.select(logits[b:b + 1], x[b:b + 1], rule="threshold", threshold=float(thr[b]), backend="triton")
        assert torch.equal(both.transfer[b], alone.transfer[0])
    assert both.transfer.sum(1)[0] > both.transfer.sum(1)[2]


def test_sampling_and_random_remasking_match_the_cpu_op():
    """Philox noise per (seed, offset, position) and the rank stream: the C++ op's draws."""
    gen = torch.Generator().manual_seed(6)
    logits = peaked_logits(2, 16, 50, torch.float32, gen, spread=3.0)
    x = torch.zeros(2, 16, dtype=torch.int64)
    kw = dict(rule="topk", k=4, temperature=1.0, seed=torch.tensor([7, -3]), offset=torch.tensor([0, 9]),
              random_remasking=True)
    got = dk.select(logits, x, backend="triton", **kw)
    ref = dk.select(logits, x, **kw)
    assert torch.equal(got.x0, ref.x0) and torch.equal(got.transfer, ref.transfer)
    other = dk.select(logits, x, backend="triton", **dict(kw, offset=torch.tensor([1, 9])))
    assert not torch.equal(other.x0[0], got.x0[0]) and torch.equal(other.x0[1], got.x0[1])
    u = torch.rand(2, 16, 50, generator=gen)
    explicit = dict(kw, seed=None, offset=None, gumbel_u=u, rank_u=torch.rand(2, 16, generator=gen))
    got = dk.select(logits, x, backend="triton", **explicit)
    ref = dk.select(logits, x, **explicit)
    assert torch.equal(got.x0, ref.x0) and torch.equal(got.transfer, ref.transfer)


def test_commit_prev_conf_and_filter():
    gen = torch.Generator().manual_seed(8)
    logits = peaked_logits(2, 16, 40, torch.float32, gen)
    x = torch.full((2, 16), 39, dtype=torch.int64)
    cand = torch.zeros(2, 16, dtype=torch.bool)
    cand[:, 6:] = True
    prev = torch.rand(2, 16, generator=gen)
    kw = dict(rule="filter", k=1, learned_filter=_filter(gen), prev_conf=prev, commit=True)
    xt, xc = x.clone(), x.clone()
    got = dk.select(logits, xt, cand, backend="triton", **kw)
    ref = dk.select(logits, xc, cand, **kw)
    assert torch.equal(got.transfer, ref.transfer) and torch.equal(xt, xc)
    assert torch.equal(got.conf[:, :6], prev[:, :6])
    assert torch.equal(xt[~got.transfer], x[~got.transfer])


def test_invalid_rows_keep_x_and_are_never_candidates():
    logits = torch.randn(1, 6, 20)
    logits[0, 2, 3] = float("nan")
    logits[0, 4, 1] = float("inf")
    x = torch.full((1, 6), 5, dtype=torch.int64)
    out = dk.select(logits, x, rule="topk", k=6, backend="triton")
    assert out.transfer[0].tolist() == [True, True, False, True, False, True]
    assert out.x0[0, 2] == 5 and out.x0[0, 4] == 5
    assert torch.isnan(out.conf[0, 2]) and torch.isnan(out.conf[0, 4])


def test_raw_op_defaults_without_params():
    logits = peaked_logits(2, 8, 30, torch.float32, torch.Generator().manual_seed(2))
    x = torch.zeros(2, 8, dtype=torch.int64)
    got = st.triton_select(logits, x.clone())
    ref = torch.ops.dllm.select(logits, x.clone())
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=2e-5, atol=2e-6)


BAD = [
    (lambda l, x: (l.double(), x), {}, "logits must be float32"),
    (lambda l, x: (l, x.int()), {}, "x must be"),
    (lambda l, x: (l, x), dict(candidates=torch.ones(2, 8)), "candidates must be Bool"),
    (lambda l, x: (l, x), dict(params=torch.zeros(2, 3, dtype=torch.float64)), "params must have shape"),
    (lambda l, x: (l, x), dict(params=torch.zeros(2, len(SELECT_PARAM_COLUMNS))), "params must be Double"),
    (lambda l, x: (l, x), dict(params=pack_select_params(2, "cpu", dict(k=torch.tensor([1, -2])))),
     "k must be a whole number"),
    (lambda l, x: (l, x), dict(bounds=torch.tensor([[4, 3], [0, 3]])), "bounds must satisfy"),
    (lambda l, x: (l, x), dict(seed=torch.zeros(3, dtype=torch.int64)), "seed must have shape"),
    (lambda l, x: (l, x), dict(prev_conf=torch.zeros(2, 8, dtype=torch.float64)), "prev_conf must be Float"),
    (lambda l, x: (l, x), dict(suppress_ids=torch.tensor([70])), "suppress_ids holds ids"),
    (lambda l, x: (l, x), dict(rule=7), "rule must be 0..4"),
    (lambda l, x: (l, x), dict(conf_kind=3), "conf_kind must be 0..2"),
    (lambda l, x: (l, x), dict(rule=4), "needs filter_w1"),
    (lambda l, x: (l[:, :, :1], x), {}, "vocabulary of at least 2"),
    (lambda l, x: (l.transpose(1, 2), x), {}, "contiguous along the vocab"),
]


@pytest.mark.parametrize("make,kw,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_inputs_name_the_argument_like_the_cpu_op(make, kw, match):
    logits = torch.randn(2, 8, 50)
    x = torch.zeros(2, 8, dtype=torch.int64)
    l, xx = make(logits, x)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.dllm.select(l, xx, **kw)
    with pytest.raises(RuntimeError, match=match):
        st.triton_select(l, xx, **kw)


@pytest.mark.cuda
def test_cuda_graph_replay_takes_the_new_threshold():
    """Captured once; replays read the threshold tensor's current values (no recompile, no sync)."""
    gen = torch.Generator().manual_seed(12)
    logits = peaked_logits(2, 32, 2000, torch.float32, gen).cuda()
    x = torch.zeros(2, 32, dtype=torch.int64, device="cuda")
    params = pack_select_params(2, "cuda", dict(threshold=torch.tensor([0.9, 0.9])))
    for _ in range(2):  # warm-up: compiles the kernels outside the capture
        torch.ops.dllm.select(logits, x, params=params, rule=1)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.dllm.select(logits, x, params=params, rule=1)
    for thr in (0.9, 0.3, 0.05):
        params[:, SELECT_PARAM_COLUMNS.index("threshold")] = thr
        graph.replay()
        torch.cuda.synchronize()
        ref = torch.ops.dllm.select(logits.cpu(), x.cpu(), params=params.cpu(), rule=1)
        assert torch.equal(out[2].cpu(), ref[2]), thr
        assert torch.equal(out[0].cpu(), ref[0])


@pytest.mark.cuda
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_cuda_matches_the_cpu_op(rule):
    """Larger draws on the GPU (the op dispatches to the Triton kernels) against the C++ op."""
    for seed in range(3):
        logits, x, cand, kw = _draw(seed, rule, "prob", torch.bfloat16, B=4, L=300, V=5000)
        dev = lambda v: v.cuda() if isinstance(v, torch.Tensor) else v
        kw_cuda = {k: dev(v) for k, v in kw.items()}
        got = dk.select(logits.cuda(), x.cuda(), cand.cuda(), **kw_cuda)
        ref = dk.select(logits, x, cand, **kw)
        assert (got.transfer.cpu() != ref.transfer).sum() <= 2
