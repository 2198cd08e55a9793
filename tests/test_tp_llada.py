"""Tensor-parallel LLaDA over torch.distributed (gloo, 2 and 3 CPU processes spawned here) on the
trained checkpoints: each rank holds only its slices; its logits shard equals that shard of one
process's logits to float tolerance (full forward, cached spans, the dense step); heads that do
not divide by the world size are an error; the T = 0 decode is token-identical in every cache mode."""
import os

import pytest
import torch
import torch.distributed as dist

import dllm_kernels as dk
from dllm_kernels.models import LLaDA
from dllm_kernels.vocab_parallel import vocab_shard
from distributed_cases import run_ranks

MODELS = os.path.join(os.path.dirname(__file__), "..", "models")


def _tokens(model, B, L, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.config.vocab_size, (B, L), generator=gen)
    x[:, L // 2:] = model.config.mask_token_id
    return x


def _logits_body(rank, world, name, dtype, atol):
    path = os.path.join(MODELS, name)
    one = LLaDA.from_pretrained(path, dtype=dtype)
    tp = LLaDA.from_pretrained(path, dtype=dtype, tp_group=dist.group.WORLD)
    c = one.config
    lo, n = vocab_shard(c.embedding_size, world, rank)
    assert (tp.vocab_start, tp.vocab_size, tp.full_vocab_size) == (lo, n, c.embedding_size)
    assert tp.local_heads == c.n_heads // world and tp.local_kv_heads == c.n_kv_heads // world
    assert tp.w_qkv[0].shape[0] * world == one.w_qkv[0].shape[0]
    assert sum(t.numel() for t in tp.w_down) < sum(t.numel() for t in one.w_down) * 0.6  # its slices only
    x = _tokens(one, 2, 21, 3)
    want = one(x)[..., lo:lo + n]
    torch.testing.assert_close(tp(x), want, rtol=0, atol=atol)
    # Cached spans (a dual-cache block step after the refresh that fills the cache) and the dense step.
    caches = {}
    for model in (one, tp):
        caches[model] = model.new_cache(2, 21)
        model.forward_span(x, q_start=[0, 0], q_len=[21, 21], kv_len=[21, 21], row_start=[0, 0], n_rows=21,
                           cache=caches[model])
    span = dict(q_start=[10, 12], q_len=[6, 4], kv_len=[21, 21], row_start=[10, 12], n_rows=6)
    got = tp.forward_span(x, cache=caches[tp], **span)
    ref = one.forward_span(x, cache=caches[one], **span)[..., lo:lo + n]
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=atol)
    torch.testing.assert_close(got[1, :4], ref[1, :4], rtol=0, atol=atol)  # rows past the span: never read
    args = (x, torch.tensor([8, 9]), torch.tensor([5, 5]), torch.tensor([21, 21]), 5)
    torch.testing.assert_close(tp.forward_dense(*args, caches[tp]), one.forward_dense(*args, caches[one])[..., lo:lo + n],
                               rtol=0, atol=atol)
    if world == 3:  # the other checkpoint's 4 heads do not split over 3 ranks
        with pytest.raises(ValueError, match="n_heads 4 is not divisible by the tensor-parallel world size 3"):
            LLaDA.from_pretrained(os.path.join(MODELS, "shakespeare"), tp_group=dist.group.WORLD)


def _decode_body(rank, world, name):
    path = os.path.join(MODELS, name)
    one = LLaDA.from_pretrained(path, dtype=torch.float32)
    tp = LLaDA.from_pretrained(path, dtype=torch.float32, tp_group=dist.group.WORLD)
    prompts = [_tokens(one, 1, 9, 5)[0, :5].tolist(), _tokens(one, 1, 9, 6)[0, :3].tolist()]
    default, threshold = dk.Policy(block_length=8), dk.Policy(rule="threshold", threshold=0.7, block_length=8)
    topk_eotp = dk.Policy(rule="topk", block_length=8, eotp=True)
    # Every cache mode, each policy somewhere; what the ranks share is the forward, and the
    # policy stage runs on merged statistics, so not every pairing is needed.
    cases = [("none", threshold, False), ("prefix", topk_eotp, False), ("dual", default, False),
             ("dual", threshold, True)]
    if world == 2:
        cases += [("none", topk_eotp, False), ("prefix", default, False), ("dual", topk_eotp, False)]
    for cache, policy, graph in cases:
        kw = dict(gen_length=16, policy=policy, cache=cache, cuda_graph=graph)
        a, b = dk.generate(one, prompts, **kw), dk.generate(tp, prompts, **kw)
        assert torch.equal(a.tokens, b.tokens), (cache, policy, graph)
        assert a.tokens_per_step == b.tokens_per_step
        if not graph and cache != "prefix":  # each rank fuses its shard of the LM head
            f = dk.generate(tp, prompts, fused_lm_head=True, **kw)
            assert torch.equal(f.tokens, a.tokens) and f.tokens_per_step == a.tokens_per_step, (cache, policy)


def _tp_body(rank, world, name):
    _logits_body(rank, world, name, torch.float32, 2e-5)
    if world == 2:  # the stored dtype: partial products are summed in float32 and rounded once
        _logits_body(rank, world, name, torch.float16, 2e-2)
    _decode_body(rank, world, name)


@pytest.mark.parametrize("world,name", [(2, "shakespeare"), (3, "addition")])
def test_tp_llada_logits_and_decode_equal_one_process(world, name, tmp_path):
    """One spawn per world size (starting the ranks costs more than most checks)."""
    run_ranks(_tp_body, world, name, tmp_path=tmp_path)
