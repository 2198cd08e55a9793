"""Unmasking from final hidden states: the LM head fused with the statistics pass
(`lm_head_row_stats`), then the policy stage of `select` or `fused_unmask` on the merged
partials. The logits [B, R, V] are never materialised; results equal the unfused
`select(hidden @ lm_head.T + bias, ...)` / `fused_unmask(...)` (tokens exact, confidences to
float rounding; docs/lm_head_row_stats.md)."""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from .lm_head_row_stats import lm_head_row_stats
from .policy import Policy
from .row_stats import row_positions, row_temperatures
from .select import SelectResult, _ids, noise_keys, select
from .select_params import Value
from .state import OFFSET, SEED, DecodeState
from .fused_unmask import UnmaskResult, fused_unmask


def _head_stats(hidden, lm_head, bias, positions, seed, offset, temperature, suppress_ids, conf, backend):
    """[1, B, R, C]: the whole head's merged partials, from the op or (backend "triton") its Triton kernel."""
    if not isinstance(lm_head, torch.Tensor) or lm_head.dim() != 2:
        raise ValueError("from_hidden: lm_head must be a 2-D tensor [V, d] (the LM head or the tied embedding)")
    if backend == "triton":
        from .policy import CONF_KINDS
        from .triton_lm_head_row_stats import lm_head_row_stats_triton

        return lm_head_row_stats_triton(hidden, lm_head, bias, positions, seed, offset, temperature, suppress_ids,
                                        CONF_KINDS[conf], 0)[None]
    return lm_head_row_stats(hidden, lm_head, positions, bias=bias, seed=seed, offset=offset,
                             temperature=temperature, suppress_ids=suppress_ids, conf=conf)[None]


def _temperature(temperature, batch: int, device) -> Optional[torch.Tensor]:
    """[B] float64 for the statistics pass, None when no row samples (the pass then skips the noise)."""
    if not isinstance(temperature, torch.Tensor) and float(temperature) == 0:
        return None
    return row_temperatures(temperature, batch, device)


def select_from_hidden(hidden: torch.Tensor, lm_head: torch.Tensor, x: torch.Tensor,
                       candidates: Optional[torch.Tensor] = None, *, bias: Optional[torch.Tensor] = None,
                       temperature=0.0, conf: str = "prob", suppress_ids=None, shift: bool = False,
                       row_start: Optional[torch.Tensor] = None, seed=None, offset=None,
                       generator: Optional[torch.Generator] = None, random_remasking: bool = False,
                       backend: str = "auto", **select_kwargs) -> SelectResult:
    """`select` (docs/select.md) on the logits hidden [B, R, d] @ lm_head[V, d].T (+ bias [V]),
    without materialising them. Every other argument is select's; `gumbel_u` is not accepted
    (the Gumbel noise is Philox, drawn in the fused pass with the same keys select would use)."""
    for name in ("gumbel_u", "row_stats", "vocab_size"):
        if select_kwargs.get(name) is not None:
            raise ValueError(f"select_from_hidden: {name} is not accepted (the statistics come from the LM head)")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError("select_from_hidden: hidden must be a 3-D tensor [B, R, d]")
    B, R, device = hidden.shape[0], hidden.shape[1], hidden.device
    seed_t, offset_t = noise_keys(B, device, seed=seed, offset=offset, temperature=temperature,
                                  random_remasking=random_remasking, generator=generator,
                                  explicit=select_kwargs.get("rank_u") is not None)
    positions = row_positions(B, R, row_start=row_start, shift=shift, device=device)
    stats = _head_stats(hidden, lm_head, bias, positions, seed_t, offset_t, _temperature(temperature, B, device),
                        _ids("suppress_ids", suppress_ids, device), conf, backend)
    return select(None, x, candidates, temperature=temperature, conf=conf, suppress_ids=suppress_ids, shift=shift,
                  row_start=row_start, seed=seed_t, offset=offset_t, random_remasking=random_remasking,
                  backend=backend, row_stats=stats, vocab_size=lm_head.shape[0], **select_kwargs)


def fused_unmask_from_hidden(hidden: torch.Tensor, lm_head: torch.Tensor, x: torch.Tensor, state: DecodeState,
                             policy: Policy, *, mask_id: int, eos_id: int, row_start: Optional[torch.Tensor] = None,
                             rank_u: Optional[torch.Tensor] = None, params: Optional[Mapping[str, Value]] = None,
                             bias: Optional[torch.Tensor] = None, backend: str = "auto") -> UnmaskResult:
    """`fused_unmask` (docs/fused_unmask.md) on the logits hidden [B, R, d] @ lm_head[V, d].T
    (+ bias [V]), without materialising them; the Gumbel noise is keyed by the state's SEED and
    OFFSET as fused_unmask keys it, at the temperature of `params` (per request) or the policy.
    Other arguments are fused_unmask's (no `gumbel_u`)."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError("fused_unmask_from_hidden: hidden must be a 3-D tensor [B, R, d]")
    if not isinstance(state, DecodeState):
        raise TypeError(f"fused_unmask_from_hidden: state must be a dllm_kernels.DecodeState, "
                        f"got {type(state).__name__}")
    if not isinstance(policy, Policy):
        raise TypeError(f"fused_unmask_from_hidden: policy must be a dllm_kernels.Policy, got {type(policy).__name__}")
    B, R, device = hidden.shape[0], hidden.shape[1], hidden.device
    positions = row_positions(B, R, row_start=row_start, shift=policy.shift, device=device)
    seed, offset = state.state[:, SEED].contiguous(), state.state[:, OFFSET].contiguous()
    suppress = _ids("suppress_ids", list(policy.suppress_ids) or None, device)
    stats = _head_stats(hidden, lm_head, bias, positions, seed, offset,
                        _temperature((params or {}).get("temperature", policy.temperature), B, device), suppress,
                        policy.conf, backend)
    rows_only = hidden.new_empty((B, R, 0), dtype=torch.float32)  # with row_stats, logits give B and R only
    return fused_unmask(rows_only, x, state, policy, mask_id=mask_id, eos_id=eos_id, row_start=row_start,
                        rank_u=rank_u, params=params, backend=backend, row_stats=stats, vocab_size=lm_head.shape[0])
