"""dllm_kernels.models.BlockDiffusion (SDAR: Qwen3 blocks, unshifted; Fast-dLLM v2: Qwen2 blocks,
shifted): block-causal logits against a float64 statement of the equations, cached block steps
against the full block-causal forward, and the exact block cache: a T = 0 decode with
cache="block" equals the no-cache decode (and a plain loop) token for token, batches equal each
sequence alone."""
import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.models import BlockDiffusion
from qwen_reference import QWEN2, QWEN3, logits_f64, plain_loop, write_qwen_checkpoint

V = 300
MASK, EOS = V - 1, V - 2
FAMILIES = {"sdar": ("SDARForCausalLM", QWEN3, dict(head_dim=32, extra={"block_size": 4})),
            "fast_dllm_v2": ("Fast_dLLM_QwenForCausalLM", QWEN2, dict(extra={"bd_size": 8}))}


def load(tmp_path, family, **kw):
    arch, blocks, opts = FAMILIES[family]
    cfg, sd = write_qwen_checkpoint(tmp_path, arch, **blocks, **{**opts, **kw})
    return cfg, sd, BlockDiffusion.from_pretrained(str(tmp_path), dtype=torch.float32)


@pytest.mark.parametrize("family,tied", [("sdar", False), ("sdar", True), ("fast_dllm_v2", False)])
def test_logits_match_float64_block_causal_equations(tmp_path, family, tied):
    cfg, sd, model = load(tmp_path, family, tied=tied)
    bs = model.block_size
    assert (bs, model.shift) == ((4, False) if family == "sdar" else (8, True))
    x = torch.randint(0, V - 2, (2, 19), generator=torch.Generator().manual_seed(1))
    blocks = FAMILIES[family][1]
    ref = logits_f64(cfg, sd, x, block_size=bs, **blocks)
    got = model(x)
    err = (got.double() - ref).abs().max().item()
    assert err < 2e-4 * ref.abs().max().item(), err
    # The check can fail: bidirectional attention, or dropping the q/k norms, moves the logits.
    assert (logits_f64(cfg, sd, x, **blocks) - ref).abs().max().item() > 100 * err
    if blocks["qk_norm"]:
        assert (logits_f64(cfg, sd, x, block_size=bs, qkv_bias=False, qk_norm=False) - ref).abs().max() > 100 * err


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_block_step_equals_full_forward(tmp_path, family):
    """Prefill the finished blocks into the cache, then run one block alone against it: its rows equal
    the full block-causal forward's (ragged batch: sequences at different blocks, one idle). For the
    shifted family the row before the block comes from the cache's carry."""
    _, _, model = load(tmp_path, family)
    bs, shift = model.block_size, int(model.shift)
    x = torch.randint(0, V - 2, (3, 5 * bs), generator=torch.Generator().manual_seed(3))
    full = model(x)
    starts = [2 * bs, bs, 3 * bs]
    cache = model.new_cache(3, 5 * bs)
    # The step that opens block s: the earlier blocks and the block itself, rows from s - shift.
    model.forward_span(x, q_start=[0, 0, 0], q_len=[s + bs for s in starts], kv_len=[5 * bs] * 3,
                       row_start=[s - shift for s in starts], n_rows=bs, cache=cache)
    x2 = x.clone()
    for b, s in enumerate(starts):
        x2[b, s:s + bs:2] = (x[b, s:s + bs:2] + 1) % (V - 2)  # the block changes as it decodes
    full2 = model(x2)
    rows = model.forward_span(x2, q_start=starts, q_len=[bs, 0, bs], kv_len=[5 * bs] * 3,
                              row_start=[s - shift for s in starts], n_rows=bs, cache=cache)
    for b in (0, 2):
        s = starts[b]
        torch.testing.assert_close(rows[b], full2[b, s - shift:s + bs - shift], atol=2e-5, rtol=1e-4)
        if shift:  # the carried row never sees the block, so it did not change
            torch.testing.assert_close(full2[b, s - 1], full[b, s - 1], atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="block boundary"):
        model.forward_span(x, q_start=[1, 0, 0], q_len=[bs, 0, 0], kv_len=[5 * bs] * 3, row_start=[0] * 3,
                           n_rows=1, cache=cache)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request, tmp_path_factory):
    torch.set_num_threads(1)
    return load(tmp_path_factory.mktemp(request.param), request.param)[2]


def prompts(lengths, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V - 10, (n,), generator=g) for n in lengths]


