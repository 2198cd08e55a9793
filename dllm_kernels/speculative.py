"""Speculative decoding for a pair of causal models: autoregressive baseline, vanilla
draft-then-verify, and PEARL (parallel draft and verify, with pre-verify and post-verify).

A model is any object with `new_cache(batch, max_len)` and `step(tokens, positions, cache)`:
tokens [B, n] int64 at sequence positions [B, n] go through the model's KV cache (keys and values
written at those positions, each token attending to positions up to its own) and give logits
[B, n, V]. `dllm_kernels.models.causal_lm.CausalLM` is one. Rolling a sequence back is feeding its
next token at an earlier position, so every sequence of the batch keeps its own length.

Every loop keys the target's draws by (seed, position): the op's Philox offset is the sequence's
length when the round starts. All three loops decode the same greedy text at temperature 0 (up to
float ties between batch shapes); at temperature > 0 speculative decoding samples exactly from the
target. Semantics of the verify step: docs/speculative_verify.md.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Sequence, Union

import torch

from .speculative_verify import speculative_verify

__all__ = ["SpecOutput", "autoregressive", "speculative", "pearl"]


@dataclass
class SpecStats:
    rounds: int = 0               # verify rounds (autoregressive: target steps)
    target_calls: int = 0
    draft_calls: int = 0
    verified: int = 0             # (sequence, round) pairs that ran a verification
    accepted: int = 0             # draft tokens accepted, summed over those pairs
    generated: int = 0            # new tokens, all sequences
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def accepted_per_round(self) -> float:
        """Mean draft tokens accepted per sequence per round."""
        return self.accepted / max(self.verified, 1)

    @property
    def tokens_per_round(self) -> float:
        """Mean tokens committed per sequence per round (accepted + the correction or bonus token)."""
        return self.generated / max(self.verified, 1)


class SpecOutput(NamedTuple):
    tokens: List[List[int]]  # the new tokens of each sequence (max_new_tokens of them)
    stats: SpecStats


class _Batch:
    """Committed tokens of every sequence, their seeds, and what is left to generate."""

    def __init__(self, prompts, max_new_tokens, seed, device):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("speculative: every prompt needs at least one token")
        self.x = [list(map(int, p)) for p in prompts]
        self.prompt_len = [len(p) for p in prompts]
        self.B = len(prompts)
        self.max_new = max_new_tokens
        self.device = device
        base = seed if isinstance(seed, int) else 0
        self.seed = (torch.as_tensor(seed, dtype=torch.int64) if not isinstance(seed, int)
                     else torch.arange(self.B, dtype=torch.int64) * 0x9E3779B97F4A7C15 % (2**62) + base).to(device)

    def left(self, b) -> int:
        return self.prompt_len[b] + self.max_new - len(self.x[b])

    def done(self) -> bool:
        return all(self.left(b) <= 0 for b in range(self.B))

    def commit(self, b, tokens) -> int:
        take = list(tokens)[:max(self.left(b), 0)]
        if any(t < 0 for t in take):
            raise RuntimeError(f"speculative: the target's logits of sequence {b} are not finite (NaN/inf)")
        self.x[b].extend(take)
        return len(take)

    def offsets(self):
        return torch.tensor([len(s) for s in self.x], dtype=torch.int64, device=self.device)

    def output(self):
        return [s[p:] for s, p in zip(self.x, self.prompt_len)]


def _op_logits(t: torch.Tensor) -> torch.Tensor:
    """The verify op reads float32/float16/bfloat16; a float64 model's logits are rounded to float32."""
    return t.float() if t.dtype == torch.float64 else t


def _padded(rows: Sequence[Sequence[int]], device, fill=0):
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [fill] * (width - len(r)) for r in rows], dtype=torch.int64, device=device)


def _feed(model, cache, device, tokens: Sequence[Sequence[int]], starts: Sequence[int]):
    """Run each sequence's `tokens` from position `starts[b]` (ragged; padding goes past the end, where
    nothing reads it before it is overwritten). Returns logits [B, width, V]."""
    toks = _padded(tokens, device)
    pos = torch.tensor(starts, dtype=torch.int64, device=device)[:, None] + torch.arange(toks.shape[1], device=device)
    return _op_logits(model.step(toks, pos, cache))


def _prefill(model, batch: _Batch, max_len: int):
    cache = model.new_cache(batch.B, max_len)
    if max(len(s) for s in batch.x) > 1:
        _feed(model, cache, batch.device, [s[:-1] or s[:1] for s in batch.x], [0] * batch.B)
    return cache


def _max_len(batch: _Batch, k: int) -> int:
    return max(batch.prompt_len) + batch.max_new + 2 * k + 4


