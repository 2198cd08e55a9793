"""The Triton fused_unmask (dllm_kernels/triton_fused_unmask.py) against the C++ CPU op and the float64
reference, decision for decision. Without a GPU the kernels run under the Triton interpreter
(tests/conftest.py), so shapes stay small."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.triton_fused_unmask import FusedUnmaskArgumentError, fused_unmask_triton
from scenario_runner import step_inputs
from fused_unmask_cases import (DTYPES, Scenario, ambiguous_sequences, assert_same_decisions, cpu_op, make_batch,
                          op_positional, peaked_logits, rule_id, long_block_case)

CPU_OP = torch.ops.dllm.fused_unmask
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPLIT = dict(block_v=64, vocab_splits=3)  # forces the split-vocabulary layout on small V
ROWS = dict(block_v=64)                   # one program per row, several tiles per row


def triton_op(layout=None):
    """The Triton path on DEVICE (inputs copied there, outputs and in-place updates copied back)."""
    def op(*args, **kwargs):
        pos, kw = op_positional(*args, **kwargs)
        dev = [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in pos]
        kw = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        out = fused_unmask_triton(*dev, **kw, **(layout or {}))
        for host, d in zip(pos[1:4], dev[1:4]):  # x, conf, state are updated in place
            host.copy_(d.cpu())
        return tuple(t.cpu() for t in out)
    return op


def run_against_cpu(sc, steps=2, layout=None, invalid_rows=False, batch=None):
    """Steps the Triton path and the CPU op from the same inputs; compares every decision except in
    sequences with a legitimately ambiguous step. Continues from the CPU's result. Returns the
    number of (sequence, step) pairs compared."""
    gen = torch.Generator().manual_seed(sc.seed)
    kw = dict(sc.kw)
    if batch is None:
        batch = make_batch(sc.B, sc.L, sc.V, gen, block_length=kw["block_length"], seed=sc.seed)
    extra = sc.tensors()
    op = triton_op(layout)
    compared = 0
    for _ in range(steps):
        logits, row_start, gumbel_u, rank_u = step_inputs(sc, batch, extra, gen, invalid_rows)
        full = dict(mask_id=batch.mask_id, eos_id=batch.eos_id, **kw, **extra)
        opt = dict(row_start=row_start, gumbel_u=gumbel_u, rank_u=rank_u)
        ins = [(batch.x.clone(), batch.state.conf.clone(), batch.state.state.clone()) for _ in range(2)]
        out_t = op(logits, *ins[0], **opt, **full)
        out_c = cpu_op(logits, *ins[1], **opt, **full)
        (cx, cconf, cstate) = ins[1]
        read = ~torch.isclose(cconf, batch.state.conf, equal_nan=True)
        rs = row_start if row_start is not None else torch.zeros(sc.B, dtype=torch.int64)
        shift = 1 if kw["shift"] else 0
        skip = ambiguous_sequences(logits.double(), cconf, read, kw, row_of=lambda b, p: p - shift - int(rs[b]),
                                   gumbel_u=gumbel_u, seeds=batch.state.state[:, 9], offsets=batch.state.state[:, 10],
                                   filter_probs=_filter_probs(extra, cconf, cstate, sc.B))
        assert_same_decisions((*ins[0], out_t), (*ins[1], out_c), skip=skip)
        compared += sc.B - len(skip)
        batch.x, batch.state.conf, batch.state.state = cx, cconf, cstate
    return compared


def _filter_probs(extra, conf, state, B):
    from scenario_runner import filter_probabilities
    return filter_probabilities(extra, conf, state, B)


def small(sc, **over):
    """Interpreter-sized scenario: few sequences, short, small vocabulary (unless overridden): the
    drawn 1,000 and 2,053 become 257, still four 64-wide tiles and a partial one per row."""
    base = dict(B=min(sc.B, 3), L=min(max(sc.L, 9), 24), V=min(sc.V, 257))
    base.update(over)
    return dataclasses.replace(sc, **base)


# ---------------------------------------------------------------------------------------------
# Decision for decision against the CPU op


@pytest.mark.parametrize("conf_kind", [0, 1, 2])
@pytest.mark.parametrize("rule", range(5))
def test_every_rule_and_conf_kind(rule, conf_kind):
    dtype = DTYPES[(rule + conf_kind) % 3]
    sc = small(Scenario.draw(5000 + 100 * rule + 10 * conf_kind, rule=rule, conf_kind=conf_kind, dtype=dtype),
               B=2, L=12)
    assert run_against_cpu(sc, steps=2, layout=ROWS if (rule + conf_kind) % 2 else None) >= 2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_sampling_and_split_layout(dtype):
    """Temperature > 0 with Philox and with explicit uniforms, both stats layouts, odd V: for one
    program per row two 64-wide tiles and a partial one (131), for the split layout three splits of
    up to three tiles (389 > 3 x 2 x 64). The interpreter's cost grows with the tiles."""
    compared = 0
    for seed, gumbel in ((1, False), (2, True)):
        sc = Scenario.draw(7000 + seed + 10 * DTYPES.index(dtype), rule=seed % 5, dtype=dtype)
        sc.kw.update(temperature=0.8)
        sc = small(sc, B=2, L=12, V=389 if gumbel else 131, use_gumbel_u=gumbel)
        compared += run_against_cpu(sc, steps=2, layout=SPLIT if gumbel else ROWS)
    assert compared >= 2


