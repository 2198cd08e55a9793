"""dllm_kernels.generate against the eager reference decoder (dllm_kernels.eager_decoder), token for token.

The model is a tiny random-weight LLaDA (2 layers, GQA, V = 300) whose output rows for the
delimiter (198) and eos (298) are boosted so that AdaBlock, EoTP and early stop all trigger. The
eager decoder's policy engine is the float64 reference op, its model the cat + SDPA one: equal
tokens prove the decoder's plumbing (spans, rows, caches, offsets, noise) is right.
"""
import dataclasses

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.eager_decoder import EagerLLaDA, eager_generate
from dllm_kernels.models import LLaDA, LLaDAConfig, random_state_dict

MASK, EOS, DELIM = 299, 298, 198
GEN = 24
CFG = LLaDAConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=96, vocab_size=300,
                  mask_token_id=MASK, eos_token_id=EOS, rope_theta=10000.0)


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    sd = random_state_dict(CFG, seed=0, std=0.3)
    head = sd["model.transformer.ff_out.weight"]
    head[EOS] *= 2.0
    head[DELIM] *= 2.0
    return LLaDA(CFG, sd), EagerLLaDA(CFG, sd)


def prompts(lengths=(3, 7, 12), seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 290, (n,), generator=g) for n in lengths]


