"""The seeded training loop of the tiny masked diffusion models (LLaDA's objective).

One loop for every recipe (tools/train_tiny.py, tools/train_sudoku.py, tools/train_text.py): AdamW
(betas 0.9/0.98, weight decay 0.1), linear warm-up then cosine decay to 10% of the peak, grad-norm
clip 1.0, the masked diffusion loss on the batch's eligible tokens. Batches come from a numpy
generator and masks from a torch generator, both seeded by `seed`, and the int16 tokens of every
batch are hashed in order, so a run is reproducible and its data can be checked.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch

from .objective import masked_diffusion_loss


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


@dataclass
class FitState:
    """What `fit` hands to `on_eval`: steps done, losses so far, the data hash, wall and CPU seconds."""
    step: int = 0
    history: List[float] = field(default_factory=list)
    data_hash: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    t0: float = field(default_factory=time.time)
    c0: float = field(default_factory=time.process_time)
    last: bool = False

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.t0

    @property
    def cpu_s(self) -> float:
        return time.process_time() - self.c0

    def loss_curve(self, every: int = 50) -> List[float]:
        """Mean loss of each run of `every` steps."""
        return [float(np.mean(self.history[i:i + every])) for i in range(0, len(self.history), every)]


def fit(model: torch.nn.Module, next_batch: Callable, *, steps: int, lr: float, warmup: int, mask_id: int,
        seed: int = 0, eval_every: int = 250, on_eval: Optional[Callable[[FitState], None]] = None,
        stop_after: Optional[int] = None, cpu_budget_s: Optional[float] = None) -> FitState:
    """Train `model` for `steps` steps of the schedule (fewer with `stop_after`, or once the run has
    used `cpu_budget_s` CPU seconds). `next_batch(rng)` -> (tokens [B, L], eligible [B, L] bool,
    key-padding lengths or None). `on_eval(state)` runs every `eval_every` steps and after the last."""
    if steps < 1 or warmup < 0 or not lr > 0:
        raise ValueError(f"fit: steps must be >= 1, warmup >= 0, lr > 0; got {steps}, {warmup}, {lr}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    state = FitState()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        x, eligible, lengths = next_batch(rng)
        state.data_hash.update(x.numpy().astype("<i2").tobytes())
        loss = masked_diffusion_loss(model, x, eligible, mask_id, gen, lengths)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state.history.append(loss.item())
        state.step = step + 1
        over = cpu_budget_s is not None and state.cpu_s > cpu_budget_s
        state.last = state.step == steps or state.step == stop_after or over
        if on_eval is not None and (state.step % eval_every == 0 or state.last):
            model.eval()
            on_eval(state)
            model.train()
        if state.last:
            break
    return state