@pytest.mark.parametrize("layout", [None, SPLIT], ids=["rows", "split"])
def test_shift_row_start_invalid_rows(layout):
    """Dream-style shift, logits rows offset per sequence, NaN / +inf / all -inf rows."""
    compared = 0
    for seed in range(2):
        sc = Scenario.draw(8000 + seed, rule=seed + 1, conf_kind=seed)
        sc.kw.update(shift=True, eotp=bool(seed))
        sc = small(sc, B=2, L=12, V=203, use_row_start=True)
        compared += run_against_cpu(sc, steps=2, layout=layout, invalid_rows=True)
    assert compared >= 2


def test_random_remasking_rank_u_and_philox():
    compared = 0
    for seed in (1, 2):  # odd seeds pass rank_u, even ones use the Philox rank stream
        sc = Scenario.draw(9000 + seed, rule=0, conf_kind=0)
        sc.kw.update(random_remasking=True, steps=3, block_length=8)
        sc = dataclasses.replace(sc, seed=9000 + seed)
        compared += run_against_cpu(small(sc, B=2, L=16, V=101), steps=2)
    assert compared >= 2


@pytest.mark.parametrize("rule, extra", [(2, dict(factor=1.0)), (2, dict(factor=2.0)),
                                         (3, dict(graded=True, window=3, relaxed_threshold=0.5)),
                                         (4, dict(filter_threshold=0.5))])
def test_rules_on_long_blocks(rule, extra):
    """One long block with many candidates, so that the run / window / filter boundaries matter; the
    policy tile is forced below the block length, so ranks, windows and the filter span two tiles."""
    sc = Scenario.draw(9300 + rule, rule=rule, conf_kind=0, dtype=torch.float32)
    sc.kw.update(block_length=20, steps=4, adaptive_block=False, eotp=False, early_stop=False,
                 temperature=0.0, shift=False, **extra)
    sc = dataclasses.replace(sc, B=2, L=23, V=64, use_row_start=False, use_gumbel_u=False)
    batch = make_batch(2, 23, 64, torch.Generator().manual_seed(1), gen_starts=[1, 3], mid_block=False)
    assert run_against_cpu(sc, steps=2, batch=batch, layout=dict(policy_tile=16)) >= 2


def crafted_logits(confs, V, gen):
    """Rows whose clean top probability is exactly the given confidence (token drawn at random)."""
    B, R = confs.shape
    logits = torch.log((1 - confs) / (V - 1))[..., None].expand(B, R, V).clone()
    top = torch.randint(0, V - 2, (B, R, 1), generator=gen)
    logits.scatter_(2, top, torch.log(confs)[..., None])
    return logits


@pytest.mark.parametrize("rule, extra", [
    (0, dict(steps=3)), (1, dict(threshold=0.7)), (2, dict(factor=1.0)), (2, dict(factor=0.5)),
    (2, dict(factor=0.1)),
    (3, dict(anchor_threshold=0.9, relaxed_threshold=0.7, window=2)),
    (3, dict(anchor_threshold=0.9, relaxed_threshold=0.5, window=3, graded=True))])
