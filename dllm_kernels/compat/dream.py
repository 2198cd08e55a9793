"""Drop-ins for Dream: `sample_tokens` and the whole `diffusion_generate` loop over a callable model.

`sample_tokens(logits [N, V], temperature, top_p, top_k, margin_confidence, neg_entropy)` returns
`(confidence, x0)` as Dream's does: the logits divided by the temperature, top-p then top-k
filtered (in torch, exactly as Dream filters: the confidence is renormalised over the tokens
kept), probabilities in the logits' dtype, x0 their first maximum at temperature 0 (a sample at
T > 0: Gumbel-max with Philox noise, the same distribution, not the same draws), the confidence
that probability, or top-1 minus top-2, or the negative entropy `sum p log(p + 1e-10)`.
`select` supplies x0 and the probabilities in one pass; rows where float32 cannot settle the
public value (a rounding midpoint of the dtype, a near-tie between rows, two nearly equal top
probabilities) are recomputed in torch. Negative entropy in bfloat16 / float16 is computed in
torch throughout: Dream rounds every term to that dtype before summing.

`dream_diffusion_generate(model, input_ids, ...)` is Dream's `_sample` loop: the timestep grid
`linspace(1, eps, steps + 1)`, `int(masked_per_sequence * (1 - s / t))` tokens per step (all
remaining at the last), the logits shifted right by one, `torch.topk` over the confidence (or,
with `alg_temp`, `torch.multinomial` over its softmax), and Dream's `origin` algorithm.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ._confidence import near_ties, predict, rounding_unsure

__all__ = ["sample_tokens", "dream_diffusion_generate", "DreamOutput", "DREAM_ALGS"]

DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
_MANTISSA_BITS = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
_ENTROPY_EPS = 1e-10


# ---- Dream's logits filters (torch, as Dream applies them) -----------------------------------------

def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    srt, order = torch.sort(logits, descending=True)
    drop = torch.cumsum(F.softmax(srt, dim=-1), dim=-1) > top_p
    drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
    drop[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, drop)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def _top_k(logits: torch.Tensor, top_k: int):
    kept = torch.topk(logits, min(top_k, logits.size(-1))).values
    return logits.masked_fill(logits < kept[..., -1, None], torch.finfo(logits.dtype).min), kept


def _public_rows(rows: torch.Tensor, x0: Optional[torch.Tensor], kind: str):
    """Dream's confidence (and, when x0 is None, its argmax) on some filtered rows, in their dtype."""
    probs = torch.softmax(rows, dim=-1)
    if x0 is None:
        conf, x0 = probs.max(dim=-1)
    else:
        conf = probs.gather(-1, x0[:, None])[:, 0]
    if kind == "margin":
        top = torch.topk(probs, min(2, probs.shape[-1])).values
        conf = top[:, 0] - top[:, -1] if top.shape[1] == 2 else top[:, 0]
    elif kind == "neg_entropy":
        conf = torch.sum(probs * torch.log(probs + _ENTROPY_EPS), dim=-1)
    return conf, x0


def sample_tokens(logits: torch.Tensor, temperature: float = 0.0, top_p: Optional[float] = None,
                  top_k: Optional[int] = None, margin_confidence: bool = False, neg_entropy: bool = False):
    """Dream's `sample_tokens` on logits [N, V]: `(confidence [N] in the logits' dtype, x0 [N])`."""
    op = "sample_tokens"
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"{op}: logits must be [N, V] (Dream passes the masked rows)")
    if logits.dtype not in _MANTISSA_BITS:
        raise TypeError(f"{op}: logits must be float32, float16 or bfloat16, got {logits.dtype}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"{op}: temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"{op}: top_k must be None or an int >= 1, got {top_k!r}")
    kind = "neg_entropy" if neg_entropy else ("margin" if margin_confidence else "prob")
    dtype = logits.dtype
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p(logits, top_p)
    kept = None
    if top_k is not None:
        logits, kept = _top_k(logits, top_k)
    N, V = logits.shape
    if N == 0:
        return torch.empty(0, dtype=dtype, device=logits.device), torch.empty(0, dtype=torch.int64,
                                                                                device=logits.device)
    if kept is None or kept.shape[1] < 2:
        kept = torch.topk(logits, min(2, V)).values
    sampled = temperature > 0
    cand = torch.ones(1, N, dtype=torch.bool, device=logits.device)
    x0, stat = predict(logits[None], torch.zeros(1, N, dtype=torch.int64, device=logits.device), cand,
                       temperature=1.0 if sampled else 0.0, conf="neg_entropy" if kind == "neg_entropy" else "prob")
    x0, stat = x0[0], stat[0].double()
    full = dtype == torch.float32

    if kind == "neg_entropy" and not full:
        conf = _public_rows(logits, x0 if sampled else None, kind)[0]
        unsure = torch.zeros(N, dtype=torch.bool, device=logits.device)
    elif kind == "neg_entropy":
        conf = stat.float()
        unsure = near_ties(stat[None], cand, slack=V * _ENTROPY_EPS)[0]
    else:
        top1 = kept[:, 0].double()
        top2 = kept[:, 1].double() if kept.shape[1] > 1 else None
        p_x0 = stat
        if kind == "prob":
            approx = [p_x0]
        else:  # top-1 and top-2 probabilities from the probability of x0 and the logits' gaps
            at_x0 = logits.gather(-1, x0[:, None])[:, 0].double()
            p1 = p_x0 * torch.exp(top1 - at_x0)
            approx = [p1, p1 * torch.exp(top2 - top1) if top2 is not None else torch.zeros_like(p1)]
        if full:
            key = approx[0] - approx[1] if kind == "margin" else approx[0]
            conf = key.float()
            unsure = near_ties(key[None], cand)[0]
        else:
            rounded = [a.to(dtype) for a in approx]
            conf = rounded[0] - rounded[1] if kind == "margin" else rounded[0]
            unsure = torch.zeros(N, dtype=torch.bool, device=logits.device)
            for a in approx:
                unsure |= rounding_unsure(a, dtype)
    if not sampled and kept.shape[1] > 1:
        # Dream's x0 is the first maximum of the rounded probabilities: two top tokens closer than
        # the dtype's rounding may tie there and the lower id wins.
        gap = 1 - torch.exp(kept[:, 1].double() - kept[:, 0].double())
        unsure |= gap <= 4.0 * 2.0 ** -_MANTISSA_BITS[dtype]
    conf = conf.to(dtype)
    if bool(unsure.any()):
        rows = unsure.nonzero()[:, 0]
        c, x = _public_rows(logits[rows], x0[rows] if sampled else None, kind)
        conf[rows], x0[rows] = c, x
    return conf, x0


