"""A plain eager dLLM decoder written from docs/policies.md, the way the public decoders are.

This is the reference `dllm_kernels.generate` is tested against, and the baseline of
`bench/bench_decode.py`. Nothing here is shared with `generate.py` or `models/llada.py`:

* `EagerLLaDA`: the LLaDA equations (docs/llada_checkpoint.md) straight from the checkpoint's tensor names,
  separate q/k/v projections, attention by `torch.cat` of the cached K/V + SDPA, as LLaDA /
  Fast-dLLM's modelling code does. It returns the logits of every query position.
* `eager_generate`: the LLaDA / Fast-dLLM decode loop. No cache: a full forward per step. Prefix
  cache (Fast-dLLM `generate_with_prefix_cache`): at a block's first step a full forward whose K/V
  of the prefix `[0, block_start)` are kept; the block's other steps run `x[:, block_start:]`
  against that prefix. Dual cache (Fast-dLLM `generate_with_dual_cache`): at a block's first step a
  full forward whose K/V of every position are kept; the other steps run the block only,
  replacing its slots (`replace_position`). The block's first step commits tokens with the logits of
  the refreshing forward. The policy engine (which positions to commit) is the float64 reference
  op `fused_unmask_reference` (the executable form of docs/policies.md) by default, called with exactly
  the logits the forward produced (`row_start` = first query position).

Batches: prompts of different lengths are laid out as in `generate` (sequence b occupies
`[0, P_b + gen_length)`, padding after it). Without cache the batch runs as one forward with a key
padding mask; with a cache each sequence runs its own forwards (a sequence's cache refresh depends
on its own blocks only).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .policy import Policy
from .state import BLOCK_END, BLOCK_REMAINING, BLOCK_START, DONE, DecodeState

__all__ = ["EagerLLaDA", "EagerResult", "eager_generate"]


class EagerLLaDA:
    """LLaDA forward in plain PyTorch from a LLaDA-format state dict (raw tensor names)."""

    def __init__(self, config, state_dict: dict):
        self.config = config
        self.sd = state_dict
        self.p = "model.transformer."
        c = config
        self.head_dim = c.d_model // c.n_heads

    def _w(self, name):
        return self.sd[self.p + name]

    @property
    def vocab_size(self):
        return self._w("wte.weight").shape[0]

    def _norm(self, x, w):
        og = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        return w * x.to(og)

    def _rope(self, t, positions):
        """t [B, H, n, D] at absolute positions [n]."""
        d = t.shape[-1]
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, d, 2, device=t.device, dtype=torch.float) / d))
        freqs = torch.einsum("i,j->ij", positions.to(torch.float), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        tf = t.float()
        x1, x2 = tf.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
        return (tf * cos + rotated * sin).type_as(t)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, *, start: int = 0, past=None, replace: Optional[tuple] = None,
                 key_padding: Optional[torch.Tensor] = None, use_cache: bool = False):
        """Logits [B, n, V] of the tokens x [B, n] at positions [start, start + n).

        past: per layer (K, V) [B, Hkv, Lp, D] (keys after RoPE). Without `replace` the new K/V
        are appended (`cat(past, new)`: prefix cache); with `replace=(s, e)` they replace slots
        [s, e) (`cat(past[:s], new, past[e:])`: dual cache). key_padding [B, Lk] bool: True for keys
        that exist. Returns (logits, new K/V per layer over the whole key range) when use_cache.
        """
        c = self.config
        B, n = x.shape
        hq, hkv, hd = c.n_heads, c.n_kv_heads, self.head_dim
        positions = torch.arange(start, start + n, device=x.device)
        h = F.embedding(x, self._w("wte.weight"))
        presents = []
        for i in range(c.n_layers):
            b = f"blocks.{i}."
            a = self._norm(h, self._w(b + "attn_norm.weight"))
            q = F.linear(a, self._w(b + "q_proj.weight")).view(B, n, hq, hd).transpose(1, 2)
            k = F.linear(a, self._w(b + "k_proj.weight")).view(B, n, hkv, hd).transpose(1, 2)
            v = F.linear(a, self._w(b + "v_proj.weight")).view(B, n, hkv, hd).transpose(1, 2)
            q, k = self._rope(q, positions), self._rope(k, positions)
            if past is not None:
                pk, pv = past[i]
                if replace is None:
                    k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
                else:
                    s, e = replace
                    k = torch.cat([pk[:, :, :s], k, pk[:, :, e:]], dim=2)
                    v = torch.cat([pv[:, :, :s], v, pv[:, :, e:]], dim=2)
            if use_cache:
                presents.append((k, v))
            if hkv != hq:
                k = k.repeat_interleave(hq // hkv, dim=1)
                v = v.repeat_interleave(hq // hkv, dim=1)
            mask = None if key_padding is None else key_padding[:, None, None, :]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            h = h + F.linear(o.transpose(1, 2).reshape(B, n, hq * hd), self._w(b + "attn_out.weight"))
            f = self._norm(h, self._w(b + "ff_norm.weight"))
            f = F.silu(F.linear(f, self._w(b + "ff_proj.weight"))) * F.linear(f, self._w(b + "up_proj.weight"))
            h = h + F.linear(f, self._w(b + "ff_out.weight"))
        h = self._norm(h, self._w("ln_f.weight"))
        head = self._w("wte.weight") if c.weight_tying else self._w("ff_out.weight")
        logits = F.linear(h, head)
        return (logits, presents) if use_cache else logits


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


def eager_generate(model: EagerLLaDA, prompts: Sequence, *, gen_length: int, policy: Policy,
                   cache: str = "none", mask_id: int, eos_id: int, pad_id: Optional[int] = None,
                   seed: int = 0, engine: str = "reference", max_steps: Optional[int] = None) -> EagerResult:
    """Decode `prompts` (a list of token sequences) with `policy`; see the module docstring.

    engine: "reference" (float64 `fused_unmask_reference`) or "fused" (the native op), the same
    decisions (docs/policies.md §1 excepts near-ties only).
    """
    from .unmask import fused_unmask

    if cache not in ("none", "prefix", "dual"):
        raise ValueError(f"eager_generate: cache must be 'none', 'prefix' or 'dual', got {cache!r}")
    backend = {"reference": "reference", "fused": "auto"}[engine]
    dev = model.sd[model.p + "wte.weight"].device
    pad_id = eos_id if pad_id is None else pad_id
    x, P = _layout(prompts, gen_length, mask_id, pad_id, dev)
    B, L = x.shape
    lens = [p + gen_length for p in P]
    state = DecodeState.new(B, L, gen_start=P, gen_end=lens, seed=seed, device=dev)
    nfe, calls, steps, fwd_time = [0] * B, 0, 0, 0.0
    pasts = [None] * B
    max_steps = max_steps or 2 * gen_length + 8
    key_padding = torch.arange(L, device=dev)[None, :] < torch.tensor(lens, device=dev)[:, None]
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
            logits = model(x, key_padding=None if min(lens) == L else key_padding)
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
            t0 = time.perf_counter()
            if st[b][BLOCK_REMAINING] == 0:  # a block opens: refresh the cache, commit with these logits
                logits, present = model(xb[:, :Lb], use_cache=True)
                s_next = st[b][BLOCK_END]
                if cache == "prefix":  # Fast-dLLM keeps the prefix before the new block
                    present = [(k[:, :, :s_next], v[:, :, :s_next]) for k, v in present]
                pasts[b] = (s_next, present)
                row_start = 0
            else:
                s = st[b][BLOCK_START]
                e = st[b][BLOCK_END]
                kept_start, past = pasts[b]
                assert kept_start == s
                if cache == "prefix":
                    logits = model(xb[:, s:Lb], start=s, past=past)
                else:
                    logits = model(xb[:, s:e], start=s, past=past, replace=(s, e))
                row_start = s
            fwd_time += time.perf_counter() - t0
            calls += 1
            nfe[b] += 1
            fused_unmask(logits, xb, sb, policy, mask_id=mask_id, eos_id=eos_id, backend=backend,
                         row_start=torch.tensor([row_start], device=dev))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t_start
    tokens = torch.stack([x[b, P[b]:P[b] + gen_length] for b in range(B)])
    return EagerResult(sequences=x, tokens=tokens, prompt_lengths=P, nfe=nfe, forward_calls=calls,
                       steps=steps, wall_time_s=wall, finished=finished, forward_time_s=fwd_time)
