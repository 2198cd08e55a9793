"""The CUDA fused_unmask (csrc/kernels/fused_unmask_*.cuh) against the C++ CPU op and the float64
reference, plus the GPU-only guarantees: CUDA-graph capture and replay with fresh noise, batch
invariance and determinism (bit for bit), and independence from the rows' memory alignment.

Every test here needs a CUDA GPU (marked `cuda`, skipped elsewhere by conftest.py).
"""
import math

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels import _native
from dllm_kernels import state as S
from dllm_kernels.fused_unmask_params import UNMASK_PARAM_COLUMNS
from scenario_runner import filter_probabilities, run_scenario, step_inputs
from fused_unmask_cases import (DTYPES, Scenario, ambiguous_sequences, assert_same_decisions, boost_token,
                          make_batch, op_positional, peaked_logits, rule_id, long_block_case)

pytestmark = pytest.mark.cuda
OP = torch.ops.dllm.fused_unmask


def call(*args, **kwargs):
    pos, kw = op_positional(*args, **kwargs)
    return OP(*pos, **kw)


def cpu_op(logits, x, conf, state, **kw):
    return call(logits, x, conf, state, **kw)


def cuda_op(logits, x, conf, state, **kw):
    """The CUDA op on copies of CPU inputs; writes the in-place results back, returns CPU outputs."""
    dev = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    xd, cd, sd = x.cuda(), conf.cuda(), state.cuda()
    out = call(logits.cuda(), xd, cd, sd, **dev)
    torch.cuda.synchronize()
    x.copy_(xd.cpu())
    conf.copy_(cd.cpu())
    state.copy_(sd.cpu())
    return tuple(t.cpu() for t in out)


def bits(t):
    """A float tensor's bit pattern (so NaN == NaN and -0.0 != 0.0 in comparisons)."""
    return t.contiguous().view(torch.int32)


def assert_bitwise_same(a, b, what=""):
    for name, u, v in zip(("x", "conf", "state", "x0", "transfer", "window_stats"), a, b):
        u, v = u.cpu(), v.cpu()
        if u.dtype == torch.float32:
            u, v = bits(u), bits(v)
        assert torch.equal(u, v), f"{what}{name} differs"


@pytest.fixture(autouse=True, scope="module")
def _cuda_kernels_loaded():
    assert _native.HAS_CUDA_KERNELS, f"dllm_kernels._C_cuda did not load: {getattr(_native, 'CUDA_KERNELS_ERROR', '')}"


# ---- against the C++ CPU op, step by step ----------------------------------------------------------


def step_vs_cpu(logits, x, conf, state, args):
    """One step through the CUDA and the CPU op from identical (CPU) inputs, compared.

    With T == 0 the predictions x0 must agree exactly (an argmax is exact in any order) and the
    confidences of every read row to float32 rounding; the decisions must agree except for
    sequences whose step is ambiguous at float32 precision (docs/policies.md §1: a confidence next to a
    threshold or a tie, a sampled row whose best two noisy values nearly tie). Returns the CPU
    op's (x, conf, state) and the number of sequences compared.
    """
    B = x.shape[0]
    seeds, offsets = state[:, S.SEED].clone(), state[:, S.OFFSET].clone()
    c = (x.clone(), conf.clone(), state.clone())
    g = (x.clone(), conf.clone(), state.clone())
    out_c = cpu_op(logits, *c, **args)
    out_g = cuda_op(logits, *g, **args)

    read = ~torch.isclose(c[1], conf, equal_nan=True)
    if args.get("temperature", 0.0) == 0:  # every read row, ambiguous or not
        assert torch.equal(out_g[0], out_c[0]), f"x0 differs at {torch.nonzero(out_g[0] != out_c[0]).tolist()}"
        torch.testing.assert_close(g[1][read], c[1][read], rtol=2e-5, atol=2e-6, equal_nan=True)

    row_start = args.get("row_start")
    rs = row_start if row_start is not None else torch.zeros(B, dtype=torch.int64)
    shift = 1 if args.get("shift", False) else 0
    skip = ambiguous_sequences(logits.double(), c[1], read, args, row_of=lambda b, p: p - shift - int(rs[b]),
                               gumbel_u=args.get("gumbel_u"), seeds=seeds, offsets=offsets,
                               filter_probs=filter_probabilities(args, c[1], c[2], B))
    assert_same_decisions((*g, out_g), (*c, out_c), skip=skip)
    return c, B - len(skip)