def test_rule_boundaries_on_crafted_confidences(rule, extra):
    """Confidences placed on both sides of every bar of the rule (factor run, LocalLeap window and
    graded thresholds, threshold, top-k count), in shuffled positions: each rule commits some but
    not all candidates, and exactly as the CPU op does."""
    levels = torch.tensor([0.99, 0.95, 0.86, 0.77, 0.74, 0.69, 0.62, 0.55, 0.4, 0.2])
    gen = torch.Generator().manual_seed(rule)
    B, L, V = 3, 12, 50
    confs = torch.stack([levels[torch.randperm(10, generator=gen)] for _ in range(B)])
    confs = torch.cat([torch.full((B, 2), 0.5), confs], 1)  # positions 0-1: the prompt
    logits = crafted_logits(confs, V, gen)
    batch = make_batch(B, L, V, gen, gen_starts=[2] * B, mid_block=False)
    kw = dict(Scenario.draw(1, rule=rule, conf_kind=0).kw)
    kw.update(rule=rule, conf_kind=0, temperature=0.0, shift=False, block_length=10, adaptive_block=False,
              eotp=False, early_stop=False, steps=1)
    kw.update(extra)
    outs = []
    for op in (triton_op(), cpu_op):
        x, conf, state = batch.x.clone(), batch.state.conf.clone(), batch.state.state.clone()
        out = op(logits, x, conf, state, mask_id=batch.mask_id, eos_id=batch.eos_id, **kw)
        outs.append((x, conf, state, out))
    assert_same_decisions(outs[0], outs[1])
    n_sel = outs[1][3][1].sum(1)
    assert ((n_sel > 0) & (n_sel < 10)).all(), n_sel


@pytest.mark.parametrize("layout", [ROWS, SPLIT], ids=["rows", "split"])
@pytest.mark.parametrize("conf_kind", [0, 1, 2])
def test_vocab_ties_take_the_lowest_index(layout, conf_kind):
    """A maximum shared within a tile and across tiles / splits: x0 is its lowest index (and the
    margin is 0), as torch.argmax and the CPU op."""
    B, L, V = 2, 6, 300
    gen = torch.Generator().manual_seed(conf_kind)
    logits = torch.randn(B, L, V, generator=gen).to(torch.bfloat16).float()
    firsts = torch.randint(0, 60, (B, L), generator=gen)
    for b in range(B):
        for p in range(L):
            f = int(firsts[b, p])
            # even rows: shared inside one 64-wide tile; odd rows: also in later tiles and splits
            for v in (f, f + 3) if p % 2 == 0 else (f, f + 130, 299):
                logits[b, p, v] = 9.0
    batch = make_batch(B, L, V, gen, gen_starts=[0, 0], mid_block=False)
    kw = dict(Scenario.draw(2, rule=1, conf_kind=conf_kind).kw, temperature=0.0, shift=False, eotp=False,
              adaptive_block=False, block_length=L)
    outs = []
    for op in (triton_op(layout), cpu_op):
        x, conf, state = batch.x.clone(), batch.state.conf.clone(), batch.state.state.clone()
        outs.append((x, conf, state, op(logits, x, conf, state, mask_id=batch.mask_id, eos_id=batch.eos_id,
                                        **kw)))
    assert_same_decisions(outs[0], outs[1])
    assert torch.equal(outs[0][3][0], firsts)
    if conf_kind == 1:
        assert torch.equal(outs[0][1], torch.zeros(B, L))


def test_adablock_eotp_early_stop():
    sc = Scenario.draw(9100, rule=1, conf_kind=0, dtype=torch.float32)
    sc.kw.update(adaptive_block=True, block_delta=0.3, block_window_fraction=0.5, eotp=True, early_stop=True,
                 threshold=0.5)
    assert run_against_cpu(small(sc, B=3, L=20, V=131), steps=3) >= 3


def test_edge_shapes():
    """L = 1, tiny V (3, not a multiple of any tile), no masked position, one masked position."""
    sc = Scenario.draw(9200, rule=0, conf_kind=0)
    run_against_cpu(dataclasses.replace(sc, B=2, L=1, V=3, use_row_start=False), steps=1)

    gen = torch.Generator().manual_seed(3)
    sc = dataclasses.replace(Scenario.draw(9201, rule=1, conf_kind=1), B=2, L=10, V=37, use_row_start=False)
    sc.kw.update(block_length=4)
    batch = make_batch(2, 10, 37, gen, gen_starts=[2, 3], mid_block=False)
    batch.x[0, :] = 5  # sequence 0: nothing masked
    batch.x[1, :] = 5
    batch.x[1, 7] = batch.mask_id  # sequence 1: exactly one masked position
    assert run_against_cpu(sc, steps=2, batch=batch) >= 2
    assert int(batch.state.state[0, 8]) == 1  # nothing masked: done at the first step
    assert int(batch.state.state[1, 3]) >= 8  # the block holding the masked position was opened


