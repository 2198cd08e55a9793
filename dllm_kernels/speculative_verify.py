"""`speculative_verify`: accept or reject a batch of draft tokens against the target model's logits.

The typed entry point of `torch.ops.dllm.speculative_verify` (semantics: docs/speculative_verify.md).
"""
from __future__ import annotations

from typing import NamedTuple, Union

import torch

BACKENDS = ("auto", "triton", "reference")


class VerifyResult(NamedTuple):
    accepted: torch.Tensor  # [B] int64: draft tokens accepted (0..draft_lens[b])
    emitted: torch.Tensor   # [B, K+1] int64: accepted tokens, then the correction or bonus token; -1 after


def _per_sequence(v: Union[int, torch.Tensor], B: int, device, name: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if not isinstance(v, int):
        raise TypeError(f"speculative_verify: {name} must be an int or an int64 tensor [B], got {type(v).__name__}")
    return torch.full((B,), v, dtype=torch.int64, device=device)


def speculative_verify(target_logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor,
                       draft_lens: torch.Tensor, *, temperature: float = 0.0, seed: Union[int, torch.Tensor] = 0,
                       offset: Union[int, torch.Tensor] = 0, draft_is_logits: bool = False,
                       backend: str = "auto") -> VerifyResult:
    """Verify draft tokens [B, K] against target logits [B, K+1, V].

    draft_probs: [B, K, V], the draft distribution of every drafted position (or its logits with
    `draft_is_logits`, softmaxed at `temperature`); ignored at temperature 0 (greedy: a draft token is
    accepted while it is the target's argmax). draft_lens [B] (<= K): drafted tokens per sequence.
    seed, offset: per-sequence Philox key and counter (an int applies to every sequence); draws depend on
    (seed, offset, row, vocab index) only, never on the batch slot. `backend`: "auto" dispatches on the
    device (C++ on CPU; Triton on CUDA), "triton" and "reference" (float64) force those.
    No host synchronisation on CUDA.
    """
    if backend not in BACKENDS:
        raise ValueError(f"speculative_verify: backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(target_logits, torch.Tensor) or target_logits.dim() != 3:
        raise ValueError("speculative_verify: target_logits must be a 3-D tensor [B, K+1, V]")
    B, dev = target_logits.shape[0], target_logits.device
    args = (target_logits, draft_tokens, draft_probs, draft_lens, _per_sequence(seed, B, dev, "seed"),
            _per_sequence(offset, B, dev, "offset"), float(temperature), bool(draft_is_logits))
    if backend == "reference":
        from .reference.speculative_verify import speculative_verify_reference

        return VerifyResult(*speculative_verify_reference(*args)[:2])
    if backend == "triton":
        from .triton_speculative_verify import speculative_verify_triton

        return VerifyResult(*speculative_verify_triton(*args))
    return VerifyResult(*torch.ops.dllm.speculative_verify(*args))
