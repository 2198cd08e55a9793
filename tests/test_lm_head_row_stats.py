"""`lm_head_row_stats` (the LM head fused with the statistics pass) and `select_from_hidden`:
the same tokens as `select` on the materialised logits hidden @ W.T (+ bias), the sampled ones
too; confidences to float rounding; decisions equal except in a sequence with a near-tie
(counted); the partials against the float64 reference; bad inputs; opcheck."""

import pytest
import torch
import torch.nn.functional as F

import dllm_kernels as dk
from dllm_kernels.from_hidden import fused_unmask_from_hidden, select_from_hidden
from dllm_kernels.reference.lm_head_row_stats import lm_head_row_stats_reference
from dllm_kernels.row_stats import ROW_STATS_COLUMNS, row_positions
from test_select import CONF_NAMES, RULE_NAMES, _draw, _thresholds_of
from fused_unmask_cases import ambiguous_sequences

COL = {name: i for i, name in enumerate(ROW_STATS_COLUMNS)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def peaked_head(B, R, V, d, gen, *, spread=12.0, bias=False):
    """hidden [B, R, d], weight [V, d] (float32) whose logits are peaked like fused_unmask_cases.peaked_logits:
    spread ~2 with one token per row raised by up to `spread`; optional bias [V]."""
    weight = torch.randn(V, d, generator=gen) * (2.0 / d ** 0.5)
    hidden = torch.randn(B, R, d, generator=gen)
    top = torch.randint(0, V, (B, R), generator=gen)
    w_top = weight[top]
    hidden += (torch.rand(B, R, 1, generator=gen) * spread) * w_top / (w_top * w_top).sum(-1, keepdim=True)
    b = torch.randn(V, generator=gen) * 0.5 if bias else None
    return hidden, weight, b


def _in(dtype, *ts):
    return tuple(t.to(dtype) if t is not None else None for t in ts)


def _excused(logits, got, whole, kw):
    """Sequences whose transfer differs, each checked to hold a near-tie; returns their count."""
    read = ~torch.isnan(whole.conf)
    shift = 1 if kw.get("shift") else 0
    rs = kw.get("row_start")
    n = 0
    for b in range(logits.shape[0]):
        if torch.equal(got.transfer[b], whole.transfer[b]):
            continue
        row_of = lambda _, p: p - shift - (int(rs[b]) if rs is not None else 0)
        assert b in ambiguous_sequences(logits[b:b + 1], whole.conf[b:b + 1], read[b:b + 1], _thresholds_of(kw, b),
                                        row_of, seeds=kw["seed"][b:b + 1], offsets=kw["offset"][b:b + 1]), \
            f"seq {b}: transfer differs"
        n += 1
    return n


def _assert_same_tokens(got, whole):
    """x0 identical, allowing one row where the chunked GEMM rounded a tied top logit the other
    way (counted); conf to float rounding where the tokens agree."""
    same = got.x0 == whole.x0
    assert int((~same).sum()) <= 1, f"{int((~same).sum())} tokens differ"
    torch.testing.assert_close(got.conf[same], whole.conf[same], rtol=2e-5, atol=2e-6, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("conf", CONF_NAMES)
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_select_from_hidden_equals_select_on_the_logits(rule, conf, dtype):
    """Every rule x confidence x dtype, odd V and d, several chunks (d = 999: chunks of 256 / 512
    ids): select_from_hidden == select(F.linear(hidden, W, bias)), the bias on every other draw."""
    excused = 0
    for seed in range(2):
        _, x, cand, kw = _draw(300 + seed, rule, conf, dtype)
        B, L = x.shape
        R = L if kw.get("row_start") is None else L - 5
        gen = torch.Generator().manual_seed(seed)
        hidden, weight, bias = _in(dtype, *peaked_head(B, R, 1001, 999, gen, bias=seed == 1))
        logits = F.linear(hidden, weight, bias)
        whole = dk.select(logits, x.clone(), cand, **kw)
        got = select_from_hidden(hidden, weight, x.clone(), cand, bias=bias, **kw)
        _assert_same_tokens(got, whole)
        excused += _excused(logits, got, whole, kw)
    assert excused <= 1


def test_many_groups_one_row_and_suppression():
    """V = 20,011 over several task groups and chunks, R = 1, suppressed ids in two groups, sampling."""
    gen = torch.Generator().manual_seed(3)
    B, R, V, d = 3, 1, 20011, 301
    hidden, weight, bias = peaked_head(B, R, V, d, gen, bias=True)
    logits = F.linear(hidden, weight, bias)
    x = torch.zeros(B, 4, dtype=torch.int64)
    top = logits.argmax(-1).flatten().tolist()
    kw = dict(rule="topk", k=1, conf="margin", temperature=torch.tensor([0.0, 0.8, 2.0]),
              seed=torch.tensor([4, 5, 6]), offset=torch.tensor([0, 1, 2]), suppress_ids=[top[0], 9000, 19999],
              row_start=torch.tensor([0, 2, 3]))
    whole = dk.select(logits, x.clone(), **kw)
    got = select_from_hidden(hidden, weight, x.clone(), bias=bias, **kw)
    assert torch.equal(got.x0, whole.x0) and got.x0[0, 0] != top[0]
    torch.testing.assert_close(got.conf, whole.conf, rtol=2e-5, atol=2e-6, equal_nan=True)
    assert torch.equal(got.transfer, whole.transfer)


def test_sampled_tokens_are_the_logits_draws():
    """Temperature 1 on flat logits: the fused Gumbel-max winners equal select's on the logits,
    and they are not the argmax (the noise decides)."""
    gen = torch.Generator().manual_seed(9)
    B, R, V, d = 3, 16, 4099, 64
    hidden, weight, _ = peaked_head(B, R, V, d, gen, spread=1.0)
    hidden *= 0.2
    logits = F.linear(hidden, weight)
    x = torch.zeros(B, R, dtype=torch.int64)
    kw = dict(rule="threshold", threshold=0.0, temperature=1.0, seed=torch.tensor([1, 2, 3]),
              offset=torch.tensor([0, 7, 9]))
    whole = dk.select(logits, x.clone(), **kw)
    got = select_from_hidden(hidden, weight, x.clone(), **kw)
    assert torch.equal(got.x0, whole.x0)
    assert (whole.x0 != logits.argmax(-1)).float().mean() > 0.5
    drawn = select_from_hidden(hidden, weight, x.clone(), rule="threshold", threshold=0.0, temperature=1.0,
                               generator=torch.Generator().manual_seed(5))
    again = select_from_hidden(hidden, weight, x.clone(), rule="threshold", threshold=0.0, temperature=1.0,
                               generator=torch.Generator().manual_seed(5))
    assert torch.equal(drawn.x0, again.x0)  # seeds drawn from the generator, once for both stages


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("conf", CONF_NAMES)
def test_partials_against_float64(conf, dtype):
    """The op against the float64 reference (logits rounded once to the dtype), a shard at
    vocab_start: ids and sampled winners exact except at near-ties, values to rounding."""
    gen = torch.Generator().manual_seed(11)
    B, R, V, d, start = 2, 5, 777, 129, 3000
    hidden, weight, bias = _in(dtype, *peaked_head(B, R, V, d, gen, bias=True))
    positions = torch.randint(0, 50, (B, R), generator=gen)
    positions[1, 3] = -1
    args = (torch.tensor([3, -9]), torch.tensor([0, 5]), torch.tensor([0.0, 0.8], dtype=torch.float64),
            torch.tensor([start + 5, 7]), dk.CONF_KINDS[conf], start)
    got = torch.ops.dllm.lm_head_row_stats(hidden, weight, bias, positions, *args)
    ref = lm_head_row_stats_reference(hidden, weight, bias, positions, *args)
    ids = [COL["idx"], COL["noisy_idx"]]
    assert int((got[..., ids] != ref[..., ids]).sum()) <= 1
    ok = (got[..., COL["idx"]] == ref[..., COL["idx"]])[..., None]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(torch.where(ok, got, 0), torch.where(ok, ref, 0), **tol)
    assert bool((got[1, 3, COL["idx"]] == -1) and (got[1, 3, COL["m1"]] == float("-inf")))


def test_shard_partials_merge_to_the_whole_head():
    """Vocabulary-parallel: two shards of the head at their vocab_start, merged by select, give the
    whole head's tokens."""
    gen = torch.Generator().manual_seed(13)
    B, R, V, d = 2, 6, 3001, 65
    hidden, weight, bias = peaked_head(B, R, V, d, gen, bias=True)
    positions = row_positions(B, R)
    kw = dict(seed=torch.tensor([1, 2]), offset=torch.tensor([3, 4]), temperature=torch.tensor([0.0, 1.0]))
    shards = [dk.lm_head_row_stats(hidden, weight[lo:hi], positions, bias=bias[lo:hi], vocab_start=lo, **kw)
              for lo, hi in ((0, 1234), (1234, V))]
    x = torch.zeros(B, R, dtype=torch.int64)
    sel = dict(rule="threshold", threshold=0.5, **kw)
    got = dk.select(None, x.clone(), row_stats=torch.stack(shards), vocab_size=V, **sel)
    whole = dk.select(F.linear(hidden, weight, bias), x.clone(), **sel)
    assert torch.equal(got.x0, whole.x0)
    torch.testing.assert_close(got.conf, whole.conf, rtol=2e-5, atol=2e-6)


def test_tied_embedding():
    """A model with tied embeddings passes its embedding matrix (any strides) as the head."""
    gen = torch.Generator().manual_seed(14)
    emb = torch.nn.Embedding(513, 48)
    torch.nn.init.normal_(emb.weight, generator=gen)
    hidden = torch.randn(2, 7, 48, generator=gen)
    x = torch.zeros(2, 7, dtype=torch.int64)
    with torch.no_grad():
        got = select_from_hidden(hidden, emb.weight, x.clone(), rule="topk", k=2)
        whole = dk.select(hidden @ emb.weight.T, x.clone(), rule="topk", k=2)
        t_got = select_from_hidden(hidden, emb.weight.T.contiguous().T, x.clone(), rule="topk", k=2)
    assert torch.equal(got.x0, whole.x0) and torch.equal(got.transfer, whole.transfer)
    assert torch.equal(t_got.x0, whole.x0)


def test_bad_inputs_name_the_argument():
    gen = torch.Generator().manual_seed(1)
    hidden, weight, bias = peaked_head(2, 4, 50, 8, gen, bias=True)
    pos = row_positions(2, 4)
    op = torch.ops.dllm.lm_head_row_stats
    with pytest.raises(RuntimeError, match="hidden must be 3-D"):
        op(hidden[0], weight, None, pos)
    with pytest.raises(RuntimeError, match=r"weight must be \[V >= 1, d = 8\]"):
        op(hidden, weight[:, :7], None, pos)
    with pytest.raises(RuntimeError, match="weight must have hidden's dtype"):
        op(hidden, weight.double(), None, pos)
    with pytest.raises(RuntimeError, match="hidden must be float32, float16 or bfloat16"):
        op(hidden.double(), weight.double(), None, pos)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[50\]"):
        op(hidden, weight, bias[:49], pos)
    with pytest.raises(RuntimeError, match="positions must have shape"):
        op(hidden, weight, None, pos[:, :3])
    with pytest.raises(RuntimeError, match="seed must have shape"):
        op(hidden, weight, None, pos, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="temperature must be finite"):
        op(hidden, weight, None, pos, None, None, torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="suppress_ids must be int64"):
        op(hidden, weight, None, pos, suppress_ids=torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match="conf_kind must be 0..2"):
        op(hidden, weight, None, pos, conf_kind=3)
    with pytest.raises(RuntimeError, match="vocab_start must be >= 0"):
        op(hidden, weight, None, pos, vocab_start=-1)
    with pytest.raises(RuntimeError, match="empty batch"):
        op(hidden[:0], weight, None, pos[:0])
    x = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="gumbel_u is not accepted"):
        select_from_hidden(hidden, weight, x, temperature=1.0, gumbel_u=torch.rand(2, 4, 50))
    with pytest.raises(ValueError, match="lm_head must be a 2-D tensor"):
        select_from_hidden(hidden, weight[0], x)
    with pytest.raises(ValueError, match="hidden must be a 3-D tensor"):
        select_from_hidden(hidden[0], weight, x)


def test_opcheck():
    gen = torch.Generator().manual_seed(2)
    hidden, weight, bias = peaked_head(2, 6, 77, 12, gen, bias=True)
    args = (hidden, weight, bias, row_positions(2, 6), torch.tensor([1, 2]), torch.tensor([0, 3]),
            torch.tensor([0.0, 0.5], dtype=torch.float64), torch.tensor([4]), 1, 10)
    torch.library.opcheck(torch.ops.dllm.lm_head_row_stats.default, args)


@pytest.mark.parametrize("conf", CONF_NAMES)
def test_fused_unmask_from_hidden_equals_fused_unmask_on_the_logits(conf):
    gen = torch.Generator().manual_seed(21)
    B, L, V, d = 3, 24, 1001, 999
    hidden, weight, bias = peaked_head(B, L, V, d, gen, bias=True)
    logits = F.linear(hidden, weight, bias)
    for temperature in (0.0, 0.9):
        policy = dk.Policy(rule="threshold", conf=conf, threshold=0.5, block_length=8, temperature=temperature)
        x = torch.full((B, L), 7, dtype=torch.int64)
        x[:, 4:] = 1000
        states = [dk.DecodeState.new(B, L, gen_start=4, seed=[1, 2, 3]) for _ in range(2)]
        xs = [x.clone(), x.clone()]
        for _ in range(3):
            whole = dk.fused_unmask(logits, xs[0], states[0], policy, mask_id=1000, eos_id=999)
            got = fused_unmask_from_hidden(hidden, weight, xs[1], states[1], policy, mask_id=1000, eos_id=999,
                                           bias=bias)
            assert torch.equal(got.x0, whole.x0)
            assert torch.equal(xs[0], xs[1]) and torch.equal(states[0].state, states[1].state)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_widened_gemm_many_rows(dtype):
    """Enough rows (384) for the CPU op's float32-widened GEMM on two threads (the path taken on a
    CPU without a native 16-bit GEMM; elsewhere the native one): tokens of the logits, confidences
    to float rounding, sampling and bias included."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(int(torch.randint(0, 10000, ())))
        B, R, V, d = 12, 32, 20011, 32
        hidden, weight, bias = _in(dtype, *peaked_head(B, R, V, d, gen, bias=True))
        x = torch.zeros(B, R, dtype=torch.int64)
        kw = dict(rule="threshold", threshold=0.5, conf="prob", temperature=0.7,
                  seed=torch.arange(B), offset=torch.zeros(B, dtype=torch.int64))
        whole = dk.select(F.linear(hidden, weight, bias), x.clone(), **kw)
        got = select_from_hidden(hidden, weight, x.clone(), bias=bias, **kw)
        _assert_same_tokens(got, whole)
    finally:
        torch.set_num_threads(threads)