def test_done_sequence_untouched_and_offset_advances():
    gen = torch.Generator().manual_seed(4)
    batch = make_batch(2, 12, 50, gen, gen_starts=[2, 2], mid_block=False)
    batch.state.state[1, 8] = 1  # done
    logits = peaked_logits(2, 12, 50, torch.float32, gen)
    kw = dict(Scenario.draw(1, rule=1, conf_kind=0).kw)
    x, conf, state = batch.x.clone(), batch.state.conf.clone(), batch.state.state.clone()
    x0, transfer, ws = triton_op()(logits, x, conf, state, mask_id=batch.mask_id, eos_id=batch.eos_id, **kw)
    assert torch.equal(x[1], batch.x[1]) and torch.equal(state[1], batch.state.state[1])
    assert not transfer[1].any() and torch.equal(ws[1], torch.zeros(3))
    torch.testing.assert_close(conf[1], batch.state.conf[1], rtol=0, atol=0, equal_nan=True)
    assert int(state[0, 10]) == int(batch.state.state[0, 10]) + 1 and transfer[0].any()


# ---------------------------------------------------------------------------------------------
# Noise: the Triton Philox stream is the reference's, bit for bit


def test_philox_noise_is_the_reference_stream():
    """Sampling with Philox must pick exactly the token that the reference's uniforms pick."""
    from dllm_kernels.reference.philox import noise_uniform

    B, L, V = 2, 6, 300
    gen = torch.Generator().manual_seed(11)
    batch = make_batch(B, L, V, gen, gen_starts=[0, 0], mid_block=False)
    batch.state.state[:, 9] = torch.tensor([0x1234_5678_9ABC_DEF0 - 2**63, 7])
    batch.state.state[:, 10] = torch.tensor([2**33 + 5, 3])
    logits = torch.randn(B, L, V, generator=gen) * 0.5  # flat: the noise decides
    kw = dict(Scenario.draw(1, rule=0, conf_kind=0).kw, temperature=1.0, block_length=L, steps=1, eotp=False)
    u = torch.stack([torch.stack([torch.from_numpy(np.asarray(noise_uniform(
        int(batch.state.state[b, 9]), int(batch.state.state[b, 10]), np.arange(V), p), dtype=np.float32))
        for p in range(L)]) for b in range(B)])
    outs = []
    for g in (None, u):
        x, conf, state = batch.x.clone(), batch.state.conf.clone(), batch.state.state.clone()
        outs.append(triton_op()(logits, x, conf, state, gumbel_u=g, mask_id=batch.mask_id, eos_id=batch.eos_id,
                                **kw)[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], logits.argmax(-1))  # the noise did change the picks


# ---------------------------------------------------------------------------------------------
# Against the float64 reference


@pytest.mark.parametrize("seed", range(6))
def test_against_float64_reference(seed):
    from scenario_runner import run_scenario

    def op(*args, **kwargs):
        return triton_op(SPLIT if seed % 2 else None)(*args, **kwargs)

    sc = small(Scenario.draw(300 + seed), B=2, L=16)
    compared, skipped = run_scenario(op, sc, steps=2)
    assert compared >= 1, f"every step ambiguous: {sc}"


# ---------------------------------------------------------------------------------------------
# Argument checks (as the C++ op's) and the dispatcher registration


def _args(**over):
    B, L, V = 1, 4, 8
    a = dict(logits=torch.zeros(B, L, V), x=torch.full((B, L), 7), conf=torch.zeros(B, L),
             state=torch.zeros(B, 11, dtype=torch.int64), row_start=None, gumbel_u=None, rank_u=None,
             suppress_ids=None, zero_conf_ids=None, delimiter_ids=None, filter_w1=None, filter_b1=None,
             filter_w2=None, filter_b2=None, mask_id=7, eos_id=6, rule=0, conf_kind=0, temperature=0.0,
             shift=False, steps=1, threshold=0.9, factor=1.0, anchor_threshold=0.9, relaxed_threshold=0.75,
             window=4, graded=False, filter_threshold=0.96, random_remasking=False, block_length=4,
             adaptive_block=False, block_delta=0.3, block_window_fraction=0.25, eotp=False, early_stop=False)
    a.update(over)
    return op_positional(**a)  # (required arguments, keyword arguments with the pack)


