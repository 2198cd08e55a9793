"""fused_unmask on the CPU: edge shapes, non-finite logits, a whole decode, opcheck, compile, memory."""
import math

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels import state as S
from test_fused_unmask_cpu import cpu_op
from dllm_kernels.fused_unmask_params import UNMASK_PARAM_COLUMNS
from fused_unmask_cases import assert_same_decisions, make_batch, peaked_logits, run_both, unmask_pack

MASK, EOS = 9, 8  # ids for V = 10


def fresh(B, L, gen_start=0):
    return torch.full((B, L), MASK, dtype=torch.int64), dk.DecodeState.new(B, L, gen_start=gen_start)


def step(logits, x, st, **policy):
    return dk.fused_unmask(logits, x, st, dk.Policy(**policy), mask_id=MASK, eos_id=EOS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_length_one(dtype):
    x, st = fresh(1, 1)
    logits = torch.zeros(1, 1, 10, dtype=dtype)
    logits[0, 0, 3] = 5
    out = step(logits, x, st, steps=1)
    assert x.tolist() == [[3]] and out.transfer.tolist() == [[True]] and st.all_done()


def test_no_masked_position_reads_nothing_and_finishes():
    x = torch.arange(6).reshape(1, 6)
    st = dk.DecodeState.new(1, 6, gen_start=2)
    logits = torch.full((1, 6, 10), float("nan"))  # would poison anything that read it
    out = step(logits, x, st, steps=1)
    assert x.tolist() == [[0, 1, 2, 3, 4, 5]] and not out.transfer.any()
    assert st.all_done() and torch.isnan(st.conf).all()


def test_one_masked_position():
    x = torch.tensor([[1, 2, MASK, 3]])
    st = dk.DecodeState.new(1, 4, gen_start=0)
    logits = torch.randn(1, 4, 10)
    logits[0, 2, 6] = 20
    out = step(logits, x, st, rule="threshold", threshold=0.99)
    assert x.tolist() == [[1, 2, 6, 3]] and out.transfer.tolist() == [[False, False, True, False]]
    assert st.all_done()


@pytest.mark.parametrize("bad", ["nan", "inf", "all_neg_inf"])
def test_non_finite_rows_are_never_committed(bad):
    """The documented rule: a row with NaN or +inf, or only -inf, is invalid: x0 = mask_id, conf = NaN,
    never selected; -inf values elsewhere are ordinary zeros of the distribution."""
    x, st = fresh(1, 4)
    logits = torch.randn(1, 4, 10, generator=torch.Generator().manual_seed(0))
    logits[0, :, 0] = -math.inf  # ordinary
    logits[0, :, MASK] = -math.inf  # (so no valid row predicts the mask token itself)
    if bad == "nan":
        logits[0, 1, 4] = math.nan
    elif bad == "inf":
        logits[0, 1, 4] = math.inf
    else:
        logits[0, 1, :] = -math.inf
    out = step(logits, x, st, rule="threshold", threshold=0.0, block_length=4)
    assert x[0, 1] == MASK and not out.transfer[0, 1] and out.x0[0, 1] == MASK
    assert math.isnan(st.conf[0, 1]) and (x[0, [0, 2, 3]] != MASK).all()
    assert not st.all_done() and st.state[0, S.BLOCK_REMAINING] == 1
    # a later valid row unblocks the position
    later = torch.randn(1, 4, 10)
    later[0, :, MASK] = -math.inf
    step(later, x, st, rule="threshold", threshold=0.0, block_length=4)
    assert st.all_done()


def test_stall_signal_stops_a_loop_whose_row_is_nan_at_every_step():
    """The README loop with its guard: row 0's logits are NaN at every step, row 1 commits one token
    per step. steps_without_progress counts row 0's steps since its block opened and keeps row 1 at 0;
    stalled(patience) ends the loop, which without it would spin forever."""
    L = 6
    x, st = fresh(2, L)
    policy = dk.Policy(rule="topk", block_length=L)  # one token per step
    seen, n = [], 0
    while not st.all_done():
        logits = torch.randn(2, L, 10)
        logits[..., MASK] = -math.inf
        logits[0] = math.nan
        dk.fused_unmask(logits, x, st, policy, mask_id=MASK, eos_id=EOS)
        n += 1
        seen.append(st.steps_without_progress().tolist())
        if st.stalled(patience=5):
            break
        assert n < 50, "the guard did not stop the loop"
    assert n == 6 and seen == [[k, 0] for k in range(5)] + [[5, 0]]  # row 1 done at step 6: 0
    assert (x[0] == MASK).all() and (x[1] != MASK).all() and not st.all_done()
    assert st.clone().steps_without_progress().tolist() == [5, 0]
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        st.stalled(patience=0)


@pytest.mark.parametrize("rule", ["topk", "threshold", "factor", "localleap", "filter"])
@pytest.mark.parametrize("eotp", [False, True])
@pytest.mark.filterwarnings("ignore:Policy. .* is unused by rule")  # one field set for every rule
def test_whole_decode_matches_reference(rule, eotp):
    """Run to completion, feeding both backends the same logits every step."""
    gen = torch.Generator().manual_seed(7)
    B, L, V = 3, 30, 64
    filt = None
    if rule == "filter":
        filt = dk.LearnedFilter(torch.randn(8, 8, generator=gen), torch.randn(8, generator=gen),
                                torch.randn(8, 8, generator=gen), torch.randn(8, generator=gen))
    policy = dk.Policy(rule=rule, steps=4, block_length=8, eotp=eotp, early_stop=not eotp, learned_filter=filt,
                       threshold=0.6)
    batch = make_batch(B, L, V, gen, gen_starts=[0, 5, 11], mid_block=False)
    kw = policy.op_arguments("cpu", V, B)
    kw.update(zip(UNMASK_PARAM_COLUMNS, kw.pop("params")[0].tolist()))  # the flat form run_both takes
    tensors = {k: kw.pop(k) for k in list(kw) if k.endswith("_ids") or k.startswith("filter_w") or k.startswith("filter_b")}
    for n_steps in range(1, 200):
        logits = peaked_logits(B, L, V, torch.float32, gen, spread=9.0)
        logits[:, 20:, batch.eos_id] += 6.0  # eos becomes likely late in the sequence
        got, ref = run_both(cpu_op, logits, batch, dict(kw, **tensors))
        assert_same_decisions(got, ref)
        batch.x, batch.state.conf, batch.state.state = got[0], got[1], got[2]
        if batch.state.all_done():
            break
    assert batch.state.all_done() and n_steps < 200
    for b in range(B):
        end = int(batch.state.end_pos[b])
        assert not (batch.x[b, :end] == batch.mask_id).any()
        assert (batch.x[b, end:] == batch.eos_id).all()


def test_done_sequence_is_untouched():
    x, st = fresh(2, 5)
    st.state[1, S.DONE] = 1
    before = st.state[1].clone()
    out = step(torch.randn(2, 5, 10), x, st, rule="threshold", threshold=0.0)
    assert (x[1] == MASK).all() and torch.equal(st.state[1], before) and not out.transfer[1].any()


def test_corrupt_state_cannot_index_out_of_bounds():
    x, st = fresh(1, 5)
    st.state[0, :8] = torch.tensor([-50, 10**9, 10**9, -4, -1, -1, 3, 10**12])
    step(torch.randn(1, 5, 10), x, st, steps=1)  # clamped into [0, L]: no crash, nothing outside x written
    assert x.shape == (1, 5)


def test_strided_logits_rows_are_read_without_copy():
    gen = torch.Generator().manual_seed(3)
    full = peaked_logits(2, 12, 40, torch.float32, gen)
    window = full[:, 2:10]  # rows 2..9, strided in the batch dimension
    assert not window.is_contiguous()
    batch = make_batch(2, 12, 40, gen, gen_starts=[2, 2], mid_block=False)
    kw = dict(rule=1, block_length=8)
    got, ref = run_both(cpu_op, window, batch, kw, row_start=torch.tensor([2, 2]))
    assert_same_decisions(got, ref)
    got2, _ = run_both(cpu_op, window.contiguous(), batch, kw, row_start=torch.tensor([2, 2]))
    assert torch.equal(got[0], got2[0])


def test_batch_invariance():
    gen = torch.Generator().manual_seed(5)
    B, L, V = 4, 24, 50
    logits = peaked_logits(B, L, V, torch.bfloat16, gen)
    policy = dk.Policy(rule="localleap", temperature=0.8, block_length=8)
    x, st = fresh(B, L)
    x = torch.full((B, L), V - 1)
    st = dk.DecodeState.new(B, L, gen_start=0, seed=[11, 12, 13, 14])
    dk.fused_unmask(logits, x, st, policy, mask_id=V - 1, eos_id=V - 2)
    for b in range(B):
        xb = torch.full((1, L), V - 1)
        sb = dk.DecodeState.new(1, L, gen_start=0, seed=11 + b)
        dk.fused_unmask(logits[b:b + 1], xb, sb, policy, mask_id=V - 1, eos_id=V - 2)
        assert torch.equal(xb[0], x[b]) and torch.equal(sb.state[0], st.state[b])


def test_deterministic_for_a_seed_and_fresh_noise_each_step():
    logits = torch.randn(1, 16, 30)
    policy = dk.Policy(rule="topk", steps=16, temperature=1.0, block_length=16)
    runs = []
    for _ in range(2):
        x = torch.full((1, 16), 29)
        st = dk.DecodeState.new(1, 16, gen_start=0, seed=42)
        x0s = [dk.fused_unmask(logits, x, st, policy, mask_id=29, eos_id=28).x0.clone() for _ in range(3)]
        runs.append(x0s)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert not torch.equal(runs[0][0][0, 5:], runs[0][1][0, 5:])  # OFFSET advanced: new noise


def op_args(B=2, L=8, V=40, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    logits = peaked_logits(B, L, V, dtype, gen)
    x = torch.full((B, L), V - 1)
    st = dk.DecodeState.new(B, L, gen_start=1)
    params = unmask_pack(B, steps=2, block_length=4)
    return (logits, x, st.conf, st.state, V - 1, V - 2, params, None, None, None, torch.tensor([3]), None,
            torch.tensor([5]), None, None, None, None, None, 1, 0, False, False, False, True, True, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(dtype):
    torch.library.opcheck(torch.ops.dllm.fused_unmask.default, op_args(dtype=dtype))


def test_torch_compile_fullgraph():
    policy = dk.Policy(rule="threshold", block_length=4)

    def decode_step(logits, x, state, conf):
        st = dk.DecodeState(state, conf)
        out = dk.fused_unmask(logits, x, st, policy, mask_id=39, eos_id=38)
        return out.transfer.sum(dim=1)

    args = op_args()
    x_ref, st_ref = args[1].clone(), dk.DecodeState(args[3].clone(), args[2].clone())
    dk.fused_unmask(args[0], x_ref, st_ref, policy, mask_id=39, eos_id=38)
    compiled = torch.compile(decode_step, fullgraph=True, backend="aot_eager")
    x, state, conf = args[1].clone(), args[3].clone(), args[2].clone()
    compiled(args[0], x, state, conf)
    assert torch.equal(x, x_ref) and torch.equal(state, st_ref.state)


def test_no_vocab_sized_allocations():
    """The op's temporaries scale with B x L, never with the vocabulary."""
    B, L, V = 2, 32, 50000
    logits = torch.randn(B, L, V)
    x = torch.full((B, L), V - 1)
    st = dk.DecodeState.new(B, L, gen_start=0)
    policy = dk.Policy(rule="threshold", block_length=32, conf="margin")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        dk.fused_unmask(logits, x, st, policy, mask_id=V - 1, eos_id=V - 2)
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events() if e.name.startswith("dllm::"))
    assert 0 < allocated < 64 * B * L, allocated  # a [rows, V] float32 temporary would be 12.8 MB
