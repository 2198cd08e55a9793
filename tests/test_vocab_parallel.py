"""Vocabulary-parallel unmasking over torch.distributed (gloo, 2 and 3 CPU processes spawned here):
`vocab_parallel_select` on uneven shards equals one process's `select` for every rule and
confidence kind at T = 0 and sampling (tokens exact, conf to float rounding, near-ties counted),
identically on every rank; mismatched ranks (shard width, policy, shapes, inputs) and a dead peer
raise instead of hanging or diverging; `vocab_parallel_fused_unmask` against `fused_unmask`."""
import time

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.vocab_parallel import _all_gather, vocab_parallel_select, vocab_shard
from distributed_cases import run_ranks
from test_select import CONF_NAMES, RULE_NAMES, _draw, _thresholds_of
from fused_unmask_cases import ambiguous_sequences, peaked_logits


def _cuts(V, world, seed):
    """Uneven shard bounds: one shard a single id in some draws, random widths in the others."""
    if seed % 3 == 0:
        return [0, 1] + [1 + (V - 1) * (i + 1) // (world - 1) for i in range(world - 1)]
    gen = torch.Generator().manual_seed(seed)
    inner = sorted(torch.randperm(V - 1, generator=gen)[:world - 1].add(1).tolist())
    return [0] + inner + [V]


def _same_on_every_rank(t, world):
    """Bit for bit (NaN included) the same tensor on every rank."""
    t = t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t.contiguous()
    out = t.new_empty(world * t.numel())
    _all_gather(out, t.reshape(-1))
    for r in range(1, world):
        assert torch.equal(out.view(world, -1)[r], out.view(world, -1)[0]), f"rank {r} differs from rank 0"


def _excused(logits, whole, got, kw, b):
    read = ~torch.isnan(whole.conf)
    shift = 1 if kw.get("shift") else 0
    rs = kw.get("row_start")
    row_of = lambda _, p: p - shift - (int(rs[b]) if rs is not None else 0)  # noqa: E731
    return b in ambiguous_sequences(logits[b:b + 1], whole.conf[b:b + 1], read[b:b + 1], _thresholds_of(kw, b),
                                    row_of, seeds=kw["seed"][b:b + 1], offsets=kw["offset"][b:b + 1])


def _select_body(rank, world):
    excused = 0
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    draws = 2 if world == 2 else 1  # 3 ranks on this 2-core machine: every rule x kind once
    for i, (rule, conf) in enumerate((r, c) for r in RULE_NAMES for c in CONF_NAMES):
        for seed in range(draws):
            s = 500 + 10 * i + seed + world
            logits, x, cand, kw = _draw(s, rule, conf, dtypes[(i + seed) % 3])
            V = logits.shape[-1]
            cuts = _cuts(V, world, s)
            lo, hi = cuts[rank], cuts[rank + 1]
            whole = dk.select(logits, x.clone(), cand, **kw)
            got = vocab_parallel_select(logits[:, :, lo:hi].contiguous(), x.clone(), cand, group=None,
                                        vocab_start=lo, vocab_size=V, **kw)
            assert torch.equal(got.x0, whole.x0), (rule, conf, s)
            torch.testing.assert_close(got.conf, whole.conf, rtol=1e-5, atol=1e-6, equal_nan=True)
            for b in range(x.shape[0]):
                if not torch.equal(got.transfer[b], whole.transfer[b]):
                    assert _excused(logits, whole, got, kw, b), f"{rule} {conf} draw {s} seq {b}: transfer differs"
                    excused += 1
            _same_on_every_rank(got.conf, world)
            _same_on_every_rank(got.transfer.to(torch.uint8), world)
    assert excused <= 4, f"{excused} sequences excused as near-ties"
    # Sampling where the noise decides (flat rows): every rank draws the single process's tokens.
    gen = torch.Generator().manual_seed(9)
    B, R, V = 3, 16, 4099
    logits = peaked_logits(B, R, V, torch.float32, gen) * 0.2
    x = torch.zeros(B, R, dtype=torch.int64)
    kw = dict(rule="threshold", threshold=0.0, temperature=1.0, seed=torch.tensor([1, 2, 3]),
              offset=torch.tensor([0, 7, 9]), conf="prob")
    lo, n = vocab_shard(V, world, rank)
    whole = dk.select(logits, x, **kw)
    got = vocab_parallel_select(logits[:, :, lo:lo + n].contiguous(), x, group=None, vocab_start=lo, vocab_size=V, **kw)
    assert torch.equal(got.x0, whole.x0)
    assert (whole.x0 != logits.argmax(-1)).float().mean() > 0.5  # the draw is not the argmax




def _mismatch_body(rank, world, group_timeout_s):
    gen = torch.Generator().manual_seed(4)
    B, R, V = 2, 6, 101
    logits = peaked_logits(B, R, V, torch.float32, gen)
    x = torch.zeros(B, R, dtype=torch.int64)
    lo, n = vocab_shard(V, world, rank)
    shard = logits[:, :, lo:lo + n].contiguous()
    kw = dict(group=None, vocab_start=lo, vocab_size=V, rule="threshold", threshold=0.5)
    ok = vocab_parallel_select(shard, x, **kw)
    assert torch.equal(ok.x0, dk.select(logits, x, threshold=0.5).x0)
    with pytest.raises(RuntimeError, match="tile"):  # rank 1's shard one id short
        vocab_parallel_select(shard[..., :-1] if rank == 1 else shard, x, **kw)
    with pytest.raises(RuntimeError, match="disagree"):  # a different threshold on rank 1
        vocab_parallel_select(shard, x, **dict(kw, threshold=0.6 if rank == 1 else 0.5))
    with pytest.raises(RuntimeError, match="disagree"):  # a different rule
        vocab_parallel_select(shard, x, **dict(kw, rule="factor", threshold=None, factor=1.0) if rank else kw)
    with pytest.raises(RuntimeError, match="disagree"):  # a different x
        vocab_parallel_select(shard, x + rank, **kw)
    with pytest.raises(RuntimeError, match="disagree"):  # [2, 6] rows on rank 0, [3, 4] on rank 1
        s = shard if rank == 0 else shard.reshape(3, 4, n)
        vocab_parallel_select(s, x if rank == 0 else torch.zeros(3, 4, dtype=torch.int64), **kw)
    with pytest.raises(ValueError, match="suppress_ids are global ids"):
        vocab_parallel_select(shard, x, suppress_ids=[V], **kw)
    # Different B x R: the payloads would differ in size (gloo aborts the process on that); the
    # shapes, gathered first on CPU tensors, raise instead, and the group stays usable.
    with pytest.raises(RuntimeError, match=r"disagree on the shape .*rank 0: \[2, 6, 9\]; rank 1: \[2, 5, 9\]"):
        vocab_parallel_select(shard[:, :5] if rank == 1 else shard, x, **kw)
    assert torch.equal(vocab_parallel_select(shard, x, **kw).x0, ok.x0)
    # A dead peer: rank 1 never joins; rank 0 gets the collective's error after the group timeout.
    if rank == 1:
        time.sleep(group_timeout_s + 3)
        return
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="a peer died or did not join"):
        vocab_parallel_select(shard, x, **kw)
    assert time.monotonic() - t0 < group_timeout_s + 30