# ---- the diffusion_generate loop ------------------------------------------------------------------

class DreamOutput(NamedTuple):
    sequences: torch.Tensor
    history: Optional[list]


def _call(model, x, attention_mask, tok_idx):
    out = model(x, attention_mask, tok_idx)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def dream_diffusion_generate(model: Callable, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                             *, mask_token_id: int, max_length: Optional[int] = None,
                             max_new_tokens: Optional[int] = None, steps: int = 512, eps: float = 1e-3,
                             alg: str = "origin", alg_temp: Optional[float] = None, temperature: float = 0.0,
                             top_p: Optional[float] = None, top_k: Optional[int] = None,
                             return_dict_in_generate: bool = False, output_history: bool = False,
                             generation_tokens_hook_func=None, generation_logits_hook_func=None):
    """Dream's `diffusion_generate` for `model(x, attention_mask, tok_idx)` -> logits [B, L, V] (or an
    output with `.logits`), as Dream's model is called; `max_new_tokens` wins over `max_length`.

    Returns the sequences [B, max_length], or `DreamOutput(sequences, history)` with
    `return_dict_in_generate`. Dream's progress prints are left out."""
    op = "dream_diffusion_generate"
    if alg not in DREAM_ALGS:
        raise ValueError(f"{op}: alg must be one of {DREAM_ALGS}, got {alg!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{op}: steps must be an int >= 1, got {steps!r}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"{op}: input_ids must be a [B, L] tensor")
    if max_new_tokens is not None:
        max_length = input_ids.shape[1] + max_new_tokens
    if max_length is None or max_length < input_ids.shape[1]:
        raise ValueError(f"{op}: give max_new_tokens or a max_length >= the prompt length ({input_ids.shape[1]})")
    tokens_hook = generation_tokens_hook_func or (lambda step, x, logits: x)
    logits_hook = generation_logits_hook_func

    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=mask_token_id)
    tok_idx = None
    if attention_mask is not None and bool(torch.any(attention_mask == 0.0)):
        attention_mask = F.pad(attention_mask, (0, max_length - attention_mask.shape[1]), value=1.0)
        tok_idx = attention_mask.long().cumsum(-1) - 1
        tok_idx.masked_fill_(attention_mask == 0, 1)
        attention_mask = torch.logical_and(attention_mask.unsqueeze(1).unsqueeze(-2),
                                           attention_mask.unsqueeze(1).unsqueeze(-1))
    else:
        attention_mask = "full"

    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)
    history = [] if (return_dict_in_generate and output_history) else None
    x = tokens_hook(None, x, None)
    for i in range(steps):
        mask_index = x == mask_token_id
        logits = _call(model, x, attention_mask, tok_idx)
        if logits_hook is not None:
            logits = logits_hook(i, x, torch.cat([logits[:, :1], logits[:, :-1]], dim=1))
            mask_logits = logits[mask_index]
        else:  # the rows of the right-shifted logits at the masks, without building the shifted copy
            b, p = mask_index.nonzero(as_tuple=True)
            mask_logits = logits[b, (p - 1).clamp(min=0)]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index]) + mask_token_id
            chosen = torch.rand(*x0.shape, device=x.device) < p_transfer
            _, x0[chosen] = sample_tokens(mask_logits[chosen], temperature=temperature, top_p=top_p, top_k=top_k)
            x[mask_index] = x0.clone()
        else:
            confidence, x0 = sample_tokens(mask_logits, temperature=temperature, top_p=top_p, top_k=top_k,
                                           margin_confidence=alg == "topk_margin", neg_entropy=alg == "entropy")
            num_mask_token = mask_index.sum() / mask_index.shape[0]
            count = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
            full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
            full_confidence[mask_index] = confidence
            if count > 0:
                if alg_temp is None or alg_temp == 0:
                    _, transfer_index = torch.topk(full_confidence, count)
                else:
                    weights = F.softmax(full_confidence / alg_temp, dim=-1)
                    transfer_index = torch.multinomial(weights, num_samples=count)
                x_ = torch.zeros_like(x) + mask_token_id
                x_[mask_index] = x0.clone()
                rows = torch.arange(x.size(0), device=x.device).unsqueeze(1).expand_as(transfer_index)
                x[rows, transfer_index] = x_[rows, transfer_index]
        x = tokens_hook(i, x, logits)
        if history is not None:
            history.append(x.clone())
    return DreamOutput(x, history) if return_dict_in_generate else x