@pytest.mark.parametrize("over, name", [
    (dict(logits=torch.zeros(1, 4, 8, dtype=torch.float64)), "logits"),
    (dict(logits=torch.zeros(1, 8, 4).transpose(1, 2)), "stride"),
    (dict(x=torch.zeros(1, 4, dtype=torch.int32)), "x"),
    (dict(conf=torch.zeros(1, 5)), "conf"),
    (dict(state=torch.zeros(1, 10, dtype=torch.int64)), "state"),
    (dict(row_start=torch.zeros(2, dtype=torch.int64)), "row_start"),
    (dict(gumbel_u=torch.zeros(1, 4, 7)), "gumbel_u"),
    (dict(suppress_ids=torch.tensor([8])), "suppress_ids"),
    (dict(mask_id=8), "mask_id"),
    (dict(eos_id=7), "eos_id"),
    (dict(rule=5), "rule"),
    (dict(rule=4), "filter"),
    (dict(steps=0), "steps"),
    (dict(threshold=1.5), "threshold"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(filter_w1=torch.zeros(2, 3)), "filter"),
])
def test_bad_arguments_raise_like_the_op(over, name):
    pos, kw = _args(**over)
    with pytest.raises(FusedUnmaskArgumentError, match=name):
        fused_unmask_triton(*pos, **kw)
    with pytest.raises(RuntimeError):  # the C++ op rejects the same input
        CPU_OP(*pos, **kw)


def test_register_triton_cuda_kernel():
    """Each op's Triton launcher is registered for the CUDA key where it has no native CUDA kernel
    (in a child process: the registration is global), and a second call changes nothing."""
    code = ("import torch, dllm_kernels\n"
            "from dllm_kernels import _native\n"
            "ops = ('fused_unmask', 'select', 'row_stats', 'lm_head_row_stats', 'speculative_verify')\n"
            "had = {op: _native.has_native_kernel(op, 'CUDA') for op in ops}\n"
            "got = _native.register_triton_kernels()\n"
            "assert got == {op: not had[op] for op in ops}, (got, had)\n"
            "assert all(_native.has_native_kernel(op, 'CUDA') for op in ops)\n"
            "assert not any(_native.register_triton_kernels().values())\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.cuda
@pytest.mark.parametrize("V, R", [(4099, 24), (126464, 32)], ids=["rows", "split-llada-vocab"])
def test_cuda_matches_cpu_op(V, R):
    """On the GPU with the launcher's own layout choice: few rows of a LLaDA-size vocabulary take
    the split layout, more rows of a small one the per-row layout."""
    from dllm_kernels.triton_fused_unmask import stats_layout

    sc = Scenario.draw(42, rule=3, conf_kind=0, dtype=torch.bfloat16)
    sc.kw.update(temperature=0.7)
    sc = dataclasses.replace(sc, B=1 if V > 100000 else 4, L=R, V=V, use_row_start=False)
    splits = stats_layout(sc.B * R, V, torch.device("cuda", torch.cuda.current_device()))[1]
    assert (splits > 1) == (V > 100000)
    assert run_against_cpu(sc, steps=3) > 0


@pytest.mark.cuda
def test_cuda_graph_capture_replays_steps():
    """The whole step is capturable: replaying one captured step K times gives the same tokens and
    state as K eager steps (fresh Philox noise each time: OFFSET advances on the device)."""
    B, L, V, K = 3, 48, 32000, 4
    gen = torch.Generator().manual_seed(5)
    batch = make_batch(B, L, V, gen, gen_starts=[4, 8, 12], mid_block=False)
    logits = peaked_logits(B, L, V, torch.bfloat16, gen).cuda()
    kw = dict(Scenario.draw(3, rule=1, conf_kind=0).kw, temperature=1.0, block_length=16, steps=4,
              threshold=0.8, eotp=False, adaptive_block=False)
    kw = dict(mask_id=batch.mask_id, eos_id=batch.eos_id, **kw)
    init = [t.cuda() for t in (batch.x, batch.state.conf, batch.state.state)]

    def step(x, conf, state):
        pos, rest = op_positional(logits, x, conf, state, **kw)
        return fused_unmask_triton(*pos, **rest)

    eager = [t.clone() for t in init]
    for _ in range(K):
        step(*eager)
    static = [t.clone() for t in init]
    step(*[t.clone() for t in init])  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(*static)
    for t, t0 in zip(static, init):  # capture does not run the kernels: start from the initial state
        t.copy_(t0)
    for _ in range(K):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static[0], eager[0]) and torch.equal(static[2], eager[2])
    torch.testing.assert_close(static[1], eager[1], rtol=0, atol=0, equal_nan=True)
    assert int((static[0] != init[0]).sum()) > 0


