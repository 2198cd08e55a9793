"""LLaDA's training objective for masked diffusion models.

For each sequence draw t ~ U(eps, 1); mask each eligible token independently with probability t; the
loss is the cross-entropy of the model's prediction at masked positions, each weighted by 1/t, summed and
divided by the number of eligible tokens (LLaDA pretraining: all tokens of the sequence; LLaDA SFT: the
response, its eos padding included, and the sum is divided by the response length). This is an upper
bound on the negative log-likelihood per eligible token.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def forward_mask(x: torch.Tensor, eligible: torch.Tensor, mask_id: int, generator: torch.Generator,
                 eps: float = 1e-3, t: Optional[torch.Tensor] = None):
    """Noised tokens, the masked positions and t [B] (drawn from U(eps, 1) unless given)."""
    B = x.shape[0]
    if t is None:
        t = eps + (1 - eps) * torch.rand(B, generator=generator)
    masked = (torch.rand(x.shape, generator=generator) < t[:, None]) & eligible
    return torch.where(masked, torch.full_like(x, mask_id), x), masked, t


def weighted_masked_ce(logits: torch.Tensor, x: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                       eligible: torch.Tensor) -> torch.Tensor:
    """sum over masked positions of CE / t, divided by the number of eligible positions (per sequence,
    then averaged over the batch: LLaDA's per-sequence normalisation)."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="none")
    ce = ce.view(x.shape) * masked / t[:, None]
    return (ce.sum(1) / eligible.sum(1).clamp(min=1)).mean()


def masked_diffusion_loss(model, x: torch.Tensor, eligible: torch.Tensor, mask_id: int,
                          generator: torch.Generator, lengths=None, eps: float = 1e-3,
                          t: Optional[torch.Tensor] = None) -> torch.Tensor:
    noisy, masked, t = forward_mask(x, eligible, mask_id, generator, eps, t)
    logits = model(noisy, lengths)
    return weighted_masked_ce(logits, x, masked, t, eligible)


@torch.no_grad()
def masked_token_loss(model, x: torch.Tensor, eligible: torch.Tensor, mask_id: int, generator: torch.Generator,
                      lengths=None, eps: float = 1e-3) -> tuple:
    """Held-out evaluation: (mean CE per masked token in nats, number of masked tokens), t ~ U(eps, 1)
    as in training but the CE unweighted, so it compares directly with the unigram baseline."""
    noisy, masked, _ = forward_mask(x, eligible, mask_id, generator, eps)
    logits = model(noisy, lengths)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="none")
    n = int(masked.sum())
    return float((ce.view(x.shape) * masked).sum()) / max(n, 1), n


def unigram_loss(train_counts: torch.Tensor, targets: torch.Tensor) -> float:
    """Cross-entropy (nats) of `targets` under the unigram distribution of `train_counts` (add-one)."""
    p = (train_counts.double() + 1) / (train_counts.double() + 1).sum()
    return float(-p.log()[targets].mean())
