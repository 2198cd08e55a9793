"""One step's logits, from a model class of `dllm_kernels.models` or from a plain callable.

Each returns (logits, row_start tensor or None, model calls made). A model class computes only the
rows the step needs (`forward_span`, with the cache of its mode), or with the LM head fused into
the unmasking (`fused_head`) those rows' final hidden states instead; a plain callable gives every
position's logits.
"""
from __future__ import annotations

import inspect
from typing import List, Optional

import torch

from .caches import Spans

__all__ = ["CallableForward", "SpanForward", "fused_head"]


def fused_head(model, requested: Optional[bool], native: bool, device: torch.device) -> bool:
    """Whether the decoder hands the LM head's input to fused_unmask_from_hidden instead of forming
    the logits. None: on CUDA only (on CPU it is faster only for 16-bit heads with enough rows,
    docs/lm_head_row_stats.md, "In the decoder"), and off for a tensor-parallel model (each rank's
    fused shard, vocab_parallel_fused_unmask_from_hidden, has not been timed on GPUs yet). True: an
    error when the model cannot give hidden states."""
    if requested is not None and not isinstance(requested, bool):
        raise TypeError(f"generate: fused_lm_head must be None, True or False, got {requested!r}")
    can = native and isinstance(getattr(model, "lm_head", None), torch.Tensor) and \
        "hidden" in inspect.signature(model.forward_span).parameters
    tp = getattr(model, "unmask_op", None) is not None
    if requested:
        if not can:
            raise ValueError(f"generate: fused_lm_head=True needs a model whose forward_span(hidden=True) gives the "
                             f"LM head's input and an `lm_head` weight (dllm_kernels.models); {type(model).__name__} "
                             "has neither")
        return True
    if requested is None:
        return can and not tp and device.type in FUSED_HEAD_DEFAULT_DEVICES
    return False


# Device types where the fused head is the default (docs/lm_head_row_stats.md, "In the decoder").
FUSED_HEAD_DEFAULT_DEVICES = ("cuda",)


class SpanForward:
    """`model.forward_span` over each sequence's query span, keeping the cache `mode` says."""

    def __init__(self, model, mode, batch: int, length: int, cached: bool, eotp: bool, hidden: bool = False):
        self.model, self.mode, self.eotp, self.hidden = model, mode, eotp, hidden
        self.kv = model.new_cache(batch, length) if cached else None

    def __call__(self, x: torch.Tensor, st: list, spans: Spans, todo: List[int]):
        logits = self.model.forward_span(x, q_start=spans.q_start, q_len=spans.q_len, kv_len=spans.kv_len,
                                         row_start=spans.row_start, n_rows=max(spans.n_rows), cache=self.kv,
                                         **({"hidden": True} if self.hidden else {}))
        self.mode.after_forward(st, spans.opening)
        rs = torch.tensor(spans.row_start, dtype=torch.int64).to(x.device, non_blocking=True)
        if self.eotp:  # EoTP reads every masked row it is given: rows past a sequence's own
            r_max = logits.shape[1]  # need (another sequence set R) must read as invalid (NaN hidden
            # states give NaN logits, so the same holds for the fused head)
            for b in todo:
                if spans.n_rows[b] < r_max:
                    logits[b, spans.n_rows[b]:].fill_(float("nan"))
        return logits, rs, 1


def logits_of(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"generate: the model returned {type(out).__name__}, expected logits")


class CallableForward:
    """Logits [B, L, V] of a plain callable. A batch of equal lengths: one forward. A ragged batch
    with `pass_attention_mask`: one forward with the mask, the first checked once to honour it (on
    the most padded sequence); without it, one unpadded forward per group of equal lengths (rows
    past a sequence's end are NaN: never read, and invalid if they were)."""

    def __init__(self, model, lens: List[int], pass_attention_mask: bool, device):
        self.model = model
        B, L = len(lens), max(lens)
        self.attn_mask = None
        if pass_attention_mask:
            self.attn_mask = (torch.arange(L)[None, :] < torch.tensor(lens)[:, None]).long().to(device)
        self.groups: Optional[list] = None
        self.mask_check_row: Optional[int] = None
        self.lens = lens
        if len(set(lens)) > 1:
            if pass_attention_mask:
                self.mask_check_row = lens.index(min(lens))
            else:
                self.groups = [(torch.tensor([b for b in range(B) if lens[b] == n], device=device), n)
                               for n in sorted(set(lens))]

    def __call__(self, x: torch.Tensor, st: list, spans: Spans, todo: List[int]):
        logits, calls = self._logits(x), len(self.groups) if self.groups else 1
        if self.mask_check_row is not None:
            b = self.mask_check_row
            check_mask_honoured(self.model, x, logits, b, self.lens[b])
            calls += 1
            self.mask_check_row = None
        return logits, None, calls

    def _logits(self, x):
        if self.groups is None:
            out = self.model(x, attention_mask=self.attn_mask) if self.attn_mask is not None else self.model(x)
            return logits_of(out)
        logits = None
        for rows, n in self.groups:
            part = logits_of(self.model(x[rows, :n]))
            if logits is None:
                logits = part.new_full((x.shape[0], x.shape[1], part.shape[-1]), float("nan"))
            logits[rows, :n] = part
        return logits


def check_mask_honoured(model, x, logits, b: int, n: int) -> None:
    """Once per decode (one host read): sequence b, padded in the batch, must get the logits it
    gets alone. A model that ignores `attention_mask` attends to the padding and would commit
    wrong tokens without any error."""
    ones = torch.ones(1, n, dtype=torch.long, device=x.device)
    solo = logits_of(model(x[b:b + 1, :n], attention_mask=ones))[0].float()
    batched = logits[b, :n].float()
    diff = (batched - solo).abs().masked_fill(batched == solo, 0).masked_fill(batched.isnan() & solo.isnan(), 0)
    worst = float(diff.max())
    finite = solo[solo.isfinite()]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    tol = max(1e-4, 8 * torch.finfo(logits.dtype).eps) * scale  # batch-shape rounding, not padding
    if not worst <= tol:
        raise ValueError(
            f"generate: with pass_attention_mask=True, sequence {b} (padded in the batch) gets logits that "
            f"differ from its forward alone (max |diff| {worst:.3g} > {tol:.3g}): the model does not honour "
            "attention_mask (the public LLaDA code ignores it). Drop pass_attention_mask: a ragged batch of a "
            "plain callable is then decoded with one unpadded forward per prompt length, exactly.")
