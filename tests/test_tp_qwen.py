"""Tensor-parallel Dream, SDAR and Fast-dLLM v2 over torch.distributed (gloo, CPU processes spawned
here) on random checkpoints written to disk: each rank reads only its slices (biases with their
heads, tied embeddings, SDAR's q/k norms and head_dim != d / heads); its logits shard equals that
shard of one process's logits to float tolerance (even and uneven vocabulary shards); the T = 0
decode is token-identical in every cache mode; KV heads that do not divide by the world size are an error naming n_kv_heads.
Spawning ranks costs seconds, so one spawned run holds all the checks."""
import pytest
import torch
import torch.distributed as dist

import dllm_kernels as dk
from dllm_kernels.models import BlockDiffusion, Dream
from dllm_kernels.vocab_parallel import vocab_shard
from distributed_cases import run_ranks
from qwen_reference import QWEN2, QWEN3, write_qwen_checkpoint

# name -> (class, architecture, block kind, checkpoint options). V = 300 splits evenly over 2
# ranks, V = 301 unevenly (151 | 150 ids).
CASES = {
    "dream": (Dream, "DreamModel", QWEN2, dict(kv_heads=2, vocab=300)),
    "sdar": (BlockDiffusion, "SDARForCausalLM", QWEN3, dict(kv_heads=2, head_dim=32, tied=True, vocab=301,
                                                             extra={"block_size": 4})),
    "fast_dllm_v2": (BlockDiffusion, "Fast_dLLM_QwenForCausalLM", QWEN2, dict(kv_heads=4, vocab=301,
                                                                               extra={"bd_size": 8})),
}


def _tokens(c, B, L, seed):
    x = torch.randint(0, c.vocab_size - 2, (B, L), generator=torch.Generator().manual_seed(seed))
    x[:, L // 2:] = c.mask_token_id
    return x


def _check_logits(one, tp, world, rank, seed):
    c = one.config
    lo, n = vocab_shard(c.vocab_size, world, rank)
    assert (tp.vocab_start, tp.vocab_size, tp.full_vocab_size) == (lo, n, c.vocab_size)
    assert (tp.local_heads, tp.local_kv_heads) == (c.n_heads // world, c.n_kv_heads // world)
    assert (tp.lm_head is tp.wte) == c.tie_word_embeddings
    assert sum(t.numel() for t in tp.w_qkv) * world == sum(t.numel() for t in one.w_qkv)  # its slices only
    if tp.b_qkv is not None:
        torch.testing.assert_close(tp.b_qkv[0][:tp.local_heads * c.head_dim],
                                   one.b_qkv[0][rank * tp.local_heads * c.head_dim:][:tp.local_heads * c.head_dim])
    x = _tokens(c, 2, 19, seed)
    want = one(x)[..., lo:lo + n]
    got = tp(x)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5 * want.abs().max().item())
    return x


def _decode(one, tp, name, seed):
    c = one.config
    block = one.block_size or 8
    prompts = [_tokens(c, 1, 9, seed + 1)[0, :5].tolist(), _tokens(c, 1, 9, seed + 2)[0, :3].tolist()]
    thr = dk.Policy(rule="threshold", threshold=0.3, block_length=block, shift=one.shift,
                    suppress_ids=(c.mask_token_id,))
    topk = dk.Policy(rule="topk", block_length=block, shift=one.shift, suppress_ids=(c.mask_token_id,))
    # (cache, cuda_graph, policy): every cache mode, both rules, the dense step (graph) of the dual cache
    runs = [("none", False, thr), ("prefix", False, topk), ("dual", False, thr), ("dual", True, topk)] \
        if name == "dream" else [("none", False, thr), ("block", False, topk), ("block", False, thr)]
    for cache, graph, policy in runs:
        kw = dict(gen_length=16, policy=policy, cache=cache, cuda_graph=graph)
        a, b = dk.generate(one, prompts, **kw), dk.generate(tp, prompts, **kw)
        assert torch.equal(a.tokens, b.tokens), (name, cache, policy.rule, graph)
        assert a.tokens_per_step == b.tokens_per_step


def _body(rank, world, paths, seed, bad_kv):
    for name, path in paths.items():
        cls = CASES[name][0]
        one = cls.from_pretrained(path, dtype=torch.float32)
        tp = cls.from_pretrained(path, dtype=torch.float32, tp_group=dist.group.WORLD)
        _check_logits(one, tp, world, rank, seed)
        _decode(one, tp, name, seed)
    with pytest.raises(ValueError, match="n_kv_heads 1 is not divisible by the tensor-parallel world size 2"):
            Dream.from_pretrained(bad_kv, tp_group=dist.group.WORLD)


def test_tp_qwen_two_ranks(tmp_path):
    """Logits, decodes in every cache mode, the KV-head error: Dream, SDAR, Fast-dLLM v2."""
    seed = int(torch.randint(0, 2**30, ()))
    paths = {}
    for name, (_, arch, blocks, opts) in CASES.items():
        paths[name] = tmp_path / name
        paths[name].mkdir()
        write_qwen_checkpoint(paths[name], arch, **blocks, **opts, d=64, heads=4, layers=2, mlp=80, seed=seed)
    bad = tmp_path / "bad_kv"
    bad.mkdir()
    write_qwen_checkpoint(bad, "DreamModel", **QWEN2, kv_heads=1, d=32, layers=1, mlp=32, vocab=64)
    run_ranks(_body, 2, {k: str(v) for k, v in paths.items()}, seed, str(bad), tmp_path=tmp_path)


def test_load_model_picks_the_class(tmp_path):
    """examples/tp_generate.py's dispatch on config.json's architectures (LLaDA when absent)."""
    import json
    import os

    from dllm_kernels.models import LLaDA, load_model, model_class

    for name, (cls, arch, blocks, opts) in CASES.items():
        path = tmp_path / name
        path.mkdir()
        write_qwen_checkpoint(path, arch, **blocks, **opts, d=32, layers=1, mlp=32)
        assert model_class(str(path)) is cls
    assert type(load_model(str(tmp_path / "sdar"), dtype=torch.float32)) is BlockDiffusion
    assert model_class(os.path.join(os.path.dirname(__file__), "..", "models", "shakespeare")) is LLaDA
    cfg = json.loads((tmp_path / "dream" / "config.json").read_text())
    for arch in (None, ["Qwen2ForCausalLM"]):
        (tmp_path / "dream" / "config.json").write_text(json.dumps({**cfg, "architectures": arch}))
        if arch is None:
            assert model_class(str(tmp_path / "dream")) is LLaDA
        else:
            with pytest.raises(ValueError, match="architectures \\['Qwen2ForCausalLM'\\]: expected one of"):
                model_class(str(tmp_path / "dream"))
