"""`dllm_kernels.generate`: the thin batched dLLM decoder over `fused_unmask` (docs/decoder.md).

Layout. Prompts of different lengths get per-sequence offsets: sequence b occupies positions
`[0, P_b + gen_length)` of a `[B, max P + gen_length]` token tensor (prompt, then `gen_length` masks,
then padding), so positions (and RoPE angles) are those the sequence has alone, and its
generation region `[P_b, P_b + gen_length)` is its own `DecodeState` row. Nothing a sequence
computes depends on the other sequences: a batch gives each sequence what it gets alone.

One step = one model forward + one `fused_unmask` call for the whole batch. The only host read
is the state tensor ([B, 11] int64): it says which sequences are done, which open a block this
step (and so refresh their cache), and where each block lies, which fixes the forward's query
spans and logits rows. A top-k schedule reads it once per block (the schedule fixes when each
block closes); adaptive rules once per step (docs/decoder.md says why). Nothing else waits on the
host (no `.item()`, no per-layer or per-candidate read).

Model adapters:
* `dllm_kernels.models.LLaDA` and `Dream` (anything with `forward_span`): logits only for the rows
  the step needs, caches "none" | "prefix" | "dual", optional CUDA-graph replay of dual-cache block
  steps; Dream's shifted logits (`model.shift`) with `Policy(shift=True)`.
* `dllm_kernels.models.BlockDiffusion` (SDAR, Fast-dLLM v2; `attn_mode == "block_causal"`): blocks
  of the model's own `block_size` aligned to position 0 (the prompt's last, partial block is the
  first one decoded), caches "none" | "block" (exact: a finished block's K/V are written once).
* any other callable `model(x)` returning logits `[B, L, V]` (or an object with `.logits`, or a
  tuple whose first item is the logits): a Hugging Face LLaDA or Dream model works unchanged;
  no cache; Dream's shifted logits with `Policy(shift=True)`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch

from .policy import Policy
from .reference.unmask import topk_count
from .state import (BLOCK_END, BLOCK_MASKED, BLOCK_REMAINING, BLOCK_START, DONE, END_POS, GEN_END,
                    GEN_START, STEP, DecodeState)
from .unmask import fused_unmask

__all__ = ["CACHE_MODES", "GenerateOutput", "generate", "prepare_prompts"]

CACHE_MODES = ("none", "prefix", "dual", "block")


@dataclass
class GenerateOutput:
    """What `generate` returns: tokens and statistics."""

    sequences: torch.Tensor         # [B, Lmax] the layout: prompt, generation, padding (pad_id)
    tokens: torch.Tensor            # [B, gen_length] the generation region of each sequence
    prompt_lengths: List[int]
    nfe: List[int]                  # forwards each sequence took part in
    forward_calls: int              # model calls (one per step; per length group, see generate)
    steps: int                      # decode steps of the batch
    tokens_per_step: List[List[int]]  # per sequence: tokens written at each of its steps
    generated_tokens: List[int]     # per sequence: non-eos tokens in its generation region
    wall_time_s: float
    tokens_per_second: float        # sum(generated_tokens) / wall_time_s
    finished: bool                  # every sequence done (False: max_steps reached)
    graph_steps: int = 0            # steps replayed from a CUDA graph (dense path on CPU)
    state_reads: int = 0            # host reads of the [B, 11] state (one per block for top-k)
    forward_time_s: Optional[float] = None   # with timing=True: time inside model forwards
    step_time_s: Optional[float] = None      # with timing=True: time of all steps
    step_times: list = field(default_factory=list)  # with timing=True: (forward_s, step_s) per step

    @property
    def outside_forward_fraction(self) -> Optional[float]:
        if not self.step_time_s:
            return None
        return 1.0 - self.forward_time_s / self.step_time_s

    def summary(self) -> dict:
        tps = [t for seq in self.tokens_per_step for t in seq]
        return {"nfe": self.nfe, "forward_calls": self.forward_calls, "steps": self.steps,
                "mean_tokens_per_step": (sum(tps) / len(tps)) if tps else 0.0,
                "generated_tokens": self.generated_tokens, "wall_time_s": self.wall_time_s,
                "tokens_per_second": self.tokens_per_second, "finished": self.finished,
                "graph_steps": self.graph_steps, "state_reads": self.state_reads,
                "forward_time_s": self.forward_time_s,
                "step_time_s": self.step_time_s, "outside_forward_fraction": self.outside_forward_fraction}


def prepare_prompts(prompt_ids, attention_mask=None) -> List[torch.Tensor]:
    """A list of 1-D int64 prompts from: a list of sequences, a 1-D tensor, or a 2-D tensor (with
    an optional `attention_mask`, 1 for tokens: left- or right-padded rows are stripped)."""
    if isinstance(prompt_ids, torch.Tensor):
        t = prompt_ids.detach().to("cpu", torch.int64)
        if t.dim() == 1:
            t = t[None]
        if t.dim() != 2:
            raise ValueError(f"generate: prompt_ids must be 1-D or 2-D, got shape {tuple(prompt_ids.shape)}")
        if attention_mask is None:
            return list(t)
        m = torch.as_tensor(attention_mask).to("cpu").bool()
        if m.shape != t.shape:
            raise ValueError(f"generate: attention_mask {tuple(m.shape)} must match prompt_ids {tuple(t.shape)}")
        return [t[b][m[b]] for b in range(t.shape[0])]
    if attention_mask is not None:
        raise ValueError("generate: attention_mask goes with a 2-D prompt_ids tensor")
    out = [torch.as_tensor(p, dtype=torch.int64).reshape(-1).cpu() for p in prompt_ids]
    if not out:
        raise ValueError("generate: no prompts")
    return out


def _opening_end(st: list, policy: Policy) -> int:
    """End (exclusive) of the rows the block opening at st[BLOCK_END] may read (docs/fused_unmask.md
    steps 1-2): the default block, or the AdaBlock look-ahead window when longer."""
    s, end_pos = st[BLOCK_END], st[END_POS]
    remaining = end_pos - s
    n = min(policy.block_length, remaining)
    if policy.adaptive_block:
        w = int(math.floor(np.float32(policy.block_window_fraction) * np.float32(st[GEN_END] - st[GEN_START])))
        n = max(n, min(w, remaining))
    return s + n


def _fixed_schedule(policy: Policy) -> bool:
    """Top-k schedule with fixed block ends: every block takes a number of steps the host can
    count in advance (EoTP and early stop end sequences, AdaBlock moves block ends: data-dependent)."""
    return policy.rule == "topk" and not (policy.adaptive_block or policy.eotp or policy.early_stop)


def _topk_steps_left(step: int, masked: int, remaining: int, steps: int) -> int:
    """Steps (this one included) until a top-k block with `remaining` masked positions closes, if
    every step commits its k_i (docs/fused_unmask.md step 5). Steps commit no more than k_i, so the
    block never closes sooner; an invalid row can make it close later, which the next read sees."""
    n = 0
    while remaining > 0:
        remaining -= topk_count(step, masked, steps, remaining)
        step, n = step + 1, n + 1
    return max(n, 1)


def _plan_block(st: list, policy: Policy, first_masked: List[int]):
    """For a fixed schedule: how many steps after this one run without reading the state, and the
    state rows (as far as `_spans` reads them) those steps see. A sequence opening a block this step
    gets the block the op will open: [BLOCK_END, +block_length) cut at END_POS, masked from
    `first_masked[b]` on (generate lays out the generation region masked, a block-diffusion model's
    first block may start with prompt tokens, and a top-k step writes only its block)."""
    ahead, rows = [], []
    for b, row in enumerate(st):
        if row[DONE]:
            rows.append(row)
            continue
        if row[BLOCK_REMAINING] == 0:
            s, e = row[BLOCK_END], _opening_end(row, policy)  # no AdaBlock: the default block
            masked = e - max(s, first_masked[b])
            ahead.append(_topk_steps_left(0, masked, masked, policy.block_steps))
            row = list(row)
            row[BLOCK_START], row[BLOCK_END], row[BLOCK_REMAINING] = s, e, masked
        else:
            ahead.append(_topk_steps_left(row[STEP], row[BLOCK_MASKED], row[BLOCK_REMAINING], policy.block_steps))
        rows.append(row)
    return (min(ahead) - 1 if ahead else 0), rows


def _spans(st: list, lens: List[int], policy: Policy, cache: str, shift: int = 0,
           cached_end: Optional[List[int]] = None):
    """Per sequence: query span (q_start, q_len), kv_len, logits rows (row_start, n) of this step.
    With `shift` the rows start one position earlier (row p predicts position p + 1), and so do the
    cached query spans; `cached_end[b]`: block cache, positions whose K/V are final."""
    q_start, q_len, kv_len, row_start, n_rows, opening = [], [], [], [], [], []
    for b, row in enumerate(st):
        if row[DONE]:
            q_start.append(0), q_len.append(0), kv_len.append(0), row_start.append(0), n_rows.append(0)
            opening.append(False)
            continue
        lb = lens[b]
        opens = row[BLOCK_REMAINING] == 0
        opening.append(opens)
        if cache == "block":  # block diffusion: the finished block (K/V written once) and the new one
            s = row[BLOCK_END] if opens else row[BLOCK_START]
            e = _opening_end(row, policy) if opens else row[BLOCK_END]
            start = cached_end[b] if opens else s
            q_start.append(start), q_len.append(e - start)
        elif cache == "none" or opens:  # the whole sequence (no cache, or the block's cache refresh)
            s = row[BLOCK_END] if opens else row[BLOCK_START]
            e = _opening_end(row, policy) if opens else row[BLOCK_END]
            q_start.append(0), q_len.append(lb)
            if policy.eotp:  # end-of-text candidates anywhere in the rest of the region
                e = row[END_POS]
        else:
            s, e = row[BLOCK_START], row[BLOCK_END]
            q_start.append(s - shift)  # a shifted model's block is predicted from the row before it
            if cache == "prefix":  # Fast-dLLM prefix cache: queries [block start, end of sequence)
                q_len.append(lb - s + shift)
                if policy.eotp:
                    e = row[END_POS]
            else:  # dual: the block only
                q_len.append(e - s + shift)
        kv_len.append(lb)
        r0 = max(s - shift, 0)  # position 0 predicts nothing; a shifted model's prompt is never empty
        row_start.append(r0)
        n_rows.append(e - shift - r0)
    return q_start, q_len, kv_len, row_start, n_rows, opening


def _logits_of(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"generate: the model returned {type(out).__name__}, expected logits")


def _callable_logits(model, x, attn_mask, groups):
    """Logits [B, L, V] of a plain callable: one forward of the batch, or, for a ragged batch
    decoded by length group, one unpadded forward per group (rows past a sequence's end are NaN:
    never read, and invalid if they were)."""
    if groups is None:
        return _logits_of(model(x, attention_mask=attn_mask) if attn_mask is not None else model(x))
    logits = None
    for rows, n in groups:
        part = _logits_of(model(x[rows, :n]))
        if logits is None:
            logits = part.new_full((x.shape[0], x.shape[1], part.shape[-1]), float("nan"))
        logits[rows, :n] = part
    return logits


def _check_mask_honoured(model, x, logits, b: int, n: int) -> None:
    """Once per decode (one host read): sequence b, padded in the batch, must get the logits it
    gets alone. A model that ignores `attention_mask` attends to the padding and would commit
    wrong tokens without any error."""
    ones = torch.ones(1, n, dtype=torch.long, device=x.device)
    solo = _logits_of(model(x[b:b + 1, :n], attention_mask=ones))[0].float()
    batched = logits[b, :n].float()
    diff = (batched - solo).abs().masked_fill(batched == solo, 0).masked_fill(batched.isnan() & solo.isnan(), 0)
    worst = float(diff.max())
    finite = solo[solo.isfinite()]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    tol = max(1e-4, 8 * torch.finfo(logits.dtype).eps) * scale  # batch-shape rounding, not padding
    if not worst <= tol:
        raise ValueError(
            f"generate: with pass_attention_mask=True, sequence {b} (padded in the batch) gets logits that "
            f"differ from its forward alone (max |diff| {worst:.3g} > {tol:.3g}): the model does not honour "
            "attention_mask (the public LLaDA code ignores it). Drop pass_attention_mask: a ragged batch of a "
            "plain callable is then decoded with one unpadded forward per prompt length, exactly.")


class _Progress:
    def __init__(self, enabled: bool, total: int):
        self.bar, self.done = None, 0
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, unit="tok", desc="generate")
        except ImportError:
            self.bar = "text"
            self.total, self.last = total, -1

    def update(self, done: int):
        if self.bar is None:
            return
        if self.bar == "text":
            pct = int(100 * done / max(self.total, 1))
            if pct // 10 != self.last // 10:
                print(f"generate: {pct}% ({done}/{self.total} positions)", file=sys.stderr)
                self.last = pct
        else:
            self.bar.update(done - self.done)
        self.done = done

    def close(self):
        if self.bar not in (None, "text"):
            self.bar.close()


class _DenseDualStep:
    """A dual-cache block step for the whole batch with fixed shapes and no host read: the body a
    CUDA graph captures. On CUDA the first call runs it eagerly (the real step; compiles kernels),
    then captures it; later calls replay. On CPU it always runs eagerly (the path tests check)."""

    def __init__(self, model, x, state, cache, lens_t, policy, q_max, mask_id, eos_id, shift=0, unmask=fused_unmask):
        self.model, self.x, self.state, self.cache, self.shift, self.unmask = model, x, state, cache, shift, unmask
        self.lens_t, self.policy, self.q_max = lens_t, policy, q_max
        self.mask_id, self.eos_id = mask_id, eos_id
        self.commits = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        self.graph = None

    def body(self):
        st = self.state.state
        done = st[:, DONE] != 0
        s, e = st[:, BLOCK_START] - self.shift, st[:, BLOCK_END]  # shifted: from the row before the block
        zero = torch.zeros_like(s)
        q_start = torch.where(done, zero, s)
        q_len = torch.where(done, zero, e - s)
        kv_len = torch.where(done, zero, self.lens_t)
        logits = self.model.forward_dense(self.x, q_start, q_len, kv_len, self.q_max, self.cache)
        out = self.unmask(logits, self.x, self.state, self.policy, mask_id=self.mask_id,
                          eos_id=self.eos_id, row_start=q_start)
        self.commits.copy_(out.transfer.sum(1))

    def __call__(self):
        if self.x.device.type != "cuda":
            self.body()
            return
        if self.graph is None:
            self.body()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.body()
            self.graph = graph
        else:
            self.graph.replay()


def generate(model, prompt_ids, *, gen_length: int, block_length: Optional[int] = None,
             policy: Optional[Policy] = None, cache: str = "none", temperature: Optional[float] = None,
             seed=0, mask_id: Optional[int] = None, eos_id: Optional[int] = None,
             pad_id: Optional[int] = None, attention_mask=None, pass_attention_mask: bool = False,
             cuda_graph: bool = False, progress: bool = False, timing: bool = False,
             max_steps: Optional[int] = None, backend: str = "auto") -> GenerateOutput:
    """Decode `gen_length` tokens after each prompt with `policy` (docs/decoder.md).

    Args:
        model: a `dllm_kernels.models.LLaDA`, `Dream` or `BlockDiffusion` (or any object with their
            `forward_span` / `new_cache` / `forward_dense`), or a callable `model(x) -> logits [B, L, V]`.
        prompt_ids: list of token sequences, or a [B, P] tensor (with `attention_mask` for padding).
        gen_length: tokens to generate per sequence.
        block_length, temperature: override the policy's fields when given. A block-diffusion
            model decodes blocks of its own `block_size` (block_length must be None or equal it).
        policy: `dllm_kernels.Policy` (default: `Policy()`, LLaDA's top-k with one token per step).
        cache: "none", "prefix" or "dual" (the last two need LLaDA or Dream); "none" or "block" for
            a block-diffusion model.
        seed: Philox seed, an int (every sequence the same seed: a sequence's noise never depends on
            its batch slot) or one per sequence.
        mask_id, eos_id: default to the model config's `mask_token_id` / `eos_token_id`.
        pad_id: token after a sequence's end in the layout (default eos_id); never read.
        pass_attention_mask: callables only: call `model(x, attention_mask=m)` with m [B, L] (1 for
            the positions of each sequence), for batches of different lengths. The first step checks
            once that the most padded sequence gets the logits it gets alone, and raises if not (a
            model that ignores the mask). Without it, a ragged batch of a callable is decoded with
            one unpadded forward per prompt length (each counted in `forward_calls`).
        cuda_graph: replay dual-cache block steps from a CUDA graph (steps where no sequence opens a
            block; not with EoTP); on CPU the same fixed-shape step runs eagerly.
        progress: a progress bar (tqdm if installed, else a line every 10%).
        timing: measure the time inside forwards and of whole steps (CUDA events on a GPU).
        max_steps: safety limit on steps (default 2 * gen_length + 8); `finished` says if it was hit.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"generate: cache must be one of {CACHE_MODES}, got {cache!r}")
    if not (isinstance(gen_length, int) and gen_length >= 1):
        raise ValueError(f"generate: gen_length must be an int >= 1, got {gen_length!r}")
    policy = policy or Policy()
    if not isinstance(policy, Policy):
        raise TypeError(f"generate: policy must be a dllm_kernels.Policy, got {type(policy).__name__}")
    overrides = {k: v for k, v in (("block_length", block_length), ("temperature", temperature)) if v is not None}
    if overrides:
        policy = dataclasses.replace(policy, **overrides)
    native = hasattr(model, "forward_span")
    config = getattr(model, "config", None)
    mask_id = getattr(config, "mask_token_id", None) if mask_id is None else mask_id
    eos_id = getattr(config, "eos_token_id", None) if eos_id is None else eos_id
    if mask_id is None or eos_id is None:
        raise ValueError("generate: mask_id and eos_id are required for this model")
    if not native and cache != "none":
        raise ValueError(f"generate: cache={cache!r} needs a model with a KV cache (dllm_kernels.models); "
                         "a plain callable runs with cache='none'")
    shift = int(bool(getattr(model, "shift", False))) if native else int(policy.shift)
    if native and bool(policy.shift) != bool(shift):
        raise ValueError(f"generate: {type(model).__name__}'s logits are {'' if shift else 'not '}shifted "
                         f"(row p predicts position p{' + 1' if shift else ''}): pass Policy(shift={bool(shift)})")
    block_model = native and getattr(model, "attn_mode", "dual") == "block_causal"
    if block_model:
        bs = int(model.block_size)
        if block_length is not None and block_length != bs:
            raise ValueError(f"generate: block_length={block_length} differs from the model's block size {bs} "
                             "(a block-diffusion model decodes its own blocks)")
        if policy.adaptive_block:
            raise ValueError("generate: adaptive_block moves block ends; a block-diffusion model's blocks are fixed")
        if cache not in ("none", "block"):
            raise ValueError(f"generate: a block-diffusion model runs with cache='none' or 'block', got {cache!r}")
        policy = dataclasses.replace(policy, block_length=bs)
    elif cache == "block":
        raise ValueError("generate: cache='block' needs a block-diffusion model (dllm_kernels.models.BlockDiffusion)")
    pad_id = eos_id if pad_id is None else pad_id
    # A tensor-parallel model's logits are its vocabulary shard: it names the op that unmasks them.
    unmask = (getattr(model, "unmask_op", None) if native else None) or fused_unmask

    prompts = prepare_prompts(prompt_ids, attention_mask)
    P = [int(p.numel()) for p in prompts]
    if min(P) < (1 if policy.shift else 0):
        raise ValueError("generate: shifted-logits models need prompts of at least one token")
    B = len(prompts)
    lens = [p + gen_length for p in P]
    L = max(lens)
    dev = model.device if native else torch.device(getattr(model, "device", "cpu"))
    x = torch.full((B, L), pad_id, dtype=torch.int64)
    for b, p in enumerate(prompts):
        x[b, :P[b]] = p
        x[b, P[b]:lens[b]] = mask_id
    x = x.to(dev)
    # A block-diffusion model's blocks are aligned to position 0: its generation region starts at
    # the block holding the prompt's end (the prompt tokens there are simply not masked).
    gen_start = [p // bs * bs for p in P] if block_model else P
    cached_end = [0] * B  # block cache: positions whose K/V are final
    state = DecodeState.new(B, L, gen_start=gen_start, gen_end=lens, seed=seed, device=dev)
    kv = model.new_cache(B, L) if native and cache != "none" else None
    lens_t = torch.tensor(lens, dtype=torch.int64, device=dev)
    dense_step = None
    if cuda_graph and native and cache == "dual" and not policy.eotp:
        q_max = policy.block_length
        if policy.adaptive_block:
            q_max = max(q_max, int(math.floor(np.float32(policy.block_window_fraction) * np.float32(gen_length))))
        dense_step = _DenseDualStep(model, x, state, kv, lens_t, policy, min(q_max, gen_length) + shift, mask_id,
                                    eos_id, shift, unmask)
    attn_mask = None
    if not native and pass_attention_mask:
        attn_mask = (torch.arange(L)[None, :] < torch.tensor(lens)[:, None]).long().to(dev)
    # A plain callable with a ragged batch: with a mask, check once that the model honours it (on
    # the most padded sequence); without one, padding would be attended, so each group of equal
    # lengths gets its own unpadded forward.
    groups, mask_check_row = None, None
    if not native and len(set(lens)) > 1:
        if pass_attention_mask:
            mask_check_row = lens.index(min(lens))
        else:
            groups = [(torch.tensor([b for b in range(B) if lens[b] == n], device=dev), n)
                      for n in sorted(set(lens))]

    max_steps = max_steps or 2 * gen_length + 8
    nfe, calls, steps, graph_steps, reads = [0] * B, 0, 0, 0, 0
    fixed = _fixed_schedule(policy)
    unread, planned = 0, None  # steps left that reuse `planned` rows instead of reading the state
    commits, active_log = [], []
    cuda = dev.type == "cuda"
    events, cpu_times = [], []
    bar = _Progress(progress, B * gen_length)
    if cuda:
        torch.cuda.synchronize(dev)
    t_start = time.perf_counter()
    finished = False
    with torch.no_grad():
        while True:
            if timing:
                t0 = time.perf_counter()
                ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if cuda else None
                if cuda:
                    ev[0].record()
            if unread > 0:  # inside a top-k block: its ends were counted at its opening
                unread -= 1
                st = planned
            else:
                st = state.state.tolist()  # the host read: once per step, or once per top-k block
                reads += 1
                if fixed:
                    unread, planned = _plan_block(st, policy, P)
            todo = [b for b in range(B) if not st[b][DONE]]
            bar.update(sum(gen_length if row[DONE] else max(row[BLOCK_START] - P[b], 0) for b, row in enumerate(st)))
            if not todo:
                finished = True
                break
            if steps >= max_steps:
                break
            steps += 1
            calls += 1
            for b in todo:
                nfe[b] += 1
            active_log.append(todo)
            q_start, q_len, kv_len, row_start, n_rows, opening = _spans(st, lens, policy, cache, shift, cached_end)
            if dense_step is not None and not any(opening):
                if timing and cuda:
                    ev[1].record()
                tf = time.perf_counter()
                dense_step()
                graph_steps += 1
                commits.append(dense_step.commits.clone())
                if timing:  # the forward is inside the graph: count the whole replay as forward
                    if cuda:
                        ev[2].record()
                        events.append(ev)
                    else:
                        now = time.perf_counter()
                        cpu_times.append((now - tf, now - t0))
                continue
            if timing and cuda:
                ev[1].record()
            tf = time.perf_counter()
            if native:
                logits = model.forward_span(x, q_start=q_start, q_len=q_len, kv_len=kv_len,
                                            row_start=row_start, n_rows=max(n_rows), cache=kv)
                if cache == "block":  # the blocks closed before this step are now cached for good
                    for b in todo:
                        if opening[b]:
                            cached_end[b] = st[b][BLOCK_END]
                rs = torch.tensor(row_start, dtype=torch.int64).to(dev, non_blocking=True)
                if policy.eotp:  # EoTP reads every masked row it is given: rows past a sequence's
                    r_max = logits.shape[1]  # own need (another sequence set R) must read as invalid
                    for b in todo:
                        if n_rows[b] < r_max:
                            logits[b, n_rows[b]:].fill_(float("nan"))
            else:
                logits, rs = _callable_logits(model, x, attn_mask, groups), None
                calls += len(groups) - 1 if groups else 0
                if mask_check_row is not None:
                    _check_mask_honoured(model, x, logits, mask_check_row, lens[mask_check_row])
                    calls += 1
                    mask_check_row = None
            if timing:
                if cuda:
                    ev[2].record()
                else:
                    t_fwd = time.perf_counter() - tf
            res = unmask(logits, x, state, policy, mask_id=mask_id, eos_id=eos_id, row_start=rs, backend=backend)
            commits.append(res.transfer.sum(1))
            del logits, res
            if timing:
                if cuda:
                    events.append(ev + [torch.cuda.Event(enable_timing=True)])
                    events[-1][3].record()
                else:
                    cpu_times.append((t_fwd, time.perf_counter() - t0))
    if cuda:
        torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t_start
    bar.close()

    per_step = torch.stack(commits).cpu().tolist() if commits else []
    tokens_per_step = [[] for _ in range(B)]
    for step_commits, todo in zip(per_step, active_log):
        for b in todo:
            tokens_per_step[b].append(int(step_commits[b]))
    tokens = torch.stack([x[b, P[b]:P[b] + gen_length] for b in range(B)])
    generated = ((tokens != eos_id) & (tokens != mask_id)).sum(1).tolist()
    fwd_s = step_s = None
    step_times = []
    if timing:
        if cuda:
            for ev in events:
                if len(ev) == 3:  # graph step: ev1 -> ev2 is the replay
                    step_times.append((ev[1].elapsed_time(ev[2]) / 1e3, ev[0].elapsed_time(ev[2]) / 1e3))
                else:
                    step_times.append((ev[1].elapsed_time(ev[2]) / 1e3, ev[0].elapsed_time(ev[3]) / 1e3))
        else:
            step_times = cpu_times
        fwd_s = sum(t[0] for t in step_times)
        step_s = sum(t[1] for t in step_times)
    return GenerateOutput(
        sequences=x, tokens=tokens, prompt_lengths=P, nfe=nfe, forward_calls=calls, steps=steps,
        tokens_per_step=tokens_per_step, generated_tokens=generated, wall_time_s=wall,
        tokens_per_second=sum(generated) / wall if wall > 0 else float("inf"), finished=finished,
        graph_steps=graph_steps, state_reads=reads, forward_time_s=fwd_s, step_time_s=step_s,
        step_times=step_times)