def test_mismatched_ranks_and_a_dead_peer_raise(tmp_path):
    run_ranks(_mismatch_body, 2, 4.0, tmp_path=tmp_path, group_timeout_s=4.0, end_barrier=False)


def _fused_body(rank, world):
    from dllm_kernels.vocab_parallel import vocab_parallel_fused_unmask
    MASK, EOS = 300, 2
    for i, (rule, conf) in enumerate((r, c) for r in RULE_NAMES if r != "filter" for c in CONF_NAMES):
        gen = torch.Generator().manual_seed(700 + i)
        B, L, V = 3, 24, 301
        extra = dict(topk=dict(steps=4), threshold=dict(threshold=0.4), factor=dict(factor=1.0),
                     localleap=dict(anchor_threshold=0.7, relaxed_threshold=0.3))[rule]
        policy = dk.Policy(rule=rule, conf=conf, block_length=8, temperature=0.5 * (i % 2), **extra)
        cuts = _cuts(V, world, i)
        lo, hi = cuts[rank], cuts[rank + 1]
        x1 = torch.full((B, L), MASK, dtype=torch.int64)
        x1[:, :4] = 1
        s1 = dk.DecodeState.new(B, L, gen_start=4, seed=[3, 4, 5])
        xp, sp = x1.clone(), dk.DecodeState.new(B, L, gen_start=4, seed=[3, 4, 5])
        for step in range(12):
            logits = peaked_logits(B, L, V, torch.float32, gen)
            a = dk.fused_unmask(logits, x1, s1, policy, mask_id=MASK, eos_id=EOS)
            b = vocab_parallel_fused_unmask(logits[:, :, lo:hi].contiguous(), xp, sp, policy, group=None,
                                            vocab_start=lo, vocab_size=V, mask_id=MASK, eos_id=EOS)
            assert torch.equal(a.x0, b.x0) and torch.equal(xp, x1) and torch.equal(sp.state, s1.state), (rule, conf, step)
        _same_on_every_rank(xp, world)


def _equivalence_body(rank, world):
    _select_body(rank, world)
    _fused_body(rank, world)


@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_select_and_fused_unmask_equal_one_process(world, tmp_path):
    """One spawn per world size for both ops (starting the ranks costs more than most checks)."""
    run_ranks(_equivalence_body, world, tmp_path=tmp_path)
