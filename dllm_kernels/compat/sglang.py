"""Drop-in for SGLang's `LowConfidence` diffusion step (its `step` on one batch of blocks).

Per block: the argmax prediction and its probability (softmax in the logits' dtype) at masked
positions; every masked position whose confidence is strictly above `threshold` is committed,
and where none is, the first position of highest confidence (`torch.argmax`; in a block with
nothing masked that is position 0, whose token is kept).
"""
from __future__ import annotations

import torch

from ._confidence import TOL, check_logits, exact_key, predict, softmax_at

__all__ = ["low_confidence_step", "SGLANG_DEFAULT_THRESHOLD"]

SGLANG_DEFAULT_THRESHOLD = 0.95


def low_confidence_step(logits: torch.Tensor, input_ids: torch.Tensor, mask_id: int,
                        threshold: float = SGLANG_DEFAULT_THRESHOLD):
    """`(new_input_ids, transfer_index, done)` for logits [B, block, V] and input_ids [B, block].

    `done[b]` is true when block b had no masked position (SGLang's return value, as a bool
    tensor); `input_ids` is not modified (SGLang copies the result into it: do
    `input_ids.copy_(new_input_ids)` for that)."""
    op = "low_confidence_step"
    check_logits(op, logits, input_ids, name="logits")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"{op}: threshold must be a number, got {type(threshold).__name__}")
    threshold = float(threshold)
    mask = input_ids == mask_id
    done = mask.sum(dim=1) == 0
    x0, approx = predict(logits, input_ids, mask)
    conf = exact_key(logits, x0, approx, mask, logits.dtype, softmax_at,
                     lambda v: (v - threshold).abs() <= TOL)
    transfer = conf > threshold
    top1 = torch.zeros_like(transfer)
    top1[torch.arange(conf.shape[0], device=conf.device), torch.argmax(conf, dim=1)] = True
    transfer = torch.where((transfer.sum(dim=1) > 0)[:, None], transfer, top1)
    return torch.where(transfer, x0, input_ids), transfer, done
