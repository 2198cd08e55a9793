"""`lm_head_row_stats`: the LM head fused with the row-statistics pass. From final hidden states
and the head's weight it returns each row's merged partial statistics (docs/row_stats.md), the
logits computed a vocabulary chunk at a time and never held whole: the memory of a step no longer
grows with batch x rows x vocabulary. `select_from_hidden` / `fused_unmask_from_hidden`
(dllm_kernels.from_hidden) run the policy stage on them. Semantics: docs/lm_head_row_stats.md.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .policy import CONF_KINDS


def lm_head_row_stats(hidden: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor, *,
                      bias: Optional[torch.Tensor] = None, seed: Optional[torch.Tensor] = None,
                      offset: Optional[torch.Tensor] = None, temperature: Union[float, torch.Tensor, None] = None,
                      suppress_ids: Union[Sequence[int], torch.Tensor, None] = None, conf: str = "prob",
                      vocab_start: int = 0) -> torch.Tensor:
    """Partial statistics [B, R, len(ROW_STATS_COLUMNS)] float64 of the logits hidden @ weight.T
    (+ bias), rows of hidden [B, R, d], weight [V, d] (the LM head, the tied embedding, or this
    rank's shard of either, whose first row is global id `vocab_start`), in hidden's dtype.

    The other arguments are row_stats' (dllm_kernels.row_stats): positions [B, R] int64 (noise key;
    < 0: row not read), seed/offset [B] int64, temperature a number or [B], global suppress_ids,
    `conf` the terms accumulated. Stack the result as [1, B, R, C] (or W ranks' shards in order)
    for `row_stats=` of select / fused_unmask.
    """
    if conf not in CONF_KINDS:
        raise ValueError(f"lm_head_row_stats: conf must be one of {sorted(CONF_KINDS)}, got {conf!r}")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError("lm_head_row_stats: hidden must be a 3-D tensor [B, R, d]")
    B, device = hidden.shape[0], hidden.device
    if temperature is not None and not isinstance(temperature, torch.Tensor):
        temperature = torch.full((B,), float(temperature), dtype=torch.float64, device=device)
    elif temperature is not None:
        temperature = temperature.to(device=device, dtype=torch.float64).reshape(B).contiguous()
    if suppress_ids is not None and not isinstance(suppress_ids, torch.Tensor):
        ids = [suppress_ids] if isinstance(suppress_ids, int) else [int(i) for i in suppress_ids]
        suppress_ids = torch.tensor(ids, dtype=torch.int64, device=device) if ids else None
    return torch.ops.dllm.lm_head_row_stats(hidden, weight, bias, positions, seed, offset, temperature,
                                            suppress_ids, CONF_KINDS[conf], int(vocab_start))
