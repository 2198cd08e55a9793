"""Eager PyTorch unmasking steps written the way the public decoders write them (LLaDA,
Fast-dLLM): a full softmax over the vocabulary, gathers, boolean masks. They are the baselines
of the benchmarks, not the spec (that is `dllm_kernels.reference`).
"""
import torch


def gumbel_perturb(logits: torch.Tensor, temperature: float, dtype=torch.float64) -> torch.Tensor:
    """LLaDA's `add_gumbel_noise`: exp(l) / (-log U)^T in `dtype` (argmax-equivalent to l + T g)."""
    if temperature == 0:
        return logits
    logits = logits.to(dtype)
    noise = torch.rand_like(logits, dtype=dtype)
    return logits.exp() / (-torch.log(noise)) ** temperature


def eager_threshold_step(logits: torch.Tensor, x: torch.Tensor, block_start: int, block_end: int,
                         mask_id: int, threshold: float, temperature: float = 0.0,
                         dtype=torch.float64) -> torch.Tensor:
    """One Fast-dLLM threshold step over rows [block_start, block_end) of x; returns the transfer mask.

    `logits` are the rows of the block only: [B, block_end - block_start, V].
    """
    block = x[:, block_start:block_end]
    mask_index = block == mask_id
    x0 = torch.argmax(gumbel_perturb(logits, temperature, dtype), dim=-1)
    p = torch.softmax(logits.to(dtype), dim=-1)
    x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
    x0 = torch.where(mask_index, x0, block)
    confidence = torch.where(mask_index, x0_p, torch.tensor(-float("inf"), dtype=dtype))
    transfer = confidence >= threshold
    best = confidence.argmax(dim=1, keepdim=True)
    transfer.scatter_(1, best, True)
    transfer &= mask_index
    block[transfer] = x0[transfer]
    return transfer


def eager_topk_step(logits: torch.Tensor, x: torch.Tensor, block_start: int, block_end: int,
                    mask_id: int, k: int, dtype=torch.float64) -> torch.Tensor:
    """One LLaDA low-confidence-remasking step (greedy) over rows [block_start, block_end) of x:
    float64 softmax, the chosen token's probability, `torch.topk` of k per sequence. Returns the
    transfer mask; `logits` are the rows of the block only."""
    block = x[:, block_start:block_end]
    mask_index = block == mask_id
    x0 = torch.argmax(logits, dim=-1)
    p = torch.softmax(logits.to(dtype), dim=-1)
    x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
    confidence = torch.where(mask_index, x0_p, torch.tensor(-float("inf"), dtype=dtype))
    transfer = torch.zeros_like(mask_index)
    transfer.scatter_(1, torch.topk(confidence, k, dim=1).indices, True)
    transfer &= mask_index
    block[transfer] = x0[transfer]
    return transfer
