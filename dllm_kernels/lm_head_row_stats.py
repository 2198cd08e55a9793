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
from .row_stats import per_row_inputs


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
    temperature, suppress_ids = per_row_inputs(hidden.shape[0], hidden.device, temperature, suppress_ids)
    return torch.ops.dllm.lm_head_row_stats(hidden, weight, bias, positions, seed, offset, temperature,
                                            suppress_ids, CONF_KINDS[conf], int(vocab_start))
