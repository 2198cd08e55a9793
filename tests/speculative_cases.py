"""Inputs and checks shared by the speculative_verify tests of every backend."""
from __future__ import annotations

import torch

from dllm_kernels.reference.speculative_verify import speculative_verify_reference
from fused_unmask_cases import peaked_logits

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MARGIN = 1e-3  # decisions closer than this to their threshold may differ between float32 and float64


def make_case(B, K, V, dtype, gen, *, draft_is_logits=False, lens=None):
    """Peaked target logits [B, K+1, V]; a draft distribution per row (peaked logits, or their
    softmax); draft tokens drawn from it, or the target's argmax for a third of them (so greedy
    accepts runs); random draft lengths in [0, K] unless given."""
    target = peaked_logits(B, K + 1, V, dtype, gen)
    dl = peaked_logits(B, max(K, 1), V, torch.float32, gen)[:, :K]
    q = torch.softmax(dl, -1)
    tokens = torch.multinomial(q.reshape(-1, V), 1, generator=gen).reshape(B, K) if K else \
        torch.zeros(B, 0, dtype=torch.int64)
    use_argmax = torch.rand(B, K, generator=gen) < 1 / 3
    tokens = torch.where(use_argmax, target[:, :K].float().argmax(-1), tokens)
    if lens is None:
        lens = torch.randint(0, K + 1, (B,), generator=gen)
    draft = (dl if draft_is_logits else q).to(dtype)
    seed = torch.randint(0, 2**62, (B,), generator=gen)
    offset = torch.randint(0, 2**40, (B,), generator=gen)
    return (target, tokens, draft, torch.as_tensor(lens, dtype=torch.int64), seed, offset)


def greedy_loop(target, tokens, lens):
    """The obvious greedy verification: accept while the draft token is the target's argmax."""
    B, K1, _ = target.shape
    acc = torch.zeros(B, dtype=torch.int64)
    out = torch.full((B, K1), -1, dtype=torch.int64)
    for b in range(B):
        k = 0
        while True:
            best = int(target[b, k].float().argmax())
            out[b, k] = best
            if k == int(lens[b]) or int(tokens[b, k]) != best:
                break
            k += 1
        acc[b] = k
    return acc, out


def assert_matches_reference(op, case, temperature, draft_is_logits=False, min_compared=0.8):
    """op(case) equals the float64 reference on every sequence whose decisions are clear of rounding."""
    acc, out = op(*case, temperature, draft_is_logits)
    racc, rout, margin = speculative_verify_reference(*case, temperature, draft_is_logits)
    clear = margin > MARGIN
    assert clear.float().mean() >= min_compared, f"only {int(clear.sum())}/{clear.numel()} sequences clear"
    bad = (~(acc == racc) | ~(out == rout).all(1)) & clear
    assert not bad.any(), (f"sequences {bad.nonzero().flatten().tolist()[:5]}: op {acc[bad][:3]} {out[bad][:3]}, "
                           f"reference {racc[bad][:3]} {rout[bad][:3]}")
    return int(clear.sum())


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit (cells with probability 0 must be empty)."""
    n = counts.sum().double()
    pos = probs > 0
    assert counts[~pos].sum() == 0, f"draws where the target has probability 0: {counts[~pos]}"
    expected = n * probs[pos].double()
    stat = ((counts[pos].double() - expected) ** 2 / expected).sum()
    df = int(pos.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


# (name, mutate(case_list, kwargs), message fragment) for a case of B=3, K=4, V=11
BAD_INPUTS = [
    ("draft length > K", lambda c, kw: c.__setitem__(3, torch.tensor([1, 5, 0])), "draft_lens[1] = 5 is outside"),
    ("negative draft length", lambda c, kw: c.__setitem__(3, torch.tensor([-1, 0, 0])), "draft_lens[0] = -1"),
    ("token out of range", lambda c, kw: (c.__setitem__(3, torch.tensor([4, 4, 4])), c[1].__setitem__((2, 3), 11)),
     "draft_tokens[2, 3] = 11 is outside [0, V = 11)"),
    ("negative token", lambda c, kw: (c.__setitem__(3, torch.tensor([4, 4, 4])), c[1].__setitem__((0, 0), -2)),
     "draft_tokens[0, 0] = -2"),
    ("logits 2-D", lambda c, kw: c.__setitem__(0, c[0][:, 0]), "target_logits must be 3-D"),
    ("logits int", lambda c, kw: c.__setitem__(0, c[0].long()), "target_logits must be float32"),
    ("logits strided vocab", lambda c, kw: c.__setitem__(0, c[0].transpose(1, 2).contiguous().transpose(1, 2)),
     "target_logits must be contiguous along the vocab"),
    ("tokens shape", lambda c, kw: c.__setitem__(1, c[1][:, :3]), "draft_tokens must have shape"),
    ("tokens dtype", lambda c, kw: c.__setitem__(1, c[1].int()), "draft_tokens must be int64"),
    ("probs shape", lambda c, kw: c.__setitem__(2, c[2][:, :, :10]), "draft_probs must have shape"),
    ("probs dtype", lambda c, kw: c.__setitem__(2, c[2].double()), "draft_probs must be float32"),
    ("lens shape", lambda c, kw: c.__setitem__(3, c[3][:2]), "draft_lens must have shape"),
    ("lens dtype", lambda c, kw: c.__setitem__(3, c[3].int()), "draft_lens must be int64"),
    ("seed shape", lambda c, kw: c.__setitem__(4, c[4][:1]), "seed must have shape"),
    ("offset dtype", lambda c, kw: c.__setitem__(5, c[5].float()), "offset must be int64"),
    ("negative temperature", lambda c, kw: kw.__setitem__("temperature", -0.5), "temperature must be finite"),
    ("nan temperature", lambda c, kw: kw.__setitem__("temperature", float("nan")), "temperature must be finite"),
    ("no rows", lambda c, kw: (c.__setitem__(0, c[0][:, :0]), c.__setitem__(1, c[1][:, :0]),
                               c.__setitem__(2, c[2][:, :0])), "K+1 >= 1 rows"),
    ("empty batch", lambda c, kw: [c.__setitem__(i, c[i][:0]) for i in range(6)], "empty batch"),
]