def _sample(logits: torch.Tensor, temperature: float, gen: Optional[torch.Generator]) -> torch.Tensor:
    """Draft sampling [B, V] -> [B] (argmax at temperature 0)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


def _draft(model, cache, batch: _Batch, chains: List[List[int]], steps: int, temperature, gen):
    """`steps` draft tokens after each chain (committed tokens plus earlier drafts). The draft cache
    must hold the chain up to its last two tokens, which are fed again. Returns (tokens [B, steps],
    draft logits [B, steps, V])."""
    dev = batch.device
    tail = [c[-2:] if len(c) >= 2 else [c[-1], c[-1]] for c in chains]
    start = [max(len(c) - 2, 0) for c in chains]
    # a length-1 chain feeds its token twice at position 0 (same keys, same slot)
    pos = torch.tensor(start, device=dev)[:, None] + torch.tensor([[0, 1]], device=dev)
    pos = torch.minimum(pos, torch.tensor([len(c) - 1 for c in chains], device=dev)[:, None])
    logits = _op_logits(model.step(torch.tensor(tail, device=dev), pos, cache)[:, -1])
    toks, rows = [], []
    for i in range(steps):
        t = _sample(logits, temperature, gen)
        toks.append(t)
        rows.append(logits)
        if i + 1 < steps:
            nxt = pos[:, -1:] + 1 + i
            logits = _op_logits(model.step(t[:, None], nxt, cache)[:, -1])
    return torch.stack(toks, 1), torch.stack(rows, 1)


def autoregressive(target, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
                   seed: Union[int, torch.Tensor] = 0, device="cpu") -> SpecOutput:
    """One target step per token (the verify op with no draft samples the target's next token)."""
    t0 = time.perf_counter()
    batch = _Batch(prompts, max_new_tokens, seed, device)
    cache = _prefill(target, batch, _max_len(batch, 0))
    st = SpecStats()
    empty = torch.zeros(batch.B, 0, dtype=torch.int64, device=device)
    no_draft = torch.zeros(batch.B, dtype=torch.int64, device=device)
    while not batch.done():
        logits = _feed(target, cache, device, [s[-1:] for s in batch.x], [len(s) - 1 for s in batch.x])
        res = speculative_verify(logits, empty, logits[:, :0], no_draft, temperature=temperature,
                                 seed=batch.seed, offset=batch.offsets(), draft_is_logits=True)
        nxt = res.emitted[:, 0].tolist()
        for b in range(batch.B):
            if batch.left(b) > 0:
                st.generated += batch.commit(b, [nxt[b]])
                st.verified += 1
        st.rounds += 1
        st.target_calls += 1
    st.wall_s = time.perf_counter() - t0
    return SpecOutput(batch.output(), st)


def _draft_lengths(draft_len, B) -> List[int]:
    lens = [int(draft_len)] * B if isinstance(draft_len, int) else [int(v) for v in draft_len]
    if len(lens) != B or min(lens) < 1:
        raise ValueError(f"speculative: draft_len must be >= 1 per sequence (one per prompt), got {draft_len}")
    return lens


def speculative(target, draft, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                draft_len: Union[int, Sequence[int]] = 4, temperature: float = 0.0,
                seed: Union[int, torch.Tensor] = 0, device="cpu") -> SpecOutput:
    """Vanilla speculative decoding: each round the draft proposes up to `draft_len` tokens (per
    sequence), then one target pass over them verifies all at once."""
    t0 = time.perf_counter()
    batch = _Batch(prompts, max_new_tokens, seed, device)
    lens = _draft_lengths(draft_len, batch.B)
    K = max(lens)
    tcache = _prefill(target, batch, _max_len(batch, K))
    dcache = _prefill(draft, batch, _max_len(batch, K))
    gen = torch.Generator(device=device).manual_seed(int(batch.seed[0]) + 1) if temperature > 0 else None
    st = SpecStats()
    while not batch.done():
        active = [batch.left(b) > 0 for b in range(batch.B)]
        toks, qlog = _draft(draft, dcache, batch, batch.x, K, temperature, gen)
        st.draft_calls += K
        # per-sequence draft length: its own, and no more than it can still use
        n_draft = torch.tensor([min(lens[b], max(batch.left(b) - 1, 0)) for b in range(batch.B)], device=device)
        feed = [s[-1:] + row for s, row in zip(batch.x, toks.tolist())]
        logits = _feed(target, tcache, device, feed, [len(s) - 1 for s in batch.x])
        st.target_calls += 1
        res = speculative_verify(logits, toks, qlog, n_draft, temperature=temperature, seed=batch.seed,
                                 offset=batch.offsets(), draft_is_logits=True)
        acc, out = res.accepted.tolist(), res.emitted.tolist()
        for b in range(batch.B):
            if active[b]:
                st.generated += batch.commit(b, out[b][:acc[b] + 1])
                st.accepted += acc[b]
                st.verified += 1
        st.rounds += 1
    st.wall_s = time.perf_counter() - t0
    return SpecOutput(batch.output(), st)


class _Parallel:
    """Runs the draft's work beside the target's: a second thread on CPU (torch releases the GIL in its
    kernels), and on CUDA also a second stream, joined before its results are used."""

    def __init__(self, device):
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.cuda = torch.device(device).type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None

    def submit(self, fn, *args):
        if not self.cuda:
            return self.pool.submit(fn, *args)
        main = torch.cuda.current_stream()
        done = torch.cuda.Event()

        def job():
            self.stream.wait_stream(main)
            with torch.cuda.stream(self.stream):
                out = fn(*args)
                done.record(self.stream)
            return out

        fut = self.pool.submit(job)
        fut.join_stream = lambda: main.wait_event(done)
        return fut

    def result(self, fut):
        out = fut.result()
        if self.cuda:
            fut.join_stream()
        return out

    def close(self):
        self.pool.shutdown(wait=True)


def pearl(target, draft, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, draft_len: int = 4,
          temperature: float = 0.0, seed: Union[int, torch.Tensor] = 0, device="cpu",
          parallel: bool = True) -> SpecOutput:
    """PEARL (parallel speculative decoding with adaptive draft length), batched.

    Each round the target verifies the candidate draft tokens a sequence already has while the draft
    model, at the same time, drafts `draft_len` more tokens after them:
    - pre-verify: a sequence without candidates (after a rejection) runs one target step, which
      checks the first new draft token as soon as it exists;
    - post-verify: a sequence with candidates has them verified while its next tokens are drafted.
    After the join, the candidates and the first new token are verified in one op call (the row after
    the candidates checks that token). If all pass, the remaining new tokens are the next round's
    candidates, so a sequence's draft grows for as long as it keeps being accepted (the adaptive draft
    length); on a rejection its new tokens are dropped. `parallel=False` runs the two jobs one after
    the other (same tokens, for timing comparisons).
    """
    if int(draft_len) < 1:
        raise ValueError(f"pearl: draft_len must be >= 1, got {draft_len}")
    gamma = int(draft_len)
    t0 = time.perf_counter()
    batch = _Batch(prompts, max_new_tokens, seed, device)
    tcache = _prefill(target, batch, _max_len(batch, 2 * gamma))
    dcache = _prefill(draft, batch, _max_len(batch, 2 * gamma))
    gen = torch.Generator(device=device).manual_seed(int(batch.seed[0]) + 1) if temperature > 0 else None
    cand: List[List[int]] = [[] for _ in range(batch.B)]       # candidate tokens after the committed ones
    cand_q: List[List[torch.Tensor]] = [[] for _ in range(batch.B)]  # their draft logits rows [V]
    runner = _Parallel(device) if parallel else None
    st = SpecStats()
    st.extra = {"pre_verify_rounds": 0, "post_verify_rounds": 0}
    try:
        while not batch.done():
            active = [batch.left(b) > 0 for b in range(batch.B)]
            chains = [s + c for s, c in zip(batch.x, cand)]
            if runner:
                fut = runner.submit(_draft, draft, dcache, batch, chains, gamma, temperature, gen)
            feed = [s[-1:] + c for s, c in zip(batch.x, cand)]
            logits = _feed(target, tcache, device, feed, [len(s) - 1 for s in batch.x])
            toks, qlog = runner.result(fut) if runner else _draft(draft, dcache, batch, chains, gamma, temperature,
                                                                   gen)
            st.target_calls += 1
            st.draft_calls += gamma
            V = logits.shape[-1]
            c_len = [len(c) for c in cand]
            width = max(c_len) + 1
            # tokens to verify: the candidates, then the first new token; one spare row for the
            # bonus draw the op makes when all pass (unused: the next token is the draft's)
            vt = torch.zeros(batch.B, width, dtype=torch.int64, device=device)
            vq = torch.zeros(batch.B, width, V, dtype=qlog.dtype, device=device)
            for b in range(batch.B):
                if c_len[b]:
                    vt[b, :c_len[b]] = torch.tensor(cand[b], device=device)
                    vq[b, :c_len[b]] = torch.stack(cand_q[b])
                vt[b, c_len[b]] = toks[b, 0]
                vq[b, c_len[b]] = qlog[b, 0]
            vlogits = torch.cat([logits, logits[:, -1:]], 1)
            n_verify = torch.tensor([c + 1 for c in c_len], device=device)
            res = speculative_verify(vlogits, vt, vq, n_verify, temperature=temperature, seed=batch.seed,
                                     offset=batch.offsets(), draft_is_logits=True)
            acc, out = res.accepted.tolist(), res.emitted.tolist()
            new = toks.tolist()
            for b in range(batch.B):
                if not active[b]:
                    continue
                st.extra["post_verify_rounds" if c_len[b] else "pre_verify_rounds"] += 1
                st.verified += 1
                st.accepted += acc[b]
                if acc[b] == c_len[b] + 1:  # all passed: keep the draft's continuation
                    st.generated += batch.commit(b, out[b][:acc[b]])
                    cand[b] = new[b][1:]
                    cand_q[b] = list(qlog[b, 1:].unbind(0))
                else:
                    st.generated += batch.commit(b, out[b][:acc[b] + 1])
                    cand[b], cand_q[b] = [], []
                # never draft past the end of what is left to generate
                keep = max(batch.left(b) - 1, 0)
                cand[b], cand_q[b] = cand[b][:keep], cand_q[b][:keep]
            st.rounds += 1
    finally:
        if runner:
            runner.close()
    st.wall_s = time.perf_counter() - t0
    return SpecOutput(batch.output(), st)