# ---------------------------------------------------------------------------------------------
# The policy stage's ranking: one sort per block (rows up to POLICY_SORT_MAX) against the long rows'
# ranking (sorted chunks, binary searches, LocalLeap's carried scans), at block lengths 1, 33 and a
# long block, with many exact ties


LONG_RULES = [dict(rule="topk", steps=4), dict(rule="topk", steps=3, random_remasking=True),
              dict(rule="threshold", threshold=0.5), dict(rule="factor", factor=1.5),
              dict(rule="localleap", anchor_threshold=0.6, relaxed_threshold=0.3, window=3, graded=True),
              dict(rule="filter", steps=5)]


# Every rule at 1 and 33 positions; on the long block the random top-k key and LocalLeap's scans. Long
# is past one 64-wide policy tile (below POLICY_SORT_MAX, the Triton kernels' only length threshold)
# under the interpreter, whose sort costs grow with its width; on a GPU it is 1,024, past twice the
# CUDA kernel's 256 policy threads (each thread then swaps several pairs per sort stage).
LONG_BLOCK = 1024 if DEVICE == "cuda" else 100
# The long rows' chunk width here: narrower than these blocks, so a block spans several chunks (and
# the interpreter's sorts stay small); the launcher's is POLICY_RANK_CHUNK.
RANK_CHUNK = 256 if DEVICE == "cuda" else 16
SORT_CASES = [(block, f) for block in (1, 33) for f in LONG_RULES] + [(LONG_BLOCK, LONG_RULES[1]),
                                                                      (LONG_BLOCK, LONG_RULES[4])]


@pytest.mark.parametrize("block, fields", SORT_CASES,
                         ids=[f"{b}-{rule_id(f)}" for b, f in SORT_CASES])
def test_sorted_ranks_equal_the_cpu_op_and_chunked_ranks(block, fields):
    """The launcher's choice (a sort) against the C++ op and against the long rows' ranking (chunks of
    RANK_CHUNK) at every length: the same state, tokens and transfers. The tied groups' confidences
    are far apart, so float32 rounding differences between backends never reorder them; inside a
    group the lower position wins on every backend. The long block's logits cover its last 64-70
    positions only (the interpreter runs one program per row): the sort still spans the whole
    block's vector (a power of two), the chunked ranking searches every chunk of the block, and
    top-k takes fewer than all candidates."""
    from dllm_kernels.triton_fused_unmask import policy_sort_n

    B, V = 2, 6
    L = max(block, 40)
    R = L if block <= 33 else 64
    if R < L and "steps" in fields:
        fields = dict(fields, steps=40)
    policy, logits, x, st, row_start = long_block_case(fields, block, B, L, R, V, torch.Generator().manual_seed(block))
    assert policy_sort_n(L) >= L
    runs = [(fused_unmask_triton, dict(sort_n=None)), (CPU_OP, {}),
            (fused_unmask_triton, dict(sort_n=0, rank_chunk=RANK_CHUNK, policy_tile=16))]
    outs = []
    for fn, layout in runs:
        dev = [t.to(DEVICE).clone() for t in (logits, x, st.conf, st.state)]
        rs = row_start.to(DEVICE) if row_start is not None else None
        out = fn(*dev, V - 1, V - 2, **policy.op_arguments(DEVICE, V, B), row_start=rs, **layout)
        outs.append([t.cpu() for t in (dev[1], dev[3], out[0], out[1])])
    for other in outs[1:]:
        for a, b, name in zip(outs[0], other, ("x", "state", "x0", "transfer")):
            assert torch.equal(a, b), name
    n = int(outs[0][3].sum())
    assert n >= 1 and (fields["rule"] != "topk" or block == 1 or n < B * min(block, R))
