"""torch.ops.dllm.speculative_verify (C++ CPU op) against the obvious greedy loop and the float64
reference, the distribution it samples from (chi-square over a million draws), its handling of
NaN/Inf, batch invariance, bad inputs, and opcheck."""
import math

import pytest
import torch

import dllm_kernels as dk
from speculative_cases import (BAD_INPUTS, DTYPES, assert_matches_reference, chi_square_pvalue, greedy_loop,
                               make_case)

OP = torch.ops.dllm.speculative_verify


def cpu_op(*args):
    return OP(*args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,V", [(1, 2), (1, 17), (4, 37), (7, 129)])
def test_greedy_equals_loop(dtype, K, V):
    g = torch.Generator().manual_seed(K * 1000 + V)
    case = make_case(24, K, V, dtype, g)
    acc, out = OP(*case, 0.0, False)
    racc, rout = greedy_loop(case[0], case[1], case[3])
    assert torch.equal(acc, racc) and torch.equal(out, rout)
    assert (acc > 0).any(), "the case should accept some draft tokens"


def test_greedy_draft_length_zero_is_argmax():
    g = torch.Generator().manual_seed(1)
    case = make_case(6, 3, 31, torch.float32, g, lens=[0] * 6)
    acc, out = OP(*case, 0.0, False)
    assert (acc == 0).all() and torch.equal(out[:, 0], case[0][:, 0].argmax(-1)) and (out[:, 1:] == -1).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("draft_is_logits", [False, True])
@pytest.mark.parametrize("K,V,T", [(1, 3, 1.0), (3, 37, 0.7), (6, 257, 1.3)])
def test_sampling_matches_reference(dtype, draft_is_logits, K, V, T):
    g = torch.Generator().manual_seed(K * 7 + V)
    case = make_case(40, K, V, dtype, g, draft_is_logits=draft_is_logits)
    assert_matches_reference(cpu_op, case, T, draft_is_logits)


def test_batch_slot_does_not_matter():
    g = torch.Generator().manual_seed(2)
    case = make_case(16, 4, 23, torch.float32, g)
    perm = torch.randperm(16, generator=g)
    acc, out = OP(*case, 0.9, False)
    pacc, pout = OP(*(t[perm] for t in case), 0.9, False)
    assert torch.equal(pacc, acc[perm]) and torch.equal(pout, out[perm])
    # and a different offset draws differently
    case2 = list(case)
    case2[5] = case[5] + 1
    assert not torch.equal(OP(*case2, 0.9, False)[1], out)


def test_threads_do_not_matter():
    g = torch.Generator().manual_seed(3)
    case = make_case(64, 5, 101, torch.float16, g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = OP(*case, 1.0, False)
        torch.set_num_threads(2)
        two = OP(*case, 1.0, False)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


# ---------------------------------------------------------------------------------------------
# The sampled distribution: exact rejection sampling leaves the target distribution unchanged.

PQ_PAIRS = {
    "close": ([0.1, 0.2, 0.3, 0.25, 0.15], [0.15, 0.2, 0.25, 0.3, 0.1]),
    "q zero where p is not": ([0.3, 0.3, 0.2, 0.1, 0.1], [0.5, 0.5, 0.0, 0.0, 0.0]),
    "p zero where q is not": ([0.0, 0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]),
    "far apart": ([0.9, 0.05, 0.03, 0.01, 0.01], [0.01, 0.01, 0.03, 0.05, 0.9]),
}


@pytest.mark.parametrize("name", list(PQ_PAIRS))
def test_sampling_preserves_target_distribution(name):
    """A million sequences in one call, each with its own seed; two draft tokens drawn from q (rows
    0 and 1 use the pair, the second swapped). The first emitted token must follow p0, and the second,
    among sequences that accepted the first, must follow p1."""
    p, q = (torch.tensor(v, dtype=torch.float64) for v in PQ_PAIRS[name])
    N, V, T = 1_000_000, 5, 1.0
    p_rows = torch.stack([p, q.flip(0) if name == "p zero where q is not" else p.flip(0), p])  # [3, V]
    q_rows = torch.stack([q, q.flip(0)])
    logits = torch.where(p_rows > 0, p_rows.clamp_min(1e-300).log(), torch.full_like(p_rows, -math.inf))
    target = logits.float()[None].expand(N, 3, V).contiguous()
    g = torch.Generator().manual_seed(4)
    tokens = torch.stack([torch.multinomial(q_rows[k].float(), N, replacement=True, generator=g) for k in range(2)], 1)
    draft = q_rows.float()[None].expand(N, 2, V)
    seed = torch.arange(N, dtype=torch.int64) * 7919 + 11
    acc, out = OP(target, tokens, draft, torch.full((N,), 2), seed, torch.zeros(N, dtype=torch.int64), T, False)
    p0 = torch.softmax(logits[0], 0)
    assert chi_square_pvalue(torch.bincount(out[:, 0], minlength=V), p0) > 1e-4
    second = out[acc >= 1, 1]
    assert second.numel() > 10_000
    assert chi_square_pvalue(torch.bincount(second, minlength=V), torch.softmax(logits[1], 0)) > 1e-4
    # the acceptance rate of the first token is sum(min(p, q))
    rate = (acc >= 1).double().mean()
    assert abs(rate - torch.minimum(p0, q).sum()) < 5e-3


def test_sampling_from_draft_logits_preserves_distribution():
    N, V, T = 200_000, 6, 0.8
    g = torch.Generator().manual_seed(5)
    tl = torch.randn(V, generator=g) * 2
    dl = torch.randn(V, generator=g) * 2
    q = torch.softmax(dl / T, 0)
    tokens = torch.multinomial(q, N, replacement=True, generator=g)[:, None]
    acc, out = OP(tl[None, None].expand(N, 2, V).contiguous(), tokens, dl[None, None].expand(N, 1, V), torch.ones(N, dtype=torch.int64),
                  torch.arange(N), torch.full((N,), 3), T, True)
    assert chi_square_pvalue(torch.bincount(out[:, 0], minlength=V), torch.softmax(tl.double() / T, 0)) > 1e-4


# ---------------------------------------------------------------------------------------------
# Non-finite values (docs/speculative_verify.md, "Non-finite values")

@pytest.mark.parametrize("T", [0.0, 1.0])
@pytest.mark.parametrize("bad", [float("nan"), math.inf, "all -inf"])
def test_invalid_target_row_stops_with_minus_one(T, bad):
    g = torch.Generator().manual_seed(6)
    target, tokens, draft, lens, seed, offset = make_case(4, 3, 9, torch.float32, g, lens=[3, 3, 3, 3])
    tokens[:] = target[:, :3].argmax(-1)  # accepted up to the bad row (greedy; likely when sampling)
    draft[:] = torch.nn.functional.one_hot(tokens, 9).float()  # q = 1 on the token: accepted iff p(t) >= u
    if bad == "all -inf":
        target[:, 1] = -math.inf
    else:
        target[:, 1, 4] = bad
    acc, out = OP(target, tokens, draft, lens, seed, offset, T, False)
    racc, rout, _ = dk.reference.speculative_verify.speculative_verify_reference(
        target, tokens, draft, lens, seed, offset, T, False)
    assert torch.equal(acc, racc) and torch.equal(out, rout)
    stopped = acc == 1
    assert stopped.any() and (out[stopped, 1] == -1).all()
    assert (acc <= 1).all()


def test_minus_inf_target_logits_are_probability_zero():
    g = torch.Generator().manual_seed(7)
    target, tokens, draft, lens, seed, offset = make_case(200, 2, 8, torch.float32, g)
    target[:, :, :4] = -math.inf
    acc, out = OP(target, tokens, draft, lens, seed, offset, 1.0, False)
    emitted_last = out.gather(1, acc[:, None])
    assert (emitted_last >= 4).all()


def test_nan_or_negative_draft_probs_count_as_zero():
    g = torch.Generator().manual_seed(8)
    case = list(make_case(30, 3, 13, torch.float32, g))
    dirty = case[2].clone()
    dirty[:, :, ::3] = float("nan")
    dirty[:, :, 1::3] = -1.0
    clean = case[2].clone()
    clean[:, :, ::3] = 0
    clean[:, :, 1::3] = 0
    a = OP(*case[:2], dirty, *case[3:], 1.0, False)
    b = OP(*case[:2], clean, *case[3:], 1.0, False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------
# Bad inputs, the typed wrapper, opcheck

def bad_case():
    g = torch.Generator().manual_seed(9)
    return list(make_case(3, 4, 11, torch.float32, g, lens=[1, 2, 0])), {"temperature": 1.0}


@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_name_the_argument(name, mutate, message):
    case, kw = bad_case()
    mutate(case, kw)
    with pytest.raises(RuntimeError, match="speculative_verify: .*" + message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+")):
        OP(*case, kw["temperature"], False)


def test_wrapper_and_backends_agree():
    g = torch.Generator().manual_seed(10)
    target, tokens, draft, lens, seed, offset = make_case(8, 3, 19, torch.float32, g)
    res = dk.speculative_verify(target, tokens, draft, lens, temperature=0.0)
    assert isinstance(res, dk.VerifyResult)
    ref = dk.speculative_verify(target, tokens, draft, lens, temperature=0.0, backend="reference")
    assert torch.equal(res.accepted, ref.accepted) and torch.equal(res.emitted, ref.emitted)
    a = dk.speculative_verify(target, tokens, draft, lens, temperature=1.0, seed=5, offset=2)
    b = OP(target, tokens, draft, lens, torch.full((8,), 5), torch.full((8,), 2), 1.0, False)
    assert torch.equal(a.emitted, b[1])
    with pytest.raises(ValueError, match="backend"):
        dk.speculative_verify(target, tokens, draft, lens, backend="cuda")


@pytest.mark.parametrize("dtype,T,logits_in", [(torch.float32, 0.0, False), (torch.float16, 1.0, False),
                                               (torch.bfloat16, 0.7, True)])
def test_opcheck(dtype, T, logits_in):
    g = torch.Generator().manual_seed(11)
    case = make_case(3, 2, 13, dtype, g, draft_is_logits=logits_in)
    torch.library.opcheck(OP.default, (*case, T, logits_in))


def test_strided_target_rows():
    """A view of the first K+1 rows of longer logits (as the decoding loops pass) is accepted as is."""
    g = torch.Generator().manual_seed(12)
    target, tokens, draft, lens, seed, offset = make_case(5, 3, 21, torch.float32, g)
    wide = torch.cat([target, torch.randn(5, 2, 21, generator=g)], 1)[:, :4]
    assert not wide.is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(OP(wide, tokens, draft, lens, seed, offset, 1.0, False),
                                                 OP(target, tokens, draft, lens, seed, offset, 1.0, False)))


@pytest.mark.parametrize("which", [1, 2, 3, 4, 5])
def test_device_mismatch_names_the_argument(which):
    """Mixed devices (here one tensor on `meta`) fail naming the tensor, in the op and its fake."""
    case, _ = bad_case()
    case[which] = case[which].to("meta")
    names = ["target_logits", "draft_tokens", "draft_probs", "draft_lens", "seed", "offset"]
    with pytest.raises(RuntimeError, match=f"speculative_verify: {names[which]} is on meta but target_logits is on cpu"):
        OP(*case, 1.0, False)