def run_vs_cpu(sc: Scenario, steps: int = 3):
    """Steps a random scenario through the CUDA and the CPU op (step_vs_cpu), both continuing from
    the CPU result. Returns the number of sequence-steps compared."""
    gen = torch.Generator().manual_seed(sc.seed)
    kw = dict(sc.kw)
    batch = make_batch(sc.B, sc.L, sc.V, gen, block_length=kw["block_length"], seed=sc.seed)
    extra = sc.tensors()
    compared = 0
    for _ in range(steps):
        logits, row_start, gumbel_u, _ = step_inputs(sc, batch, extra, gen)
        args = dict(kw, **extra, row_start=row_start, gumbel_u=gumbel_u, mask_id=batch.mask_id,
                    eos_id=batch.eos_id)
        c, n = step_vs_cpu(logits, batch.x, batch.state.conf, batch.state.state, args)
        compared += n
        batch.x, batch.state.conf, batch.state.state = c
    return compared


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("conf_kind", [0, 1, 2])
@pytest.mark.parametrize("rule", range(5))
def test_matches_cpu_every_rule_conf_kind_dtype(rule, conf_kind, dtype):
    compared = 0
    for seed in range(2):
        sc = Scenario.draw(5000 + 1000 * rule + 100 * conf_kind + 10 * DTYPES.index(dtype) + seed,
                           rule=rule, conf_kind=conf_kind, dtype=dtype)
        compared += run_vs_cpu(sc, steps=3)
    assert compared > 0


# ---- a block past kSortMax (fused_unmask_launch.h): ranks from sorted chunks ---------------------

LONG_BLOCK = 2100  # one full chunk of 2,048 and a partial one
LONG_BLOCK_RULES = [dict(rule="topk", steps=40), dict(rule="topk", steps=40, random_remasking=True),
                    dict(rule="threshold", threshold=0.5), dict(rule="factor", factor=1.5),
                    dict(rule="localleap", anchor_threshold=0.6, relaxed_threshold=0.3, window=3, graded=True),
                    dict(rule="filter", steps=40)]


@pytest.mark.parametrize("fields", LONG_BLOCK_RULES, ids=rule_id)
def test_long_block_matches_cpu(fields):
    """Every rule on a 2,100-position block: the same tokens, state and transfers as the CPU op.
    The logits (four tied rows, far apart: exact ties, no float32 reordering) cover the block's
    last 64 and 70 positions (row_start), so the ranking spans both chunks; sequence 1's block
    starts at a third of the row."""
    B, V, L = 2, 6, LONG_BLOCK
    policy, logits, x, st, row_start = long_block_case(fields, LONG_BLOCK, B, L, 70, V, torch.Generator().manual_seed(7))
    args = policy.op_arguments("cpu", V, B)
    pack = args.pop("params")  # the flat form cpu_op and cuda_op take: one keyword per number
    kw = dict(args, **{name: float(pack[0, i]) for i, name in enumerate(UNMASK_PARAM_COLUMNS)},
              mask_id=V - 1, eos_id=V - 2, row_start=row_start)
    outs = []
    for op in (cpu_op, cuda_op):
        x_, conf_, state_ = x.clone(), st.conf.clone(), st.state.clone()
        out = op(logits, x_, conf_, state_, **kw)
        outs.append((x_, state_, out[0], out[1]))
    for a, b, name in zip(*outs, ("x", "state", "x0", "transfer")):
        assert torch.equal(a, b), name
    assert int(outs[0][3].sum()) >= 1


@pytest.mark.parametrize("seed", range(24))
def test_random_scenarios_vs_reference(seed):
    sc = Scenario.draw(seed)
    compared, skipped = run_scenario(cuda_op, sc, steps=4)
    assert compared >= skipped, f"too many ambiguous steps ({skipped}) for {sc}"


