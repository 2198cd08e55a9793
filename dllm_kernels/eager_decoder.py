"""The public decoders' way of decoding, as the baseline `dllm_kernels.generate` is tested and
benchmarked against (`bench/bench_decode.py`).

The model is `dllm_kernels.models.LLaDA` (the one LLaDA computation); what is eager here is how the
public LLaDA / Fast-dLLM loops select, written from docs/policies.md and sharing nothing with
`generate.py`:

* every forward returns the logits of every query position (no row selection), and the policy
  engine is the float64 reference op `fused_unmask_reference` (the executable form of
  docs/policies.md) by default, called with exactly those logits (`row_start` = first query position);
* the host reads the state every step, and with a cache each sequence runs its own forwards (a
  sequence's cache refresh depends on its own blocks only);
* no cache: a full forward per step (the batch as one forward, each sequence over its own length).
  Prefix cache (Fast-dLLM `generate_with_prefix_cache`): at a block's first step a full forward
  fills the cache; the block's other steps query `[block_start, end of sequence)` against the
  cached prefix. Dual cache (Fast-dLLM `generate_with_dual_cache`): the same refresh, then the block
  only, its slots replaced (`replace_position`). The block's first step commits tokens with the
  logits of the refreshing forward.

Batches: prompts of different lengths are laid out as in `generate` (sequence b occupies
`[0, P_b + gen_length)`, padding after it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from .models.llada import LLaDA
from .policy import Policy
from .state import BLOCK_END, BLOCK_REMAINING, BLOCK_START, DONE, DecodeState

__all__ = ["EagerLLaDA", "EagerResult", "eager_generate"]


class EagerLLaDA:
    """`LLaDA` behind the public modelling code's interface: a plain callable (no spans, no row
    selection, no cache) whose `model(x, key_padding=m)` gives the logits of every position,
    sequence b attending to the keys where m[b] is True (a prefix). `eager_generate` runs the
    wrapped `model` for its cached forwards."""

    def __init__(self, config, state_dict: dict):
        self.model = LLaDA(config, state_dict)
        self.config = config

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def __call__(self, x: torch.Tensor, *, key_padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        lengths = None
        if key_padding is not None:
            n = key_padding.sum(1)
            if not torch.equal(key_padding.bool(), torch.arange(x.shape[1], device=n.device)[None, :] < n[:, None]):
                raise ValueError("EagerLLaDA: key_padding must mark a prefix of each sequence")
            lengths = n.tolist()
        return self.model(x, lengths)


@dataclass
class EagerResult:
    sequences: torch.Tensor          # [B, Lmax] the whole layout (prompt, generation, padding)
    tokens: torch.Tensor             # [B, gen_length] the generation region of each sequence
    prompt_lengths: List[int]
    nfe: List[int]                   # forwards each sequence took part in
    forward_calls: int               # model calls
    steps: int                       # decode steps of the batch
    wall_time_s: float
    finished: bool
    forward_time_s: float = 0.0
    peak_memory_bytes: Optional[int] = None
    extra: dict = field(default_factory=dict)


def _layout(prompts, gen_length, mask_id, pad_id, device):
    lens = [len(p) for p in prompts]
    L = max(lens) + gen_length
    x = torch.full((len(prompts), L), pad_id, dtype=torch.int64)
    for b, p in enumerate(prompts):
        x[b, :lens[b]] = torch.as_tensor(p, dtype=torch.int64)
        x[b, lens[b]:lens[b] + gen_length] = mask_id
    return x.to(device), lens


def eager_generate(model, prompts: Sequence, *, gen_length: int, policy: Policy,
                   cache: str = "none", mask_id: int, eos_id: int, pad_id: Optional[int] = None,
                   seed: int = 0, engine: str = "reference", max_steps: Optional[int] = None) -> EagerResult:
    """Decode `prompts` (a list of token sequences) with `policy` on `model` (an `EagerLLaDA` or a
    `LLaDA`); see the module docstring.

    engine: "reference" (float64 `fused_unmask_reference`) or "fused" (the native op), the same
    decisions (docs/policies.md §1 excepts near-ties only).
    """
    from .fused_unmask import fused_unmask

    if cache not in ("none", "prefix", "dual"):
        raise ValueError(f"eager_generate: cache must be 'none', 'prefix' or 'dual', got {cache!r}")
    model = model.model if isinstance(model, EagerLLaDA) else model
    if model.shift or model.attn_mode != "dual":
        raise ValueError("eager_generate: needs an unshifted bidirectional model (LLaDA)")
    backend = {"reference": "reference", "fused": "auto"}[engine]
    dev = model.device
    pad_id = eos_id if pad_id is None else pad_id
    x, P = _layout(prompts, gen_length, mask_id, pad_id, dev)
    B, L = x.shape
    lens = [p + gen_length for p in P]
    state = DecodeState.new(B, L, gen_start=P, gen_end=lens, seed=seed, device=dev)
    nfe, calls, steps, fwd_time = [0] * B, 0, 0, 0.0
    caches = [model.new_cache(1, L) for _ in range(B)] if cache != "none" else None
    max_steps = max_steps or 2 * gen_length + 8
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_start = time.perf_counter()
    finished = False
    while steps < max_steps:
        st = state.state.tolist()
        todo = [b for b in range(B) if not st[b][DONE]]
        if not todo:
            finished = True
            break
        steps += 1
        if cache == "none":
            t0 = time.perf_counter()
            logits = model(x, lengths=lens)
            fwd_time += time.perf_counter() - t0
            calls += 1
            for b in todo:
                nfe[b] += 1
            fused_unmask(logits, x, state, policy, mask_id=mask_id, eos_id=eos_id, backend=backend)
            continue
        for b in todo:
            Lb = lens[b]
            xb = x[b:b + 1]
            sb = DecodeState(state.state[b:b + 1], state.conf[b:b + 1])
            if st[b][BLOCK_REMAINING] == 0:  # a block opens: refresh the cache, commit with these logits
                start, end = 0, Lb
            else:  # prefix: queries [block start, end of sequence); dual: the block only
                start, end = st[b][BLOCK_START], Lb if cache == "prefix" else st[b][BLOCK_END]
            t0 = time.perf_counter()
            logits = model.forward_span(xb, q_start=[start], q_len=[end - start], kv_len=[Lb],
                                        row_start=[start], n_rows=end - start, cache=caches[b])
            fwd_time += time.perf_counter() - t0
            calls += 1
            nfe[b] += 1
            fused_unmask(logits, xb, sb, policy, mask_id=mask_id, eos_id=eos_id, backend=backend,
                         row_start=torch.tensor([start], device=dev))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t_start
    tokens = torch.stack([x[b, P[b]:P[b] + gen_length] for b in range(B)])
    return EagerResult(sequences=x, tokens=tokens, prompt_lengths=P, nfe=nfe, forward_calls=calls,
                       steps=steps, wall_time_s=wall, finished=finished, forward_time_s=fwd_time)
