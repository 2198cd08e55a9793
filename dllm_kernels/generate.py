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

The pieces (state reads, cache modes, forwards, the CUDA-graph step, timing) are in
`dllm_kernels/decoding/`.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from .decoding.caches import MODES, cache_mode, step_spans
from .decoding.forwards import CallableForward, SpanForward, fused_head
from .from_hidden import fused_unmask_from_hidden
from .decoding.graph import DenseDualStep, dense_rows
from .decoding.plan import StateReader
from .decoding.timing import Progress, StepTimer
from .policy import Policy
from .state import BLOCK_START, DONE, DecodeState
from .fused_unmask import fused_unmask

__all__ = ["CACHE_MODES", "GenerateOutput", "generate", "prepare_prompts"]

CACHE_MODES = tuple(MODES)


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


def _checked_policy(model, policy, cache, gen_length, block_length, temperature, native):
    """(policy generate runs: overrides applied, a block-diffusion model's own block size; the
    model's shift; whether it is a block-diffusion model). Every argument error is raised here."""
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
    return policy, shift, block_model


def _layout(prompts, gen_length: int, mask_id: int, pad_id: int, device):
    """x [B, max P + gen_length]: each prompt, then gen_length masks, then padding; and each
    sequence's length."""
    P = [int(p.numel()) for p in prompts]
    lens = [p + gen_length for p in P]
    x = torch.full((len(prompts), max(lens)), pad_id, dtype=torch.int64)
    for b, p in enumerate(prompts):
        x[b, :P[b]] = p
        x[b, P[b]:lens[b]] = mask_id
    return x.to(device), P, lens


