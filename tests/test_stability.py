"""Stability of the ops inside someone else's decoder: determinism for a seed (and
independence from the thread count), batch and permutation invariance, no memory growth over
10,000 calls, decode loops that make progress every step (and the documented stall on invalid
rows, which a decoder must guard against), torch.compile(fullgraph=True) of a decode step that
calls both ops, torch.library.opcheck of every op with every optional argument, and (GPU) CUDA-graph
capture of a whole decode step."""
from __future__ import annotations

import ctypes
import gc
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import dllm_kernels as dk
from dllm_kernels import state as S
from test_properties import (attention_cases, case_extra, cpu_op, initial_batch, make_attention_case, step_tensors,
                             fused_unmask_cases)
from fused_unmask_cases import peaked_logits, unmask_pack

OP = torch.ops.dllm.fused_unmask
ATTN = torch.ops.dllm.block_attention
HAS_CUDA = torch.cuda.is_available()
FAST = settings(max_examples=40, deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _unmask_outputs(op, c, gen_seed=None):
    """One step of case c through op; returns every output and in-place update."""
    gen = torch.Generator().manual_seed(c.seed if gen_seed is None else gen_seed)
    x, conf, state = initial_batch(c, gen)
    extra = case_extra(c, gen)
    logits, row_start, gumbel_u, rank_u = step_tensors(c, gen)
    out = op(logits, x, conf, state, row_start=row_start, gumbel_u=gumbel_u, rank_u=rank_u,
             mask_id=c.mask_id, eos_id=c.eos_id, **c.kw, **extra)
    return dict(x=x, conf=conf, state=state, x0=out[0], transfer=out[1], window_stats=out[2]), \
        dict(logits=logits, row_start=row_start, gumbel_u=gumbel_u, rank_u=rank_u, extra=extra)


def _bitwise_equal(a, b):
    """Same shape, dtype and bits (float32 compared as int32, so NaNs compare equal to themselves)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.float32:
        return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))
    return torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Determinism


@given(fused_unmask_cases())
@FAST
def test_fused_unmask_deterministic_and_thread_count_independent(c):
    """Same inputs and seed: bit-identical outputs, whatever the number of threads."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = _unmask_outputs(cpu_op, c)
        torch.set_num_threads(max(2, threads))
        many, _ = _unmask_outputs(cpu_op, c)
        again, _ = _unmask_outputs(cpu_op, c)
    finally:
        torch.set_num_threads(threads)
    for k in one:
        assert _bitwise_equal(one[k], many[k]), f"{k} depends on the thread count"
        assert _bitwise_equal(many[k], again[k]), f"{k} differs between two identical calls"


def test_sampling_depends_on_the_seed():
    """The determinism above is not vacuous: another Philox seed gives other samples."""
    B, L, V = 1, 32, 64
    logits = torch.zeros(B, L, V)  # flat: the sample is pure noise
    picks = []
    for seed in (1, 2):
        x = torch.full((B, L), V - 1)
        stt = dk.DecodeState.new(B, L, gen_start=0, seed=seed)
        out = dk.fused_unmask(logits, x, stt, dk.Policy(rule="topk", steps=1, temperature=1.0, block_length=L),
                              mask_id=V - 1, eos_id=V - 2)
        picks.append(out.x0)
    assert not torch.equal(picks[0], picks[1])


def test_block_attention_deterministic():
    for a in _attention_examples(6):
        outs = []
        for _ in range(2):
            c = make_attention_case(a)
            out = ATTN(c["q"], c["k_new"], c["v_new"], c["k_cache"], c["v_cache"], c["block_start"],
                       c["block_len"], c["kv_len"] if a["mode"] == 1 else None, a["mode"],
                       a["scale"] or 1 / math.sqrt(a["d"]), a["block_size"])
            outs.append((out, c["k_cache"], c["v_cache"]))
        for u, v in zip(*outs):
            assert torch.equal(u, v)


def _attention_examples(n):
    """n drawn block_attention cases (derandomized), as plain dicts."""
    found = []

    @given(attention_cases(max_B=3))
    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    def collect(a):
        found.append(a)

    collect()
    return found


# ---------------------------------------------------------------------------------------------
# Batch invariance


def _permute_inputs(ins, perm, c):
    out = {}
    for k, v in ins.items():
        if k == "extra" or v is None:
            out[k] = v
        else:
            out[k] = v[perm]
    return out


@given(fused_unmask_cases(), st.randoms(use_true_random=False))
@FAST
def test_fused_unmask_batch_permutation_invariance(c, rnd):
    """A sequence's result depends only on its own rows: permuting the batch permutes the outputs,
    bit for bit, and a sequence alone gives the same as inside the batch."""
    ref, ins = _unmask_outputs(cpu_op, c)
    perm = list(range(c.B))
    rnd.shuffle(perm)
    perm_t = torch.tensor(perm)
    gen = torch.Generator().manual_seed(c.seed)
    x, conf, state = initial_batch(c, gen)
    p = _permute_inputs(ins, perm_t, c)
    x, conf, state = x[perm_t].contiguous(), conf[perm_t].contiguous(), state[perm_t].contiguous()
    out = cpu_op(p["logits"], x, conf, state, row_start=p["row_start"], gumbel_u=p["gumbel_u"], rank_u=p["rank_u"],
                 mask_id=c.mask_id, eos_id=c.eos_id, **c.kw, **ins["extra"])
    got = dict(x=x, conf=conf, state=state, x0=out[0], transfer=out[1], window_stats=out[2])
    for k in got:
        assert _bitwise_equal(got[k], ref[k][perm_t].contiguous()), f"{k}: not permutation invariant (perm {perm})"
    # One sequence alone.
    b = perm[0]
    gen = torch.Generator().manual_seed(c.seed)
    x, conf, state = initial_batch(c, gen)
    sl = slice(b, b + 1)
    one = {k: (v[sl].contiguous() if isinstance(v, torch.Tensor) else v) for k, v in ins.items()}
    x, conf, state = x[sl].contiguous(), conf[sl].contiguous(), state[sl].contiguous()
    out = cpu_op(one["logits"], x, conf, state, row_start=one["row_start"], gumbel_u=one["gumbel_u"],
                 rank_u=one["rank_u"], mask_id=c.mask_id, eos_id=c.eos_id, **c.kw, **ins["extra"])
    got = dict(x=x, conf=conf, state=state, x0=out[0], transfer=out[1], window_stats=out[2])
    for k in got:
        assert _bitwise_equal(got[k], ref[k][sl].contiguous()), f"{k}: sequence {b} alone differs from in the batch"


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_block_attention_batch_invariance(backend):
    """Each sequence alone gives bit for bit what it gets inside the batch (a ragged batch: idle,
    length-1, full blocks, every mode)."""
    from dllm_kernels.block_attention import triton_kernel_module

    tk = triton_kernel_module()
    base = dict(B=4, q_max=5, hq=4, hkv=2, d=32, l_max=21, starts=[0, 7, 3, 16], lens=[5, 1, 0, 5],
                kv_lens=[9, 21, 6, 21], dtype=torch.bfloat16, block_size=2, scale=None, layout="contiguous",
                seed=4)
    for mode in (0, 1, 2):
        a = dict(base, mode=mode)
        c = make_attention_case(a)
        kv = c["kv_len"] if mode == 1 else None
        args = lambda c, kv: (c["q"], c["k_new"], c["v_new"], c["k_cache"], c["v_cache"], c["block_start"],  # noqa: E731
                              c["block_len"], kv, mode, 0.2, 2)
        run = ATTN if backend == "cpu" else tk.block_attention_triton
        full = run(*args(c, kv))
        for b in range(4):
            cb = make_attention_case(a)
            one = {k: (v[b:b + 1].clone() if isinstance(v, torch.Tensor) else v) for k, v in cb.items()}
            out = run(*args(one, one["kv_len"] if mode == 1 else None))
            assert torch.equal(out[0], full[b]), f"mode {mode}: sequence {b} alone differs"
            assert torch.equal(one["k_cache"][0], c["k_cache"][b])


# ---------------------------------------------------------------------------------------------
# Memory: 10,000 calls


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_bytes():
    """Bytes in use in the C heap (glibc mallinfo2: small blocks + mmapped blocks): every tensor's
    storage and every native temporary on the CPU goes through it."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _growth(call, n=10_000, warmup=300):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: threads only add barrier waits on a loaded machine
    try:
        for _ in range(warmup):
            call()
        gc.collect()
        h0, r0 = _heap_bytes(), _rss_bytes()
        for _ in range(n):
            call()
        gc.collect()
        return _heap_bytes() - h0, _rss_bytes() - r0
    finally:
        torch.set_num_threads(threads)


# 64 KiB over 10,000 calls: a leak of 8 bytes per call is caught; allocator noise is far below
# (measured: a few hundred bytes).
LEAK_LIMIT = 64 * 1024


@pytest.mark.skipif(not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"), reason="needs glibc >= 2.33")
def test_fused_unmask_no_memory_growth_over_10000_calls():
    B, L, V = 2, 16, 40
    gen = torch.Generator().manual_seed(0)
    logits = peaked_logits(B, L, V, torch.bfloat16, gen)
    w = dict(filter_w1=torch.randn(4, 8), filter_b1=torch.randn(4), filter_w2=torch.randn(8, 4), filter_b2=torch.randn(8))
    x = torch.full((B, L), V - 1)
    stt = dk.DecodeState.new(B, L, gen_start=2, seed=5)
    ids = torch.tensor([3]), torch.tensor([4]), torch.tensor([5])
    rank_u = torch.rand(B, L, generator=gen)
    params = unmask_pack(B, temperature=0.7, steps=2, block_length=4)

    def call():  # every optional argument, sampling, AdaBlock, EoTP: the longest native path
        x.fill_(V - 1)
        stt.state.copy_(dk.DecodeState.new(B, L, gen_start=2, seed=5).state)
        OP(logits, x, stt.conf, stt.state, V - 1, V - 2, params, torch.zeros(B, dtype=torch.int64), None, rank_u,
           *ids, w["filter_w1"], w["filter_b1"], w["filter_w2"], w["filter_b2"], rule=4, conf_kind=2,
           random_remasking=True, adaptive_block=True, eotp=True, early_stop=True)

    heap, rss = _growth(call)
    assert heap < LEAK_LIMIT, f"C heap grew by {heap} bytes over 10,000 calls"
    assert rss < 4 * 2 ** 20, f"RSS grew by {rss} bytes over 10,000 calls"


@pytest.mark.skipif(not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"), reason="needs glibc >= 2.33")
def test_block_attention_no_memory_growth_over_10000_calls():
    g = torch.Generator().manual_seed(1)
    q, kn, vn = torch.randn(2, 2, 2, 16, generator=g), torch.randn(2, 2, 1, 16, generator=g), torch.randn(2, 2, 1, 16, generator=g)
    kc, vc = torch.randn(2, 8, 1, 16, generator=g), torch.randn(2, 8, 1, 16, generator=g)
    bs, bl, kv = torch.tensor([0, 5]), torch.tensor([2, 1]), torch.tensor([4, 8])

    def call():
        ATTN(q, kn, vn, kc, vc, bs, bl, kv, 1, 0.25, 0)

    heap, rss = _growth(call)
    assert heap < LEAK_LIMIT, f"C heap grew by {heap} bytes over 10,000 calls"
    assert rss < 4 * 2 ** 20, f"RSS grew by {rss} bytes over 10,000 calls"


def test_memory_probe_sees_a_leak():
    """The probe is not blind: keeping 64 bytes alive per call is reported."""
    kept = []
    heap, _ = _growth(lambda: kept.append(torch.empty(16)), n=2000, warmup=10)
    assert heap >= 2000 * 64


@pytest.mark.cuda
def test_cuda_no_memory_growth_over_10000_calls():
    B, L, V = 2, 16, 1000
    logits = torch.randn(B, L, V, device="cuda", dtype=torch.bfloat16)
    x = torch.full((B, L), V - 1, device="cuda")
    stt = dk.DecodeState.new(B, L, gen_start=0, seed=1, device="cuda")
    policy = dk.Policy(rule="threshold", temperature=0.5, block_length=4, eotp=True)
    q = torch.randn(2, 4, 4, 64, device="cuda", dtype=torch.bfloat16)
    kn, vn = torch.randn(2, 4, 2, 64, device="cuda", dtype=torch.bfloat16), torch.randn(2, 4, 2, 64, device="cuda", dtype=torch.bfloat16)
    kc, vc = torch.zeros(2, 64, 2, 64, device="cuda", dtype=torch.bfloat16), torch.zeros(2, 64, 2, 64, device="cuda", dtype=torch.bfloat16)
    bs, bl = torch.tensor([0, 8], device="cuda"), torch.tensor([4, 4], device="cuda")

    def call():
        x.fill_(V - 1)
        dk.fused_unmask(logits, x, stt, policy, mask_id=V - 1, eos_id=V - 2)
        dk.block_attention(q, kn, vn, kc, vc, bs, bl, mode="prefix")

    for _ in range(100):
        call()
    torch.cuda.synchronize()
    a0, r0 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    for _ in range(10_000):
        call()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == a0 and torch.cuda.memory_reserved() == r0


# ---------------------------------------------------------------------------------------------
# The decode loop terminates: progress every step


@given(fused_unmask_cases(max_B=3, max_L=24, big_V=(257,), max_steps=1))
@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_every_step_commits_or_finishes(c):
    """With valid logits for every position, each step of a not-done sequence commits at least one
    token or finishes the sequence, so a decode ends within (masked positions + 1) steps: a step
    loop around the op cannot spin forever on valid input (invalid rows: next test)."""
    c.rows, c.invalid_rows, c.strided = "full", False, False
    # Reachable starting states only (a hand-made open block or a corrupt state can hold a top-k
    # schedule that commits nothing for a few steps); every sequence decodes.
    c.seq_kinds = [k if k in ("fresh", "prefilled") else "fresh" for k in c.seq_kinds]
    gen = torch.Generator().manual_seed(c.seed)
    x, conf, state = initial_batch(c, gen)
    extra = case_extra(c, gen)
    # The model must not be able to predict the mask token: a committed prediction of mask_id leaves
    # the position masked (docs, step 9), so without this a decode can stall (V = 2 finds it at
    # once). Suppressing mask_id is how a decoder rules that out.
    extra["suppress_ids"] = torch.tensor([c.mask_id])
    kw = dict(c.kw, shift=False)
    # A step that commits nothing must move the block forward (a block whose positions were all
    # decoded already), so a decode takes at most (masked positions + L + 1) steps.
    budget = int((x == c.mask_id).sum()) + c.L + 1
    for n in range(budget):
        done_before = state[:, S.DONE] != 0
        masked_before = (x == c.mask_id).sum(dim=1)
        block_end_before = state[:, S.BLOCK_END].clone()
        logits, _, gumbel_u, rank_u = step_tensors(c, gen)
        cpu_op(logits, x, conf, state, gumbel_u=gumbel_u, rank_u=rank_u, mask_id=c.mask_id, eos_id=c.eos_id,
               **kw, **extra)
        progressed = (((x == c.mask_id).sum(dim=1) < masked_before) | (state[:, S.DONE] != 0)
                      | (state[:, S.BLOCK_END] > block_end_before) | done_before)
        assert bool(progressed.all()), f"step {n}: no progress for sequences {(~progressed).nonzero().flatten().tolist()}"
        if bool((state[:, S.DONE] != 0).all()):
            break
    assert bool((state[:, S.DONE] != 0).all()), f"not done after {budget} steps"
    assert not bool(((x == c.mask_id) & (torch.arange(c.L)[None, :] < state[:, S.END_POS:S.END_POS + 1])).any())


def test_invalid_rows_stall_and_a_decoder_must_bound_its_loop():
    """The documented rule for NaN / +inf / all -inf rows: the position is never committed, so a
    decoder fed such rows forever would never finish: the op makes no progress and says so
    (DONE stays 0, BLOCK_REMAINING > 0); decoders must bound their step loop."""
    B, L, V = 1, 6, 12
    x = torch.full((B, L), V - 1)
    stt = dk.DecodeState.new(B, L, gen_start=0)
    logits = torch.randn(B, L, V)
    logits[0, 3, 5] = math.nan
    for _ in range(50):
        dk.fused_unmask(logits, x, stt, dk.Policy(rule="threshold", threshold=0.0, block_length=8, suppress_ids=(V - 1,)),
                        mask_id=V - 1, eos_id=V - 2)
    assert int(x[0, 3]) == V - 1 and (x[0, [0, 1, 2, 4, 5]] != V - 1).all()
    assert not stt.all_done() and int(stt.state[0, S.BLOCK_REMAINING]) == 1


def test_predicting_mask_id_stalls_unless_suppressed():
    """A committed prediction of mask_id leaves the position masked (the documented odd case), so
    a model that keeps predicting the mask token stalls the decode; suppress_ids=(mask_id,) is
    the guard, and with it every step commits."""
    B, L, V = 1, 4, 6
    logits = torch.zeros(B, L, V)
    logits[..., V - 1] = 9.0  # the mask token is the model's favourite
    for suppress, finishes in (((), False), ((V - 1,), True)):
        x = torch.full((B, L), V - 1)
        stt = dk.DecodeState.new(B, L, gen_start=0)
        policy = dk.Policy(rule="topk", steps=L, block_length=L, suppress_ids=suppress)
        for _ in range(L):
            dk.fused_unmask(logits, x, stt, policy, mask_id=V - 1, eos_id=V - 2)
        assert stt.all_done() == finishes and bool((x != V - 1).all()) == finishes


# ---------------------------------------------------------------------------------------------
# torch.compile, opcheck


def _attention_args(dtype=torch.float32, mode=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return (r(2, 4, 4, 32), r(2, 4, 2, 32), r(2, 4, 2, 32), r(2, 12, 2, 32), r(2, 12, 2, 32),
            torch.tensor([0, 6]), torch.tensor([4, 2]), torch.tensor([7, 12]) if mode == 1 else None, mode, 0.125,
            2 if mode == 2 else 0)


def _toy_decode_step(attention):
    """A decode step of a toy denoiser: block attention over the KV cache, a logits projection,
    fused_unmask; `attention(q, k, v, k_cache, v_cache, block_start, block_len)`."""
    B, L, V, H, D = 2, 12, 40, 2, 32
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(V, H * D, generator=g) * 0.3
    proj = torch.randn(H * D, V, generator=g)
    policy = dk.Policy(rule="threshold", threshold=0.7, block_length=4, temperature=0.5)

    def step(x, state, conf, k_cache, v_cache, block_start):
        h = emb[x[:, :4]].view(B, 4, H, D)  # a fixed-size block of queries
        out = attention(h, h, h, k_cache, v_cache, block_start, torch.full_like(block_start, 4))
        logits = (out.reshape(B, 4, H * D) @ proj).repeat(1, L // 4, 1)
        res = dk.fused_unmask(logits, x, dk.DecodeState(state, conf), policy, mask_id=V - 1, eos_id=V - 2)
        return res.transfer.sum(), out

    return step, (B, L, V, H, D)


def _raw_attention(q, k, v, kc, vc, bs, bl):
    return torch.ops.dllm.block_attention(q, k, v, kc, vc, bs, bl, None, 0, 1 / math.sqrt(q.shape[-1]), 0)


def test_torch_compile_fullgraph_decode_step():
    """The toy decode step (both ops) compiled with fullgraph=True gives what the eager step gives
    (tokens, state, conf, cache, attention output) over several steps."""
    step, (B, L, V, H, D) = _toy_decode_step(_raw_attention)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    runs = []
    for fn in (step, compiled):
        x = torch.full((B, L), V - 1)
        x[:, :2] = 1
        stt = dk.DecodeState.new(B, L, gen_start=2, seed=9)
        kc, vc = torch.zeros(B, L, H, D), torch.zeros(B, L, H, D)
        outs = [fn(x, stt.state, stt.conf, kc, vc, torch.tensor([0, 4]))[1] for _ in range(3)]
        runs.append((x, stt.state, stt.conf, kc, vc, outs))
    for a, b in zip(runs[0][:5], runs[1][:5]):
        assert _bitwise_equal(a, b)
    for a, b in zip(runs[0][5], runs[1][5]):
        torch.testing.assert_close(a, b)

    # block_attention alone, every mode.
    for mode in (0, 1, 2):
        args = _attention_args(mode=mode)
        eager_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        f = torch.compile(lambda *a: torch.ops.dllm.block_attention(*a) * 2, fullgraph=True, backend="aot_eager")
        got = f(*args)
        want = torch.ops.dllm.block_attention(*eager_args) * 2
        assert torch.equal(got, want) and torch.equal(args[3], eager_args[3])


def test_torch_compile_fullgraph_block_attention_wrapper():
    def wrapper(q, k, v, kc, vc, bs, bl):
        return dk.block_attention(q, k, v, kc, vc, bs, bl, mode="prefix", check_values=False)

    step, (B, L, V, H, D) = _toy_decode_step(wrapper)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.full((B, L), V - 1)
    stt = dk.DecodeState.new(B, L, gen_start=2, seed=9)
    kc, vc = torch.zeros(B, L, H, D), torch.zeros(B, L, H, D)
    out = compiled(x, stt.state, stt.conf, kc, vc, torch.tensor([0, 4]))[1]
    x2 = torch.full((B, L), V - 1)
    st2 = dk.DecodeState.new(B, L, gen_start=2, seed=9)
    want = step(x2, st2.state, st2.conf, torch.zeros(B, L, H, D), torch.zeros(B, L, H, D), torch.tensor([0, 4]))[1]
    assert torch.equal(x, x2)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_opcheck_block_attention(dtype, mode):
    torch.library.opcheck(ATTN.default, _attention_args(dtype, mode))


@pytest.mark.parametrize("with_optional", [False, True])
def test_opcheck_fused_unmask_every_argument(with_optional):
    B, L, V = 2, 8, 30
    g = torch.Generator().manual_seed(0)
    logits = peaked_logits(B, L, V, torch.float16, g)
    x = torch.full((B, L), V - 1)
    stt = dk.DecodeState.new(B, L, gen_start=1, seed=4)
    params = unmask_pack(B, temperature=0.8, steps=2, block_length=4)
    opt = [params] + [None] * 10
    if with_optional:
        opt = [params, torch.zeros(B, dtype=torch.int64), torch.rand(B, L, V, generator=g).clamp(1e-6, 1 - 1e-6),
               torch.rand(B, L, generator=g), torch.tensor([2]), torch.tensor([3]), torch.tensor([4]),
               torch.randn(4, 8, generator=g), torch.randn(4, generator=g), torch.randn(8, 4, generator=g),
               torch.randn(8, generator=g)]
    args = (logits, x, stt.conf, stt.state, V - 1, V - 2, *opt)
    kwargs = dict(rule=4 if with_optional else 3, conf_kind=1, random_remasking=with_optional,
                  adaptive_block=with_optional, eotp=True, early_stop=True, graded=True)
    torch.library.opcheck(OP.default, args, kwargs)


# ---------------------------------------------------------------------------------------------
# GPU: a whole decode step captured in one CUDA graph


@pytest.mark.cuda
def test_cuda_graph_capture_of_a_whole_decode_step():
    """Attention over the cache, logits projection and fused_unmask captured once; replays must
    equal eager steps (same inputs, same Philox noise: OFFSET advances on the device)."""
    B, L, V, H, D, Q = 2, 32, 1000, 4, 64, 8
    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    emb = (torch.randn(V, H * D, generator=g) * 0.2).to(dev, torch.bfloat16)
    proj = torch.randn(H * D, V, generator=g).to(dev, torch.bfloat16)
    policy = dk.Policy(rule="threshold", threshold=0.6, block_length=Q, temperature=0.7, eotp=True)

    def fresh():
        x = torch.full((B, L), V - 1, device=dev)
        x[:, :4] = 7
        return dict(x=x, st=dk.DecodeState.new(B, L, gen_start=4, seed=[3, 4], device=dev),
                    kc=torch.zeros(B, L, H, D, device=dev, dtype=torch.bfloat16),
                    vc=torch.zeros(B, L, H, D, device=dev, dtype=torch.bfloat16))

    def step(s):
        bs = s["st"].block_start.clamp(max=L - Q)
        rows = bs[:, None] + torch.arange(Q, device=dev)[None, :]
        h = emb[torch.gather(s["x"], 1, rows)].view(B, Q, H, D)
        out = dk.block_attention(h, h, h, s["kc"], s["vc"], bs, torch.full_like(bs, Q), mode="prefix")
        logits = (out.reshape(B, Q, H * D) @ proj).float()
        dk.fused_unmask(logits, s["x"], s["st"], policy, mask_id=V - 1, eos_id=V - 2, row_start=bs)

    eager, graphed = fresh(), fresh()
    step(fresh())  # warm-up: compiles the Triton kernels outside the capture
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(fresh())
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(graphed)
    # Capture does not run the step; the graphed state is still fresh. Replay and compare.
    for _ in range(6):
        step(eager)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(eager["x"], graphed["x"]) and torch.equal(eager["st"].state, graphed["st"].state)
        assert torch.equal(eager["kc"], graphed["kc"])


def test_counters_at_int64_max():
    """A corrupt state with STEP or OFFSET at INT64_MAX: no crash, and both counters wrap to INT64_MIN
    as the reference's do (docs: the op takes any state). The sanitizer build (scripts/sanitize_cpu.sh)
    runs this too: the counters advance modulo 2^64 without signed overflow."""
    B, L, V = 1, 4, 10
    for col in (S.STEP, S.OFFSET):
        x = torch.full((B, L), V - 1)
        stt = dk.DecodeState.new(B, L, gen_start=0)
        stt.state[0, col] = 2 ** 63 - 1
        stt.state[0, S.BLOCK_START], stt.state[0, S.BLOCK_END], stt.state[0, S.BLOCK_REMAINING] = 0, 4, 4
        OP(torch.randn(B, L, V), x, stt.conf, stt.state, V - 1, V - 2, unmask_pack(B, steps=3, block_length=4),
           rule=0)
        assert int(stt.state[0, col]) == -(2 ** 63)
        assert bool(((x >= 0) & (x < V)).all())


# ---------------------------------------------------------------------------------------------
# The decoder's guard (dllm_kernels/generate.py): a stalled decode stops at max_steps


def _with_alarm(fn, seconds=120):
    """Runs fn with a SIGALRM deadline, so a loop that never ends fails instead of hanging CI."""
    import signal

    def boom(*_):
        raise TimeoutError("the decode loop did not stop")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class _CountingModel:
    """A callable model for generate(): logits [B, L, V] from `make(x)`, calls counted."""

    def __init__(self, V, make):
        self.V, self.make, self.calls = V, make, 0

    def __call__(self, x):
        self.calls += 1
        return self.make(x)


@pytest.mark.parametrize("stall", ["nan_rows", "predicts_mask"])
def test_generate_guard_stops_a_stalled_decode(stall):
    """Rows that never become valid (NaN), or a model whose favourite token is the mask token:
    the op makes no progress, and generate() stops after max_steps with finished=False."""
    from dllm_kernels.generate import generate

    V, mask_id, eos_id = 16, 15, 14

    def make(x):
        logits = torch.randn(x.shape[0], x.shape[1], V, generator=torch.Generator().manual_seed(0))
        if stall == "nan_rows":
            logits[:, -1] = math.nan  # the last position never gets a valid row
        else:
            logits[..., mask_id] = 50.0
        return logits

    for max_steps in (None, 7):
        model = _CountingModel(V, make)
        out = _with_alarm(lambda: generate(model, [[1, 2, 3], [4]], gen_length=6, block_length=3,
                                           policy=dk.Policy(rule="threshold", threshold=0.5, block_length=3),
                                           mask_id=mask_id, eos_id=eos_id, max_steps=max_steps))
        limit = max_steps or 2 * 6 + 8
        # two prompt lengths: a plain callable gets one unpadded forward per length each step
        assert not out.finished and out.steps == limit and model.calls == out.forward_calls == 2 * limit
        assert bool((out.tokens == mask_id).any())


def test_generate_finishes_within_its_default_limit():
    """Valid logits: every policy finishes well inside the default max_steps (2 * gen_length + 8),
    the bound progress-every-step gives (test_every_step_commits_or_finishes)."""
    from dllm_kernels.generate import generate

    V, mask_id, eos_id = 32, 31, 30
    g = torch.Generator().manual_seed(1)

    def make(x):
        logits = peaked_logits(x.shape[0], x.shape[1], V, torch.float32, g)
        logits[..., mask_id] = -math.inf
        return logits

    for policy in (dk.Policy(rule="topk", steps=8, block_length=8), dk.Policy(rule="threshold", block_length=4),
                   dk.Policy(rule="localleap", block_length=8, eotp=True),
                   dk.Policy(rule="factor", block_length=5, early_stop=True, temperature=0.8)):
        model = _CountingModel(V, make)
        out = _with_alarm(lambda: generate(model, [[1, 2], [3, 4, 5, 6]], gen_length=16, policy=policy,
                                           mask_id=mask_id, eos_id=eos_id))
        assert out.finished and out.steps <= 2 * 16 + 8 and not bool((out.tokens == mask_id).any()), policy


# ---- Threads: the op fans out only above a work threshold; results never depend on the split ----

_SPLIT_CHILD = r"""
import torch, dllm_kernels as dk
g = torch.Generator().manual_seed(0)
B, L, V = 3, 16, 500
logits = torch.randn(B, L, V, generator=g) * 4
outs = []
for threads in (1, 2):
    torch.set_num_threads(threads)
    x = torch.full((B, L), V - 1)
    st = dk.DecodeState.new(B, L, gen_start=[0, 3, 5], seed=7)
    policy = dk.Policy(rule="threshold", threshold=0.3, block_length=8, temperature=1.0)
    steps = [dk.fused_unmask(logits, x, st, policy, mask_id=V - 1, eos_id=V - 2) for _ in range(3)]
    outs.append((x, st.state, st.conf.nan_to_num(-1.0), *[t for s in steps for t in s]))
assert all(torch.equal(a, b) for a, b in zip(*outs)), "results depend on the thread count"
print("ok")
"""


def _child(code, **env):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=300)  # a hang fails the test instead of the suite


def test_fan_out_forced_gives_the_serial_result():
    """DLLM_CPU_MIN_PARALLEL_VALUES=0 fans out even tiny steps (rows handed out one at a time to
    two threads): bit-identical to one thread."""
    out = _child(_SPLIT_CHILD, DLLM_CPU_MIN_PARALLEL_VALUES="0")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


_CONCURRENT_CHILD = r"""
import concurrent.futures, torch, dllm_kernels as dk
torch.set_num_interop_threads(1)  # one pool thread for every caller's helper: most start too late
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
B, L, V = 2, 16, 300
inputs = [torch.randn(B, L, V, generator=g) * 4 for _ in range(16)]

def step(logits):
    x = torch.full((B, L), V - 1)
    st = dk.DecodeState.new(B, L, gen_start=[0, 3], seed=5)
    t = dk.fused_unmask(logits, x, st, dk.Policy(rule="threshold", threshold=0.3, block_length=8),
                        mask_id=V - 1, eos_id=V - 2)
    return x, st.state, st.conf.nan_to_num(-1.0), *t

alone = [step(logits) for logits in inputs]
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    together = list(pool.map(step, inputs * 4))
assert all(torch.equal(a, b) for ref, got in zip(alone * 4, together) for a, b in zip(ref, got))
print("ok")
"""


def test_fan_out_from_concurrent_callers():
    """Eight Python threads fanning out at once over a one-thread inter-op pool: each caller takes
    items itself and never waits for a helper that has not started (no deadlock), and every
    result equals the one computed alone."""
    out = _child(_CONCURRENT_CHILD, DLLM_CPU_MIN_PARALLEL_VALUES="0")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


_FORK_CHILD = r"""
import os, torch, dllm_kernels as dk
torch.set_num_threads(2)
B, L, V = 1, 32, 126464  # 4M logits values: the statistics pass fans out, the policy stage does not
logits = torch.randn(B, L, V, generator=torch.Generator().manual_seed(0)) * 4

def step():
    x = torch.full((B, L), V - 1)
    st = dk.DecodeState.new(B, L, gen_start=0, seed=5)
    dk.fused_unmask(logits, x, st, dk.Policy(rule="threshold", threshold=0.3, block_length=8),
                    mask_id=V - 1, eos_id=V - 2)
    return x

ref = step()  # the parent's inter-op pool has run helpers
pid = os.fork()
if pid == 0:
    os._exit(0 if all(torch.equal(step(), ref) for _ in range(3)) else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def test_fan_out_in_a_forked_child():
    """A process forked after the statistics pass fanned out (the parent's helper threads do not
    exist in the child; torch gives it a fresh inter-op pool) still finishes its steps, with the
    parent's results. A forked child of a process that ran OpenMP regions can hang in its next
    one (torch's own matmul does here), which this pass no longer uses."""
    out = _child(_FORK_CHILD)
    assert out.returncode == 0 and out.stdout.strip() == "child 0", out.stderr[-2000:]


def test_bad_min_parallel_values_is_a_clear_error():
    out = _child(_SPLIT_CHILD, DLLM_CPU_MIN_PARALLEL_VALUES="many")
    assert out.returncode != 0 and "DLLM_CPU_MIN_PARALLEL_VALUES must be an integer >= 0, got 'many'" in out.stderr