@pytest.mark.parametrize("V", [3, 17, 1001, 16385, 40961, 126464])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_vocab_sizes_and_philox_sampling(V, temperature):
    """Odd and multi-tile vocabularies (the split boundaries, the partial last group), Philox noise."""
    for dtype in DTYPES:
        kw = dict(rule=1, conf_kind=1, temperature=temperature, shift=False, steps=2, threshold=0.5,
                  block_length=6, eotp=temperature > 0, early_stop=False)
        sc = Scenario(seed=V + int(temperature * 7), kw=dict(Scenario.draw(V).kw, **kw), dtype=dtype, V=V,
                      L=12, B=2)
        run_vs_cpu(sc, steps=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_length_one(dtype):
    x = torch.full((1, 1), 9, dtype=torch.int64, device="cuda")
    st = dk.DecodeState.new(1, 1, gen_start=0, device="cuda")
    logits = torch.zeros(1, 1, 10, dtype=dtype, device="cuda")
    logits[0, 0, 3] = 5
    x0, transfer, ws = call(logits, x, st.conf, st.state, mask_id=9, eos_id=8)
    assert x.tolist() == [[3]] and x0.tolist() == [[3]] and transfer.tolist() == [[True]]
    assert int(st.state[0, S.DONE]) == 1 and int(st.state[0, S.OFFSET]) == 1
    expect = torch.softmax(logits[0, 0].float(), 0)[3]
    torch.testing.assert_close(st.conf[0, 0], expect)


def test_invalid_rows_match_cpu():
    """NaN, +inf and all -inf rows (also all -inf through suppression) give x0 = mask, conf = NaN."""
    B, L, V = 2, 8, 40961
    gen = torch.Generator().manual_seed(3)
    logits = peaked_logits(B, L, V, torch.float32, gen)
    logits[0, 1, 20000] = float("nan")
    logits[0, 2, V - 1] = float("inf")
    logits[0, 3] = -float("inf")
    logits[1, 4, 5] = -float("inf")  # an ordinary -inf value
    logits[1, 5] = -float("inf")
    logits[1, 5, 33000] = 1.0  # ... whose only finite value is suppressed below
    x = torch.full((B, L), V - 1, dtype=torch.int64)
    for rule in (0, 1, 3):
        for dtype in DTYPES:
            st = dk.DecodeState.new(B, L, gen_start=0)
            kw = dict(rule=rule, steps=4, block_length=L, mask_id=V - 1, eos_id=V - 2,
                      suppress_ids=torch.tensor([33000, 7]))
            g = (x.clone(), st.conf.clone(), st.state.clone())
            out_g = cuda_op(logits.to(dtype), *g, **kw)
            for b, r in ((0, 1), (0, 2), (0, 3), (1, 5)):
                assert int(out_g[0][b, r]) == V - 1 and math.isnan(float(g[1][b, r]))
            assert not math.isnan(float(g[1][1, 4]))
            step_vs_cpu(logits.to(dtype), x, st.conf, st.state, kw)


def test_span_longer_than_grid_slots():
    """An open block far longer than block_length: the statistics grid strides over it."""
    B, L, V = 2, 96, 3001
    gen = torch.Generator().manual_seed(8)
    x = torch.full((B, L), V - 1, dtype=torch.int64)
    st = dk.DecodeState.new(B, L, gen_start=4, seed=5)
    st.state[:, S.BLOCK_START], st.state[:, S.BLOCK_END] = 4, 90
    st.state[:, S.BLOCK_MASKED] = st.state[:, S.BLOCK_REMAINING] = 86
    logits = peaked_logits(B, L, V, torch.bfloat16, gen)
    for temperature in (0.0, 0.9):
        kw = dict(rule=0, steps=3, block_length=4, temperature=temperature, mask_id=V - 1, eos_id=V - 2)
        g = (x.clone(), st.conf.clone(), st.state.clone())
        cuda_op(logits, *g, **kw)
        assert (~torch.isnan(g[1][:, 4:90])).all(), "every row of the open block must be read"
        step_vs_cpu(logits, x, st.conf, st.state, kw)


def test_no_rows():
    B, L, V = 2, 5, 11
    x = torch.full((B, L), 10, dtype=torch.int64)
    st = dk.DecodeState.new(B, L, gen_start=0)
    kw = dict(mask_id=10, eos_id=9, block_length=2)
    logits = torch.zeros(B, 0, V)
    _, compared = step_vs_cpu(logits, x, st.conf, st.state, kw)
    assert compared == B


# ---- GPU-only guarantees --------------------------------------------------------------------------


def _batch_on_cuda(B, L, V, dtype, seed, block_length=8):
    gen = torch.Generator().manual_seed(seed)
    batch = make_batch(B, L, V, gen, block_length=block_length, seed=seed)
    logits = peaked_logits(B, L, V, dtype, gen, spread=6.0)
    for b in range(B):
        boost_token(logits, b, int(torch.randint(0, L, (1,), generator=gen)), batch.eos_id, 1.0)
    return batch, logits.cuda()


def _run(logits, x, conf, state, kw):
    x, conf, state = x.clone(), conf.clone(), state.clone()
    out = call(logits, x, conf, state, **kw)
    return (x, conf, state, *out)


POLICIES = [
    dict(rule=1, conf_kind=0, temperature=0.0, threshold=0.7),
    dict(rule=3, conf_kind=2, temperature=0.8, threshold=0.0, anchor_threshold=0.9, eotp=True),
    dict(rule=0, conf_kind=1, temperature=1.0, steps=3, random_remasking=True, early_stop=True),
    dict(rule=2, conf_kind=0, temperature=0.5, adaptive_block=True, block_delta=0.3),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("policy", range(len(POLICIES)))
def test_batch_invariance_and_alignment(policy, dtype):
    """A sequence's results are bit-identical alone or in a batch, wherever its rows sit in memory
    (odd V: rows of one batch start at different 16-byte alignments)."""
    B, L, V = 5, 40, 40961
    batch, logits = _batch_on_cuda(B, L, V, dtype, seed=100 + policy)
    kw = dict(POLICIES[policy], block_length=8, mask_id=batch.mask_id, eos_id=batch.eos_id,
              delimiter_ids=torch.tensor([5], device="cuda"))
    x, conf, state = batch.x.cuda(), batch.state.conf.cuda(), batch.state.state.cuda()
    whole = _run(logits, x, conf, state, kw)
    for b in range(B):
        alone = _run(logits[b:b + 1].clone(), x[b:b + 1], conf[b:b + 1], state[b:b + 1], kw)
        assert_bitwise_same(alone, [t[b:b + 1] for t in whole], what=f"sequence {b}: ")
    # A misaligned view of the same values (vocab offset by one element) gives the same bits.
    padded = torch.empty(B, L, V + 1, dtype=dtype, device="cuda")
    padded[:, :, 1:] = logits
    view = padded[:, :, 1:]
    assert view.stride(2) == 1 and not view.is_contiguous()
    assert_bitwise_same(_run(view, x, conf, state, kw), whole, what="misaligned view: ")


@pytest.mark.parametrize("policy", range(len(POLICIES)))
def test_deterministic_for_a_seed(policy):
    B, L, V = 4, 64, 126464
    batch, logits = _batch_on_cuda(B, L, V, torch.bfloat16, seed=7 + policy, block_length=16)
    kw = dict(POLICIES[policy], block_length=16, mask_id=batch.mask_id, eos_id=batch.eos_id,
              delimiter_ids=torch.tensor([5], device="cuda"))
    x, conf, state = batch.x.cuda(), batch.state.conf.cuda(), batch.state.state.cuda()
    first = _run(logits, x, conf, state, kw)
    for _ in range(3):
        assert_bitwise_same(_run(logits, x, conf, state, kw), first)
    if POLICIES[policy]["temperature"] > 0:  # another seed samples differently
        state2 = state.clone()
        state2[:, S.SEED] += 1
        other = _run(logits, x, conf, state2, kw)
        assert not torch.equal(other[3], first[3])


def test_cuda_graph_capture_and_replay_with_fresh_noise():
    B, L, V = 3, 48, 4099
    gen = torch.Generator().manual_seed(21)
    batch = make_batch(B, L, V, gen, block_length=16, seed=21)
    logits = (torch.randn(B, L, V, generator=gen) * 0.5).to(torch.bfloat16).cuda()  # flat: sampling varies
    kw = dict(rule=0, conf_kind=0, temperature=1.5, steps=8, block_length=16, mask_id=batch.mask_id,
              eos_id=batch.eos_id)
    init = (batch.x.cuda(), batch.state.conf.cuda(), batch.state.state.cuda())
    n_steps = 4

    eager = []
    x, conf, state = (t.clone() for t in init)
    for _ in range(n_steps):
        out = call(logits, x, conf, state, **kw)
        eager.append((x.clone(), conf.clone(), state.clone(), *(t.clone() for t in out)))

    x, conf, state = (t.clone() for t in init)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        call(logits, *(t.clone() for t in init), **kw)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call(logits, x, conf, state, **kw)
    assert torch.equal(state, init[2]), "capture must not run the step"

    for k in range(n_steps):
        graph.replay()
        torch.cuda.synchronize()
        assert_bitwise_same((x, conf, state, *out), eager[k], what=f"replay {k}: ")
        assert not state[:, S.DONE].any(), "test set-up: no sequence may finish within the replays"
        assert torch.equal(state[:, S.OFFSET], init[2][:, S.OFFSET] + k + 1)
    # Fresh noise per replay: positions read at both of the first two steps were sampled anew.
    read_both = (eager[0][1] != init[1]) & (eager[1][1] != eager[0][1])
    read_both &= ~torch.isnan(eager[0][1]) & ~torch.isnan(eager[1][1])
    assert read_both.any()
    assert (eager[0][3][read_both] != eager[1][3][read_both]).any()


def test_large_vocab_batch_one_matches_cpu():
    """The LLaDA shape at batch 1 (32 rows of a 126,464 vocabulary, bf16), greedy and sampled.
    (Confidences this flat are often within float32 noise of each other, so the decision check
    may skip the sequence; predictions and confidences are compared regardless.)"""
    for temperature in (0.0, 1.0):
        kw = dict(rule=1, conf_kind=0, temperature=temperature, shift=False, steps=4, threshold=0.9,
                  block_length=32, eotp=False, early_stop=False, adaptive_block=False)
        sc = Scenario(seed=77, kw=dict(Scenario.draw(77).kw, **kw), dtype=torch.bfloat16, V=126464, L=32, B=1)
        run_vs_cpu(sc, steps=2)