def generate(model, prompt_ids, *, gen_length: int, block_length: Optional[int] = None,
             policy: Optional[Policy] = None, cache: str = "none", temperature: Optional[float] = None,
             seed=0, mask_id: Optional[int] = None, eos_id: Optional[int] = None,
             pad_id: Optional[int] = None, attention_mask=None, pass_attention_mask: bool = False,
             cuda_graph: bool = False, progress: bool = False, timing: bool = False,
             max_steps: Optional[int] = None, backend: str = "auto",
             fused_lm_head: Optional[bool] = None) -> GenerateOutput:
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
        fused_lm_head: a model class gives the final hidden states and the step unmasks them with the
            LM head fused into the statistics pass (`fused_unmask_from_hidden`): the logits
            [B, rows, V] are never formed; the tokens are those of the unfused step. None (default):
            on for CUDA; off on CPU (faster there only for 16-bit heads with enough rows,
            docs/lm_head_row_stats.md), for a tensor-parallel model and for plain callables.
            True on a model without `forward_span(hidden=True)` and `lm_head` raises. CUDA-graph
            steps keep the logits.
    """
    native = hasattr(model, "forward_span")
    policy, shift, block_model = _checked_policy(model, policy, cache, gen_length, block_length, temperature, native)
    config = getattr(model, "config", None)
    mask_id = getattr(config, "mask_token_id", None) if mask_id is None else mask_id
    eos_id = getattr(config, "eos_token_id", None) if eos_id is None else eos_id
    if mask_id is None or eos_id is None:
        raise ValueError("generate: mask_id and eos_id are required for this model")
    prompts = prepare_prompts(prompt_ids, attention_mask)
    if min(p.numel() for p in prompts) < (1 if policy.shift else 0):
        raise ValueError("generate: shifted-logits models need prompts of at least one token")
    dev = model.device if native else torch.device(getattr(model, "device", "cpu"))
    x, P, lens = _layout(prompts, gen_length, mask_id, eos_id if pad_id is None else pad_id, dev)
    B, L = x.shape
    # A block-diffusion model's blocks are aligned to position 0: its generation region starts at
    # the block holding the prompt's end (the prompt tokens there are simply not masked).
    gen_start = [p // policy.block_length * policy.block_length for p in P] if block_model else P
    state = DecodeState.new(B, L, gen_start=gen_start, gen_end=lens, seed=seed, device=dev)
    mode = cache_mode(cache, B)
    fuse_head = fused_head(model, fused_lm_head, native, dev)
    forward = SpanForward(model, mode, B, L, cache != "none", policy.eotp, hidden=fuse_head) if native else \
        CallableForward(model, lens, pass_attention_mask, dev)
    # A tensor-parallel model's logits are its vocabulary shard: it names the op that unmasks them.
    unmask = (getattr(model, "unmask_op", None) if native else None) or fused_unmask
    unmask_hidden = (getattr(model, "unmask_from_hidden_op", None) if native else None) or fused_unmask_from_hidden
    graph_step = None
    if cuda_graph and native and cache == "dual" and not policy.eotp:
        graph_step = DenseDualStep(model, x, state, forward.kv, torch.tensor(lens, dtype=torch.int64, device=dev),
                                   policy, dense_rows(policy, gen_length, shift), mask_id, eos_id, shift, unmask)
    reader, timer = StateReader(state, policy, P), StepTimer(timing, dev.type == "cuda")
    bar = Progress(progress, B * gen_length)
    max_steps = max_steps or 2 * gen_length + 8
    nfe, calls, steps, graph_steps, commits, active_log = [0] * B, 0, 0, 0, [], []
    finished = False
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t_start = time.perf_counter()
    with torch.no_grad():
        while True:
            timer.step_start()
            st = reader.read()
            todo = [b for b in range(B) if not st[b][DONE]]
            bar.update(sum(gen_length if row[DONE] else max(row[BLOCK_START] - P[b], 0) for b, row in enumerate(st)))
            if not todo or steps >= max_steps:
                finished = not todo
                break
            steps += 1
            for b in todo:
                nfe[b] += 1
            active_log.append(todo)
            spans = step_spans(st, lens, policy, mode, shift)
            timer.forward_start()
            if graph_step is not None and not any(spans.opening):  # a block step: replay
                graph_step()
                graph_steps, calls = graph_steps + 1, calls + 1
                commits.append(graph_step.commits.clone())
                timer.graph_step_end()
                continue
            logits, row_start, n_calls = forward(x, st, spans, todo)
            calls += n_calls
            timer.forward_end()
            if fuse_head:  # `logits` holds the LM head's input here
                res = unmask_hidden(logits, model.lm_head, x, state, policy, mask_id=mask_id, eos_id=eos_id,
                                    row_start=row_start, backend=backend)
            else:
                res = unmask(logits, x, state, policy, mask_id=mask_id, eos_id=eos_id, row_start=row_start,
                             backend=backend)
            commits.append(res.transfer.sum(1))
            del logits, res
            timer.step_end()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t_start
    bar.close()
    return _output(x, P, gen_length, mask_id, eos_id, commits, active_log, timer if timing else None, wall,
                   nfe=nfe, forward_calls=calls, steps=steps, finished=finished, graph_steps=graph_steps,
                   state_reads=reader.reads)


def _output(x, P, gen_length, mask_id, eos_id, commits, active_log, timer, wall, **stats) -> GenerateOutput:
    """Tokens, per-sequence commits per step (one host read of all steps' counts) and times."""
    B = x.shape[0]
    per_step = torch.stack(commits).cpu().tolist() if commits else []
    tokens_per_step = [[] for _ in range(B)]
    for step_commits, todo in zip(per_step, active_log):
        for b in todo:
            tokens_per_step[b].append(int(step_commits[b]))
    tokens = torch.stack([x[b, P[b]:P[b] + gen_length] for b in range(B)])
    generated = ((tokens != eos_id) & (tokens != mask_id)).sum(1).tolist()
    step_times = timer.step_times() if timer is not None else []
    fwd_s = sum(t[0] for t in step_times) if timer is not None else None
    step_s = sum(t[1] for t in step_times) if timer is not None else None
    return GenerateOutput(
        sequences=x, tokens=tokens, prompt_lengths=P, tokens_per_step=tokens_per_step, generated_tokens=generated,
        wall_time_s=wall, tokens_per_second=sum(generated) / wall if wall > 0 else float("inf"),
        forward_time_s=fwd_s, step_time_s=step_s, step_times=step_times, **stats)
