"""Tensor parallelism for the model classes over a torch.distributed group (docs/vocab_parallel.md).

Megatron's layout: q/k/v and the MLP's gate/up projections are column-parallel (each rank holds
its heads and its slice of the hidden units), attn_out and the MLP's down projection are
row-parallel (partial products summed by an all_reduce), the embedding and the LM head are
vocabulary-parallel (each rank a contiguous shard of the ids; the LM head yields that shard of
every logits row, which `dllm_kernels.vocab_parallel` unmasks without gathering it).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..vocab_parallel import vocab_shard

__all__ = ["TensorParallel"]


class TensorParallel:
    """This rank's place in `group` and the slices it holds of each dimension."""

    def __init__(self, group, *, who: str):
        if not dist.is_initialized():
            raise RuntimeError(f"{who}: tp_group needs torch.distributed.init_process_group first")
        self.group, self.who = group, who
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def split(self, n: int, what: str) -> Tuple[int, int]:
        """(start, count) of an even split of `n` (heads: they cannot be cut)."""
        if n % self.world:
            raise ValueError(f"{self.who}: {what} {n} is not divisible by the tensor-parallel world size {self.world}")
        per = n // self.world
        return self.rank * per, per

    def shard(self, n: int) -> Tuple[int, int]:
        """(start, count) of this rank's contiguous shard of `n` (uneven allowed)."""
        return vocab_shard(n, self.world, self.rank)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of every rank's partial product, added in float32 and rounded once (as one matmul would)."""
        acc = t.float()
        dist.all_reduce(acc, group=self.group)
        return acc.to(t.dtype)

    def embed(self, tokens: torch.Tensor, wte_shard: torch.Tensor, vocab_start: int) -> torch.Tensor:
        """Vocabulary-parallel embedding: each rank looks up the ids of its shard, zeros elsewhere, summed."""
        local = tokens - vocab_start
        held = (local >= 0) & (local < wte_shard.shape[0])
        h = F.embedding(local.clamp(0, wte_shard.shape[0] - 1), wte_shard) * held[:, None].to(wte_shard.dtype)
        dist.all_reduce(h, group=self.group)  # one nonzero term per row: exact in any dtype
        return h

    def slices(self, *, n_heads: int, n_kv_heads: int, head_dim: int, hidden: int, vocab: int,
               names: Dict[str, str]) -> Dict[str, Tuple[int, int, int]]:
        """name -> (dim, start, stop) of this rank's slice of each parallel tensor. `names` maps
        the roles q, k, v, o, gate, up, down, wte, lm_head (a layer's role with '{i}') to names."""
        q0, nq = self.split(n_heads, "n_heads")
        kv0, nkv = self.split(n_kv_heads, "n_kv_heads")
        h0, nh = self.shard(hidden)
        v0, nv = self.shard(vocab)
        rows = dict(q=(q0 * head_dim, (q0 + nq) * head_dim), k=(kv0 * head_dim, (kv0 + nkv) * head_dim),
                    gate=(h0, h0 + nh), wte=(v0, v0 + nv), lm_head=(v0, v0 + nv))
        rows["v"], rows["up"] = rows["k"], rows["gate"]
        cols = dict(o=rows["q"], down=rows["gate"])
        out = {}
        for role, name in names.items():
            if role in rows:
                out[name] = (0,) + rows[role]
            elif role in cols:
                out[name] = (1,) + cols[role]
        return out