# suppress_ids: a random model may predict the mask token itself, which never commits (a stall)
POLICIES = {"threshold": dict(rule="threshold", threshold=0.3), "topk": dict(rule="topk", steps=2),
            "localleap": dict(rule="localleap", anchor_threshold=0.5, relaxed_threshold=0.2)}


def policy_for(model, name, **kw):
    return dk.Policy(shift=model.shift, suppress_ids=(MASK,), block_length=model.block_size, **POLICIES[name], **kw)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_block_cache_decode_equals_no_cache_decode(model, name):
    """T = 0: the block cache is exact, so it decodes the no-cache block-causal decode's tokens, and
    both equal a plain loop over full logits; prompts ending inside a block, on a boundary, and
    shorter than a block."""
    bs = model.block_size
    ps = prompts((bs + 1, 2 * bs, 3))
    policy = policy_for(model, name)
    none = dk.generate(model, ps, gen_length=3 * bs, policy=policy, cache="none")
    block = dk.generate(model, ps, gen_length=3 * bs, policy=policy, cache="block")
    assert none.finished and block.finished
    assert torch.equal(block.tokens, none.tokens), name
    assert block.nfe == none.nfe
    loop = plain_loop(model, ps, 3 * bs, policy, mask_id=MASK, eos_id=EOS, gen_start=[len(p) // bs * bs for p in ps])
    assert torch.equal(none.tokens, loop)


def test_block_cache_query_rows(model):
    """The cache does its job: after the prompt, a step runs at most two blocks of query rows."""
    bs = model.block_size
    seen = []
    orig = model.forward_span

    def spy(*a, **kw):
        seen.append(max(kw["q_len"]))
        return orig(*a, **kw)

    model.forward_span = spy
    try:
        ps = prompts((bs + 1,))
        out = dk.generate(model, ps, gen_length=4 * bs, policy=policy_for(model, "threshold"), cache="block")
    finally:
        del model.forward_span
    assert out.finished and seen[0] == 2 * bs and max(seen[1:]) <= 2 * bs


@pytest.mark.parametrize("cache", ["none", "block"])
def test_batch_equals_each_alone(model, cache):
    bs = model.block_size
    ps = prompts((3, 2 * bs + 1, bs, 5))
    policy = policy_for(model, "threshold", temperature=1.0)
    batch = dk.generate(model, ps, gen_length=2 * bs + 3, policy=policy, cache=cache, seed=9)
    for b, p in enumerate(ps):
        alone = dk.generate(model, [p], gen_length=2 * bs + 3, policy=policy, cache=cache, seed=9)
        assert torch.equal(batch.tokens[b], alone.tokens[0]), (cache, b)
        assert batch.nfe[b] == alone.nfe[0]


def test_bad_arguments(model):
    bs = model.block_size
    ps = prompts((3,))
    pol = policy_for(model, "threshold")
    with pytest.raises(ValueError, match="block size"):
        dk.generate(model, ps, gen_length=8, policy=pol, block_length=bs + 1)
    for cache in ("prefix", "dual"):
        with pytest.raises(ValueError, match="'none' or 'block'"):
            dk.generate(model, ps, gen_length=8, policy=pol, cache=cache)
    with pytest.raises(ValueError, match="adaptive_block"):
        dk.generate(model, ps, gen_length=8, policy=policy_for(model, "threshold", adaptive_block=True,
                                                               delimiter_ids=(5,)))
    with pytest.raises(ValueError, match="shift"):
        dk.generate(model, ps, gen_length=8, policy=dk.Policy(shift=not model.shift))


@pytest.mark.cuda
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cuda_block_cache_equals_no_cache(tmp_path, family):
    """On the GPU (Triton block_attention, block-causal mode): the block cache stays exact."""
    _, _, cpu = load(tmp_path, family)
    model = BlockDiffusion.from_pretrained(str(tmp_path), dtype=torch.float32, device="cuda")
    bs = model.block_size
    ps = prompts((bs + 1, 3))
    policy = policy_for(model, "threshold")
    none = dk.generate(model, ps, gen_length=3 * bs, policy=policy, cache="none")
    block = dk.generate(model, ps, gen_length=3 * bs, policy=policy, cache="block")
    assert none.finished and torch.equal(block.tokens, none.tokens)
    x = torch.randint(0, V - 2, (2, 3 * bs), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model(x.cuda()).cpu(), cpu(x), atol=1e-4, rtol=1e-3)