def _filter(width=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dk.LearnedFilter(torch.randn(8, width, generator=g), torch.zeros(8),
                            torch.randn(width, 8, generator=g), torch.full((width,), 1.0))


B8 = dict(block_length=8)
THR = dict(rule="threshold", threshold=0.3, **B8)
POLICIES = {
    "topk": dk.Policy(rule="topk", steps=4, **B8),
    "topk-random-margin": dk.Policy(rule="topk", steps=3, random_remasking=True, conf="margin", **B8),
    "threshold": dk.Policy(**THR),
    "topk-negentropy-suppress": dk.Policy(rule="topk", steps=3, conf="neg_entropy", suppress_ids=(5, 6),
                                          zero_conf_ids=(DELIM,), **B8),
    "factor": dk.Policy(rule="factor", factor=2.0, **B8),
    "localleap": dk.Policy(rule="localleap", anchor_threshold=0.5, relaxed_threshold=0.2, **B8),
    "localleap-graded": dk.Policy(rule="localleap", anchor_threshold=0.5, relaxed_threshold=0.2, graded=True, **B8),
    "filter": dk.Policy(rule="filter", steps=4, learned_filter=_filter(), filter_threshold=0.5, **B8),
    "adablock": dk.Policy(adaptive_block=True, delimiter_ids=(DELIM,), block_delta=0.1, **THR),
    "adablock-topk": dk.Policy(rule="topk", steps=4, adaptive_block=True, delimiter_ids=(DELIM,),
                               block_delta=0.1, **B8),
    "eotp": dk.Policy(eotp=True, **THR),
    "filter-eotp": dk.Policy(rule="filter", steps=4, learned_filter=_filter(), eotp=True, **B8),
    "early-stop": dk.Policy(early_stop=True, **THR),
    "localleap-early-stop-adablock": dk.Policy(rule="localleap", anchor_threshold=0.5, relaxed_threshold=0.2,
                                               early_stop=True, adaptive_block=True, delimiter_ids=(DELIM,),
                                               block_delta=0.1, **B8),
}
CACHED_POLICIES = ["topk", "threshold", "localleap", "filter", "adablock", "eotp", "filter-eotp",
                   "localleap-early-stop-adablock"]


def _run_both(models, policy, cache, temperature, ps=None, seed=3):
    model, eager = models
    ps = ps or prompts()
    policy = dataclasses.replace(policy, temperature=temperature)
    ours = dk.generate(model, ps, gen_length=GEN, policy=policy, cache=cache, seed=seed)
    ref = eager_generate(eager, ps, gen_length=GEN, policy=policy, cache=cache, mask_id=MASK, eos_id=EOS, seed=seed)
    assert ours.finished and ref.finished
    return ours, ref


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_no_cache_equals_eager_reference(models, name, temperature):
    ours, ref = _run_both(models, POLICIES[name], "none", temperature)
    assert torch.equal(ours.sequences, ref.sequences), name
    assert ours.nfe == ref.nfe


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("name", CACHED_POLICIES)
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_equals_eager_cached_decoder(models, cache, name, temperature):
    ours, ref = _run_both(models, POLICIES[name], cache, temperature)
    assert torch.equal(ours.sequences, ref.sequences), (cache, name)
    assert ours.nfe == ref.nfe


def test_caches_change_the_result(models):
    """The comparison can fail: the cached decoders are approximations, their tokens differ from the
    no-cache decoder's on this model (so an implementation that ignored the cache would be caught)."""
    model, _ = models
    outs = {c: dk.generate(model, prompts(), gen_length=GEN, policy=POLICIES["threshold"], cache=c).tokens
            for c in ("none", "prefix", "dual")}
    assert not torch.equal(outs["none"], outs["dual"])
    assert not torch.equal(outs["prefix"], outs["dual"])


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("name,temperature", [("threshold", 1.0), ("adablock", 0.0), ("eotp", 1.0)])
def test_batch_invariance(models, cache, name, temperature):
    model, _ = models
    ps = prompts((3, 12, 7, 5))
    policy = dataclasses.replace(POLICIES[name], temperature=temperature)
    batch = dk.generate(model, ps, gen_length=GEN, policy=policy, cache=cache, seed=11)
    for b, p in enumerate(ps):
        alone = dk.generate(model, [p], gen_length=GEN, policy=policy, cache=cache, seed=11)
        assert torch.equal(batch.tokens[b], alone.tokens[0]), (cache, name, b)
        assert batch.nfe[b] == alone.nfe[0]
        assert batch.tokens_per_step[b] == alone.tokens_per_step[0]


@pytest.mark.parametrize("name,temperature", [("threshold", 0.0), ("adablock", 1.0), ("topk", 1.0)])
def test_dense_graph_step_equals_eager(models, name, temperature):
    """The fixed-shape dual-cache block step (what cuda_graph=True captures) gives the same tokens."""
    model, eager = models
    policy = dataclasses.replace(POLICIES[name], temperature=temperature)
    ours = dk.generate(model, prompts(), gen_length=GEN, policy=policy, cache="dual", cuda_graph=True, seed=3)
    ref = eager_generate(eager, prompts(), gen_length=GEN, policy=policy, cache="dual", mask_id=MASK,
                         eos_id=EOS, seed=3)
    assert ours.graph_steps > 0
    assert torch.equal(ours.sequences, ref.sequences)


def test_logits_only_for_needed_rows(models):
    model, _ = models
    seen = []
    orig = model.forward_span

    def spy(*a, **kw):
        out = orig(*a, **kw)
        seen.append(out.shape[1])
        return out

    model.forward_span = spy
    try:
        for cache in ("none", "prefix", "dual"):
            seen.clear()
            dk.generate(model, prompts(), gen_length=GEN, policy=POLICIES["threshold"], cache=cache)
            assert seen and max(seen) <= 8, (cache, seen)  # the block, never the sequence (up to 36)
            seen.clear()
            dk.generate(model, prompts(), gen_length=GEN, policy=POLICIES["adablock"], cache=cache)
            assert max(seen) <= 8 and min(seen) >= 1  # window = floor(0.25 * 24) = 6 < block 8
        seen.clear()
        policy = dataclasses.replace(POLICIES["adablock"], block_window_fraction=0.5)
        dk.generate(model, prompts(), gen_length=GEN, policy=policy, cache="dual")
        assert max(seen) == 12  # the AdaBlock look-ahead (0.5 * 24) when a block opens
    finally:
        del model.forward_span


def test_statistics(models):
    model, _ = models
    out = dk.generate(model, prompts(), gen_length=GEN, policy=POLICIES["threshold"], cache="dual", timing=True)
    assert out.finished and out.steps == max(out.nfe) and out.forward_calls == out.steps
    for b in range(3):
        assert len(out.tokens_per_step[b]) == out.nfe[b]
        assert sum(out.tokens_per_step[b]) == GEN  # without EoTP every position is committed once
        assert min(out.tokens_per_step[b]) >= 1
    assert out.generated_tokens == ((out.tokens != EOS) & (out.tokens != MASK)).sum(1).tolist()
    assert out.tokens_per_second == pytest.approx(sum(out.generated_tokens) / out.wall_time_s)
    assert 0 < out.forward_time_s < out.step_time_s and 0 < out.outside_forward_fraction < 1
    assert not (out.tokens == MASK).any()
    s = out.summary()
    assert s["mean_tokens_per_step"] == pytest.approx(3 * GEN / sum(out.nfe))


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_topk_reads_the_state_once_per_block(models, cache):
    """A top-k schedule fixes every block's end, so the decoder reads the device state once per
    block (at its opening) plus once to see the batch done; adaptive rules read it every step.
    Gen 21 with block 8 and 6 steps: a last block of 5 positions closes after 5 steps."""
    model, eager = models
    ps = prompts()
    for gen, steps, blocks in ((GEN, 4, 3), (21, 6, 3), (5, 3, 1)):
        for temperature in (0.0, 1.0):
            policy = dk.Policy(rule="topk", steps=steps, block_length=8, temperature=temperature)
            ours = dk.generate(model, ps, gen_length=gen, policy=policy, cache=cache, seed=4)
            ref = eager_generate(eager, ps, gen_length=gen, policy=policy, cache=cache, mask_id=MASK, eos_id=EOS,
                                 seed=4)
            assert ours.finished and torch.equal(ours.tokens, ref.tokens) and ours.nfe == ref.nfe
            assert ours.state_reads == blocks + 1, (gen, steps, ours.state_reads)
    adaptive = dk.generate(model, ps, gen_length=GEN, policy=POLICIES["threshold"], cache=cache)
    assert adaptive.state_reads == adaptive.steps + 1


def test_topk_block_closing_late_is_read_not_assumed(models):
    """Invalid (NaN) rows keep a position masked past its scheduled step, so the block closes
    later than counted at its opening: the decoder must notice at its next read and go on exactly
    as a decoder that reads the state every step."""
    _, eager = models
    P, B = 5, 2
    ps = [torch.arange(1, P + 1), torch.arange(10, 10 + P)]
    policy = dk.Policy(rule="topk", steps=4, block_length=8)

    def flaky(calls):
        def model(x):
            logits = eager(x)
            if calls[0] < 6:  # position P + 2 (first block) gives invalid rows for six forwards
                logits[:, P + 2] = float("nan")
            calls[0] += 1
            return logits
        return model

    calls = [0]
    ours = dk.generate(flaky(calls), ps, gen_length=GEN, policy=policy, mask_id=MASK, eos_id=EOS)
    assert ours.finished and ours.state_reads > 4  # more than one read per block
    # The same model through a loop that reads the state every step.
    calls2 = [0]
    model2 = flaky(calls2)
    x = torch.full((B, P + GEN), MASK)
    for b in range(B):
        x[b, :P] = ps[b]
    state = dk.DecodeState.new(B, P + GEN, gen_start=P, seed=0)
    while not bool(state.done.all()):
        dk.fused_unmask(model2(x), x, state, policy, mask_id=MASK, eos_id=EOS, backend="reference")
    assert torch.equal(ours.sequences, x) and calls[0] == calls2[0] == ours.steps


def test_callable_adapter_and_prompt_forms(models, capsys):
    """A plain callable (here the eager model) decodes unchanged; ragged batches pass an attention
    mask; a left-padded 2-D prompt tensor with its attention mask equals the list form."""
    model, eager = models
    ps = prompts()
    native = dk.generate(model, ps, gen_length=GEN, policy=POLICIES["localleap"], seed=2)

    def hf_like(x, attention_mask=None):
        return type("Out", (), {"logits": eager(x, key_padding=attention_mask.bool())})()

    out = dk.generate(hf_like, ps, gen_length=GEN, policy=POLICIES["localleap"], seed=2, mask_id=MASK,
                      eos_id=EOS, pass_attention_mask=True, progress=True)
    assert torch.equal(out.tokens, native.tokens) and out.forward_calls == out.steps + 1  # + the mask check
    assert "100%" in capsys.readouterr().err
    padded = torch.zeros(3, 12, dtype=torch.int64)
    mask = torch.zeros(3, 12, dtype=torch.int64)
    for b, p in enumerate(ps):
        padded[b, 12 - len(p):] = p
        mask[b, 12 - len(p):] = 1
    out2 = dk.generate(model, padded, attention_mask=mask, gen_length=GEN, policy=POLICIES["localleap"], seed=2)
    assert torch.equal(out2.tokens, native.tokens)


def test_ragged_callable_that_ignores_the_mask(models):
    """The public LLaDA code ignores attention_mask: asked to pass one, generate refuses after one
    check instead of committing tokens computed over padding; without it, the ragged batch is
    decoded one unpadded forward per prompt length and equals each sequence decoded alone."""
    model, eager = models
    ps = prompts()
    native = dk.generate(model, ps, gen_length=GEN, policy=POLICIES["localleap"], seed=2)

    def ignores_mask(x, attention_mask=None):
        return eager(x)

    with pytest.raises(ValueError, match="does not honour attention_mask"):
        dk.generate(ignores_mask, ps, gen_length=GEN, policy=POLICIES["localleap"], seed=2, mask_id=MASK,
                    eos_id=EOS, pass_attention_mask=True)
    out = dk.generate(ignores_mask, ps, gen_length=GEN, policy=POLICIES["localleap"], seed=2, mask_id=MASK,
                      eos_id=EOS)
    assert torch.equal(out.tokens, native.tokens) and out.forward_calls == 3 * out.steps  # 3 lengths


def test_shifted_logits_callable(models):
    """A Dream-style model (row p predicts position p + 1) with Policy(shift=True) decodes what the
    unshifted model decodes."""
    _, eager = models
    ps = prompts((4, 4))
    policy = POLICIES["adablock"]

    def shifted(x):
        logits = eager(x)
        return torch.cat([logits[:, 1:], logits[:, :1]], dim=1)  # row p holds position p + 1

    plain = dk.generate(eager, ps, gen_length=GEN, policy=policy, mask_id=MASK, eos_id=EOS)
    out = dk.generate(shifted, ps, gen_length=GEN, policy=dataclasses.replace(policy, shift=True),
                      mask_id=MASK, eos_id=EOS)
    assert torch.equal(out.tokens, plain.tokens)


def test_default_policy_is_one_token_per_step(models):
    """Policy() is LLaDA's decoding: top-k with one token per step, also when generate changes the
    block length (steps follows block_length while it is None)."""
    model, _ = models
    assert dk.Policy().rule == "topk" and dk.Policy().block_steps == dk.Policy().block_length
    assert dataclasses.replace(dk.Policy(), block_length=8).block_steps == 8
    assert dk.Policy(steps=4, block_length=8).block_steps == 4
    for block_length in (None, 8):
        out = dk.generate(model, prompts((3, 5)), gen_length=16, block_length=block_length)
        assert out.finished and out.nfe == [16, 16]
        assert all(t == [1] * 16 for t in out.tokens_per_step)


def test_bad_arguments(models):
    model, eager = models
    with pytest.raises(ValueError, match="cache"):
        dk.generate(eager, prompts(), gen_length=8, cache="dual", mask_id=MASK, eos_id=EOS)
    with pytest.raises(ValueError, match="cache must be"):
        dk.generate(model, prompts(), gen_length=8, cache="full")
    with pytest.raises(ValueError, match="mask_id"):
        dk.generate(lambda x: eager(x), prompts(), gen_length=8)
    with pytest.raises(ValueError, match="shift"):
        dk.generate(model, prompts(), gen_length=8, policy=dk.Policy(shift=True))
    with pytest.raises(ValueError, match="gen_length"):
        dk.generate(model, prompts(), gen_length=0)
    out = dk.generate(model, prompts(), gen_length=GEN, policy=dk.Policy(rule="topk", steps=8, block_length=8),
                      max_steps=3)
    assert not out.finished and out.steps == 3


@pytest.mark.cuda
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_cuda_generate_matches_eager_and_graph(cache):
    torch.manual_seed(0)
    sd = {k: v.cuda() for k, v in random_state_dict(CFG, seed=0, std=0.3).items()}
    model, eager = LLaDA(CFG, sd), EagerLLaDA(CFG, sd)
    ps = prompts()
    policy = POLICIES["threshold"]
    ours = dk.generate(model, ps, gen_length=GEN, policy=policy, cache=cache)
    ref = eager_generate(eager, ps, gen_length=GEN, policy=policy, cache=cache, mask_id=MASK, eos_id=EOS,
                         engine="fused")
    assert torch.equal(ours.sequences, ref.sequences)
    if cache == "dual":
        graph = dk.generate(model, ps, gen_length=GEN, policy=policy, cache=cache, cuda_graph=True)
        assert graph.graph_steps > 0 and torch.equal(graph.sequences, ours.sequences)
