"""`fused_unmask`: one unmasking step for a batch, on whichever backend fits the tensors."""
from __future__ import annotations

from typing import Mapping, NamedTuple, Optional

import torch

from .policy import Policy
from .row_stats import logits_or_row_stats
from .select_params import Value
from .state import DecodeState

BACKENDS = ("auto", "native", "triton", "reference")


class UnmaskResult(NamedTuple):
    x0: torch.Tensor            # [B, L] int64: this step's prediction (current token where not read)
    transfer: torch.Tensor      # [B, L] bool: positions written this step
    window_stats: torch.Tensor  # [B, 3] float32: count, mean, variance of conf in the look-ahead window


def fused_unmask(logits: torch.Tensor, x: torch.Tensor, state: DecodeState, policy: Policy, *,
                 mask_id: int, eos_id: int, row_start: Optional[torch.Tensor] = None,
                 gumbel_u: Optional[torch.Tensor] = None, rank_u: Optional[torch.Tensor] = None,
                 params: Optional[Mapping[str, Value]] = None, backend: str = "auto",
                 row_stats: Optional[torch.Tensor] = None, vocab_size: Optional[int] = None) -> UnmaskResult:
    """Commit this step's tokens in place (`x`, `state`) and return the step's outputs.

    logits: [B, R, V] (float32/float16/bfloat16, contiguous along V); row r holds the logits of
    position `row_start[b] + r` (plus one with `policy.shift`, for Dream-style models).
    x: [B, L] int64 tokens, `mask_id` where still masked. `backend`: "auto" (alias "native")
    dispatches on the device (C++ on CPU; CUDA kernel, else Triton, on GPU); "triton" and
    "reference" force those. `params` overrides the policy's numeric fields per request, each a
    number or a [B] tensor (e.g. {"threshold": torch.tensor([0.8, 0.95])}): one batch, several
    policies; tensor values change without a recompile or a new CUDA-graph capture.
    row_stats: [W, B, R, C] partial statistics of W vocabulary slices in order (dllm_kernels.row_stats,
    docs/row_stats.md) in place of the logits, which may then be None; `vocab_size` is the whole
    vocabulary. On CUDA this runs the Triton kernels.
    Semantics: docs/fused_unmask.md. No host synchronisation on CUDA.
    """
    if backend not in BACKENDS:
        raise ValueError(f"fused_unmask: backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(policy, Policy):
        raise TypeError(f"fused_unmask: policy must be a dllm_kernels.Policy, got {type(policy).__name__}")
    if not isinstance(state, DecodeState):
        raise TypeError(f"fused_unmask: state must be a dllm_kernels.DecodeState, got {type(state).__name__}")
    logits = logits_or_row_stats("fused_unmask", logits, row_stats, vocab_size, backend)
    extra = {}
    if row_stats is not None:
        if logits.device.type == "cuda":
            backend = "triton"  # the native CUDA kernel reads logits only
        extra = dict(row_stats=row_stats, vocab_size=int(vocab_size))
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("fused_unmask: logits must be a 3-D tensor [B, R, V]")
    V = int(vocab_size) if row_stats is not None else logits.shape[-1]
    kwargs = policy.op_arguments(logits.device, V, logits.shape[0], params)
    op = torch.ops.dllm.fused_unmask
    if backend == "reference":
        from .reference import fused_unmask_reference as op
    elif backend == "triton":
        from .triton_fused_unmask import fused_unmask_triton as op
    # Every backend takes the op's own signature (csrc/fused_unmask_args.h).
    out = op(logits, x, state.conf, state.state, mask_id, eos_id, row_start=row_start, gumbel_u=gumbel_u,
             rank_u=rank_u, **kwargs, **extra)
    return UnmaskResult(*out)
