"""dllm_kernels.speculative: autoregressive, vanilla speculative and PEARL decoding agree token for
token at temperature 0 (random float64 models, ragged prompts, per-sequence draft lengths), sample
reproducibly at temperature > 0, and run on the committed Shakespeare draft/target pair."""
import os

import pytest
import torch

from dllm_kernels import speculative as S
from dllm_kernels.models.causal_lm import CausalLM, CausalLMConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models", "shakespeare_causal")
V = 23


def random_model(layers, d, seed, peaked=4.0):
    torch.manual_seed(seed)
    m = CausalLM(CausalLMConfig(vocab_size=V, d_model=d, n_layers=layers, n_heads=2, mlp_hidden=2 * d, max_len=96))
    with torch.no_grad():
        m.head.weight.mul_(peaked / 0.02 / d ** 0.5)  # logits of a usable spread
    return m.double().eval()


@pytest.fixture(scope="module")
def pair():
    return random_model(2, 32, 0), random_model(1, 16, 1)


PROMPTS = [[1, 2, 3, 4, 5], [7], [3, 3, 9, 11, 2, 8, 8, 1, 0]]


def test_greedy_all_loops_agree(pair):
    target, draft = pair
    ar = S.autoregressive(target, PROMPTS, 14)
    assert [len(t) for t in ar.tokens] == [14] * 3
    for out in (S.speculative(target, draft, PROMPTS, 14, draft_len=3),
                S.speculative(target, draft, PROMPTS, 14, draft_len=[1, 4, 2]),
                S.pearl(target, draft, PROMPTS, 14, draft_len=3),
                S.pearl(target, draft, PROMPTS, 14, draft_len=2, parallel=False)):
        assert out.tokens == ar.tokens
        assert out.stats.generated == 42


def test_draft_equal_to_target_accepts_everything(pair):
    target, _ = pair
    out = S.speculative(target, target, PROMPTS, 13, draft_len=4)
    assert out.stats.accepted_per_round > 3.0  # only the last, truncated rounds accept less
    p = S.pearl(target, target, PROMPTS, 13, draft_len=4)
    assert p.tokens == out.tokens and p.stats.extra["post_verify_rounds"] > p.stats.extra["pre_verify_rounds"]


def test_sampling_is_reproducible_and_differs_by_seed(pair):
    target, draft = pair
    a = S.speculative(target, draft, PROMPTS, 10, draft_len=3, temperature=0.9, seed=5)
    b = S.speculative(target, draft, PROMPTS, 10, draft_len=3, temperature=0.9, seed=5)
    c = S.speculative(target, draft, PROMPTS, 10, draft_len=3, temperature=0.9, seed=6)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    p1 = S.pearl(target, draft, PROMPTS, 10, draft_len=3, temperature=0.9, seed=5)
    p2 = S.pearl(target, draft, PROMPTS, 10, draft_len=3, temperature=0.9, seed=5, parallel=False)
    assert p1.tokens == p2.tokens
    assert all(0 <= t < V for row in a.tokens + p1.tokens for t in row)


def test_first_token_follows_the_target():
    """The first sampled token of many one-token prompts (each its own seed) follows the target's
    next-token distribution, for vanilla speculative decoding and PEARL alike."""
    target, draft = random_model(1, 16, 3, peaked=1.5), random_model(1, 16, 4, peaked=1.5)
    N, T = 3000, 1.0
    prompts = [[5]] * N
    seeds = torch.arange(N) * 31 + 7
    with torch.no_grad():
        p = torch.softmax(target.step(torch.tensor([[5]]), torch.tensor([[0]]), target.new_cache(1, 4))[0, 0] / T, -1)
    from speculative_cases import chi_square_pvalue
    for fn in (S.speculative, S.pearl):
        out = fn(target, draft, prompts, 1, draft_len=2, temperature=T, seed=seeds)
        counts = torch.bincount(torch.tensor([r[0] for r in out.tokens]), minlength=V)
        assert chi_square_pvalue(counts, p) > 1e-4


def test_bad_arguments(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="at least one token"):
        S.speculative(target, draft, [[1], []], 4)
    with pytest.raises(ValueError, match="draft_len"):
        S.speculative(target, draft, PROMPTS, 4, draft_len=[1, 2])
    with pytest.raises(ValueError, match="draft_len"):
        S.pearl(target, draft, PROMPTS, 4, draft_len=0)


@pytest.mark.skipif(not os.path.exists(os.path.join(MODELS, "target", "model.safetensors")), reason="no models")
def test_committed_models_greedy():
    import json
    target, draft = CausalLM.load(os.path.join(MODELS, "target")), CausalLM.load(os.path.join(MODELS, "draft"))
    with open(os.path.join(MODELS, "tokenizer.json")) as f:
        chars = json.load(f)["chars"]
    prompt = [[chars.index(c) for c in "ROMEO:\nWhat light "], [chars.index(c) for c in "KING"]]
    ar = S.autoregressive(target, prompt, 24)
    sp = S.speculative(target, draft, prompt, 24, draft_len=4)
    pe = S.pearl(target, draft, prompt, 24, draft_len=4)
    assert sp.tokens == ar.tokens == pe.tokens
    assert sp.stats.accepted_per_round > 1.0, "the trained draft should agree with the target often"
