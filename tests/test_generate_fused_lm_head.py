"""generate(fused_lm_head=True): the decoder unmasks the final hidden states with the LM head fused
into the statistics pass (fused_unmask_from_hidden) and decodes the tokens of the logits path."""
import dataclasses

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.models import LLaDA, LLaDAConfig, QwenConfig, random_state_dict
from dllm_kernels.models.dream import Dream

MASK, EOS, V = 299, 298, 300
CFG = LLaDAConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=96, vocab_size=V,
                  mask_token_id=MASK, eos_token_id=EOS, rope_theta=10000.0)
THR = dk.Policy(rule="threshold", threshold=0.3, block_length=8)


@pytest.fixture(scope="module")
def llada():
    torch.set_num_threads(1)
    return LLaDA(CFG, random_state_dict(CFG, seed=0, std=0.3))


@pytest.fixture(scope="module")
def dream():
    torch.set_num_threads(1)
    c = QwenConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=96, vocab_size=V,
                   rope_theta=10000.0, rms_norm_eps=1e-6, mask_token_id=MASK, eos_token_id=EOS,
                   architecture="DreamModel")
    return Dream.random(c, seed=0, std=0.3)


def prompts(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V - 10, (n,), generator=g) for n in (3, 9, 6)]


def both(model, policy, cache, seed):
    kw = dict(gen_length=16, policy=policy, cache=cache, seed=seed)
    fused = dk.generate(model, prompts(seed), fused_lm_head=True, **kw)
    plain = dk.generate(model, prompts(seed), fused_lm_head=False, **kw)
    assert fused.finished and plain.finished
    return fused, plain


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_llada_fused_head_decodes_the_logits_tokens(llada, cache):
    seed = int(torch.randint(0, 1000, ()))
    fused, plain = both(llada, THR, cache, seed)
    assert torch.equal(fused.sequences, plain.sequences), (cache, seed)
    assert fused.nfe == plain.nfe


@pytest.mark.parametrize("name,policy", [
    ("sampled-topk", dk.Policy(rule="topk", steps=4, block_length=8, temperature=1.0)),
    ("eotp-margin", dk.Policy(rule="threshold", threshold=0.3, block_length=8, eotp=True, conf="margin")),
])
def test_llada_fused_head_sampling_and_eotp(llada, name, policy):
    """Seeded Gumbel sampling: the fused pass draws the same Philox noise (keyed by state, position
    and global id), so the sampled tokens are the same."""
    fused, plain = both(llada, policy, "dual", int(torch.randint(0, 1000, ())))
    assert torch.equal(fused.sequences, plain.sequences), name


def test_dream_shifted_fused_head(dream):
    policy = dataclasses.replace(THR, shift=True)
    fused, plain = both(dream, policy, "prefix", int(torch.randint(0, 1000, ())))
    assert torch.equal(fused.sequences, plain.sequences)


def test_fused_head_is_used(llada, monkeypatch):
    """The comparison above can fail: with fused_lm_head=True the step gets hidden states, not logits."""
    widths = []
    orig = llada.forward_span

    def spy(*a, hidden=False, **kw):
        out = orig(*a, hidden=hidden, **kw)
        widths.append(out.shape[-1])
        return out

    monkeypatch.setattr(llada, "forward_span", spy)
    dk.generate(llada, prompts(1), gen_length=8, policy=THR, fused_lm_head=True)
    assert set(widths) == {CFG.d_model}
    widths.clear()
    dk.generate(llada, prompts(1), gen_length=8, policy=THR)  # CPU default: the logits
    assert set(widths) == {V}


def test_fused_head_needs_hidden_support(llada):
    def plain_model(x):
        return llada.forward(x)

    with pytest.raises(ValueError, match="fused_lm_head=True needs a model"):
        dk.generate(plain_model, prompts(1), gen_length=8, policy=THR, mask_id=MASK, eos_id=EOS, fused_lm_head=True)
    with pytest.raises(TypeError, match="fused_lm_head must be"):
        dk.generate(llada, prompts(1), gen_length=8, policy=THR, fused_lm_head="yes")
