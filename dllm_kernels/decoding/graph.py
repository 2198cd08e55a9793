"""The dual-cache block step as one fixed-shape body with no host read, for CUDA-graph replay."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..policy import Policy
from ..state import BLOCK_END, BLOCK_START, DONE
from ..fused_unmask import fused_unmask

__all__ = ["DenseDualStep", "dense_rows"]


def dense_rows(policy: Policy, gen_length: int, shift: int) -> int:
    """Query rows per sequence of a block step: the block (or the AdaBlock window), plus the row
    before it for a shifted model."""
    q_max = policy.block_length
    if policy.adaptive_block:
        q_max = max(q_max, int(math.floor(np.float32(policy.block_window_fraction) * np.float32(gen_length))))
    return min(q_max, gen_length) + shift


class DenseDualStep:
    """A dual-cache block step for the whole batch with fixed shapes and no host read: the body a
    CUDA graph captures. On CUDA the first call runs it eagerly (the real step; compiles kernels),
    then captures it; later calls replay. On CPU it always runs eagerly (the path tests check).
    `commits` [B]: tokens each sequence committed in the last call."""

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
