"""Drop-ins for LLaDA's `generate`: its step schedule and its selection step.

`get_num_transfer_tokens` is LLaDA's (and Fast-dLLM's) schedule, value for value. `llada_transfer`
is the body of one iteration of LLaDA's `generate` loop: predictions, confidence in the logits'
dtype, -inf from `block_end` on and off the masks, then `torch.topk` with that step's count per
sequence. The caller keeps the loop, the model call (classifier-free guidance included) and the
commit `x[transfer_index] = x0[transfer_index]`.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._confidence import check_logits, exact_key, predict, softmax_at
from ._counts import per_sequence_counts, topk_rows

__all__ = ["get_num_transfer_tokens", "llada_transfer"]

LLADA_EOS_ID = 126081
LLADA_EOT_ID = 126348


def get_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, steps] int64: each sequence's masked count split over `steps`, the remainder going to
    the first steps (LLaDA's linear schedule)."""
    if not isinstance(mask_index, torch.Tensor) or mask_index.dim() != 2:
        raise ValueError("get_num_transfer_tokens: mask_index must be a [B, L] tensor")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"get_num_transfer_tokens: steps must be an int >= 1, got {steps!r}")
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base, remainder = mask_num // steps, mask_num % steps
    first = torch.arange(steps, device=mask_index.device)[None, :] < remainder
    return (base + first).to(torch.int64)


def llada_transfer(logits: torch.Tensor, x: torch.Tensor, mask_id: int, block_end, num_transfer_tokens,
                   temperature: float = 0.0, remasking: str = "low_confidence", *, logits_eos_inf: bool = False,
                   confidence_eos_eot_inf: bool = False, eos_id: int = LLADA_EOS_ID,
                   eot_id: int = LLADA_EOT_ID, generator: Optional[torch.Generator] = None):
    """One step of LLaDA's `generate`: returns `(x0, transfer_index)`, both [B, L].

    block_end: int or [B] tensor, the end of the current block (LLaDA's `prompt_len + (num_block
    + 1) * block_length`); num_transfer_tokens: this step's column of `get_num_transfer_tokens`
    ([B] or [B, 1] tensor, or an int for every sequence). `logits_eos_inf` and
    `confidence_eos_eot_inf` are LLaDA's flags of the same names, with its ids by default (the
    public code writes -inf into the caller's logits; this function leaves them untouched).
    x0 holds the prediction at masked positions before `block_end`, x elsewhere (the public step
    also predicts past the block, where nothing can be chosen). At temperature > 0 the Philox
    seeds come from `generator` (default: torch's).
    """
    op = "llada_transfer"
    check_logits(op, logits, x)
    if remasking not in ("low_confidence", "random"):
        raise NotImplementedError(f"{op}: remasking must be 'low_confidence' or 'random', got {remasking!r}")
    B, L, V = logits.shape
    end = torch.as_tensor(block_end, device=x.device).reshape(-1).expand(B)
    cand = (x == mask_id) & (torch.arange(L, device=x.device)[None, :] < end[:, None])
    ks = per_sequence_counts(op, "num_transfer_tokens", num_transfer_tokens, B, L)

    suppress = [eos_id] if logits_eos_inf else []
    # LLaDA removes these from the confidence only, after x0 is drawn; at T = 0 its noisy logits
    # are the logits themselves, so the eos write lands in both.
    conf_ids = ([eos_id, eot_id] if temperature == 0 else [eot_id]) if confidence_eos_eot_inf else []
    seed = None  # one seed per sequence, so both passes below draw the same noise
    if temperature > 0:
        seed = torch.randint(-2 ** 63, 2 ** 63 - 1, (B,), generator=generator, dtype=torch.int64)
    x0, approx = predict(logits, x, cand, temperature=temperature, suppress_ids=suppress or None, seed=seed)

    if remasking == "random":
        conf = torch.rand((B, L), device=x0.device)
        conf = torch.where(cand, conf, -float("inf"))
    else:
        if conf_ids:
            _, approx = predict(logits, x, cand, temperature=temperature, suppress_ids=suppress + conf_ids, seed=seed)
            approx = torch.where(torch.isin(x0, torch.tensor(conf_ids, device=x0.device)), 0.0, approx)
        removed = suppress + conf_ids

        def public_rows(rows, at):
            if removed:
                rows = rows.clone()
                rows[:, removed] = -float("inf")
            return softmax_at(rows, at)

        conf = exact_key(logits, x0, approx, cand, logits.dtype, public_rows)
    return x0, topk_rows(conf, ks)
