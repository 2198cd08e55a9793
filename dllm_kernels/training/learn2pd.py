"""Learn2PD end to end: oracle traces, filter training, decoding with the filter through fused_unmask.

    python -m dllm_kernels.training.learn2pd --model DIR --prompts prompts.jsonl --gen-length 64 --block-length 32

1. **Reference**: each training prompt is decoded one token per step (top-k, k = 1, fixed blocks):
   the answer y* the filter must not change.
2. **Oracle replay** (docs/policies.md §2.5, the Learn2PD recipe): from the prompt and masks again, at each
   step one forward gives `x0` and `conf` (prob) of the block's masked positions; the step records the
   filter's input exactly as the op builds it (docs/fused_unmask.md step 5: `conf` of block position j,
   the value it had when committed for decoded positions, 0 outside the block) and the label
   `x0[j] == y*[j]` for every still-masked position j; then every masked position whose prediction
   already equals y* is committed (if none does, the highest-confidence one is committed with its y*
   token, so every step makes progress).
3. **Filter**: Linear(W, H) -> ReLU -> Linear(H, W), BCE-with-logits on the recorded masked positions,
   AdamW; saved as safetensors (w1, b1, w2, b2) + JSON metadata.
4. **Decode** held-out prompts with `Policy(rule="filter")` through `dllm_kernels.generate` (fused_unmask)
   and report forwards and agreement with one-token-per-step decoding.

Any model the decoder runs works: a LLaDA-format checkpoint directory (`--model`), prompts as a JSONL
file of `{"ids": [...]}` (the tiny models' recipes write theirs: tools/README.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..generate import generate
from ..policy import LearnedFilter, Policy


@dataclass
class Traces:
    features: torch.Tensor   # [N, W] float32: the filter's input at each recorded step
    labels: torch.Tensor     # [N, W] float32: 1 where the prediction equals the reference answer
    weights: torch.Tensor    # [N, W] float32: 1 for still-masked block positions (the loss covers these)
    steps: int               # replay steps summed over sequences (a sequence's forwards)
    reference_steps: int     # forwards of one-token-per-step decoding of the same prompts

    def save(self, path: str):
        torch.save({"features": self.features, "labels": self.labels, "weights": self.weights,
                    "steps": self.steps, "reference_steps": self.reference_steps}, path)


def reference_policy(block_length: int) -> Policy:
    return Policy(rule="topk", steps=block_length, block_length=block_length)


def _model_logits(model, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    if hasattr(model, "forward_span"):
        return model(x, lengths)
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def oracle_traces(model, prompts: List[Sequence[int]], reference: torch.Tensor, *, gen_length: int,
                  block_length: int, mask_id: int, width: Optional[int] = None) -> Traces:
    """The oracle replay for a batch of prompts; `reference` [B, gen_length] is the one-token-per-step
    answer of each prompt. Blocks are fixed, `block_length` long (the last may be shorter)."""
    W = width or block_length
    if block_length > W:
        raise ValueError(f"oracle_traces: block_length {block_length} exceeds the filter width {W}")
    B = len(prompts)
    P = [len(p) for p in prompts]
    lens = [p + gen_length for p in P]
    L = max(lens)
    x = torch.full((B, L), mask_id, dtype=torch.int64)
    y = torch.full((B, L), -1, dtype=torch.int64)
    for b, p in enumerate(prompts):
        x[b, :P[b]] = torch.as_tensor(p)
        y[b, P[b]:lens[b]] = reference[b]
    conf_buf = torch.full((B, L), float("nan"))
    block = [0] * B
    n_blocks = math.ceil(gen_length / block_length)
    feats, labels, weights = [], [], []
    while True:
        active = [b for b in range(B) if block[b] < n_blocks]
        if not active:
            break
        logits = _model_logits(model, x, lens).float()
        prob = logits.softmax(-1)
        conf, x0 = prob.max(-1)
        for b in active:
            s = P[b] + block[b] * block_length
            e = min(s + block_length, lens[b])
            masked = x[b, s:e] == mask_id
            conf_buf[b, s:e] = torch.where(masked, conf[b, s:e], conf_buf[b, s:e])
            f = torch.zeros(W)
            c = conf_buf[b, s:e]
            f[:e - s] = torch.where(torch.isfinite(c), c, torch.zeros_like(c))
            correct = (x0[b, s:e] == y[b, s:e])
            lab = torch.zeros(W)
            lab[:e - s] = correct.float()
            wt = torch.zeros(W)
            wt[:e - s] = masked.float()
            feats.append(f), labels.append(lab), weights.append(wt)
            commit = masked & correct
            if not bool(commit.any()):
                cm = torch.where(masked, conf[b, s:e], torch.full_like(conf[b, s:e], -1.0))
                commit = torch.zeros_like(masked)
                commit[int(cm.argmax())] = True
            x[b, s:e] = torch.where(commit, y[b, s:e], x[b, s:e])
            if not bool((x[b, s:e] == mask_id).any()):
                block[b] += 1
    ref_steps = B * sum(min(block_length, gen_length - i * block_length) for i in range(n_blocks))
    return Traces(torch.stack(feats), torch.stack(labels), torch.stack(weights), len(feats), ref_steps)


def train_filter(traces: Traces, *, hidden: int = 32, epochs: int = 60, lr: float = 3e-3, seed: int = 0,
                 batch: int = 256, log=None) -> LearnedFilter:
    """BCE-with-logits on the recorded (still-masked) positions, AdamW, full passes over the traces."""
    torch.manual_seed(seed)
    W = traces.features.shape[1]
    first, second = torch.nn.Linear(W, hidden), torch.nn.Linear(hidden, W)
    params = list(first.parameters()) + list(second.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    n = traces.features.shape[0]
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        total, count = 0.0, 0.0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            out = second(F.relu(first(traces.features[idx])))
            w = traces.weights[idx]
            loss = (F.binary_cross_entropy_with_logits(out, traces.labels[idx], reduction="none") * w).sum() \
                / w.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * float(w.sum())
            count += float(w.sum())
        if log and (ep + 1) % max(1, epochs // 5) == 0:
            log(f"filter epoch {ep + 1}/{epochs}: BCE {total / max(count, 1):.4f}")
    return LearnedFilter.from_modules(first, second)


def filter_metrics(filt: LearnedFilter, traces: Traces, threshold: float) -> dict:
    """Precision/recall of `sigmoid(out) > threshold` on recorded positions."""
    with torch.no_grad():
        out = F.linear(F.relu(F.linear(traces.features, filt.w1, filt.b1)), filt.w2, filt.b2)
        pred = (torch.sigmoid(out) > threshold) & (traces.weights > 0)
        lab = (traces.labels > 0) & (traces.weights > 0)
        tp = float((pred & lab).sum())
        return {"precision": tp / max(float(pred.sum()), 1), "recall": tp / max(float(lab.sum()), 1),
                "positions": int((traces.weights > 0).sum()), "positive_rate": float(lab.sum()) / max(float((traces.weights > 0).sum()), 1)}


def save_filter(filt: LearnedFilter, path: str, meta: dict):
    from safetensors.torch import save_file

    save_file({"w1": filt.w1, "b1": filt.b1, "w2": filt.w2, "b2": filt.b2}, path,
              metadata={k: json.dumps(v) for k, v in meta.items()})


def load_filter(path: str) -> tuple:
    """(LearnedFilter, metadata dict) from a file written by `save_filter`."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    return LearnedFilter(t["w1"], t["b1"], t["w2"], t["b2"]), meta


def reference_decode(model, prompts, *, gen_length: int, block_length: int, mask_id: int, eos_id: int,
                     batch: int = 256) -> torch.Tensor:
    outs = []
    for i in range(0, len(prompts), batch):
        out = generate(model, prompts[i:i + batch], gen_length=gen_length, policy=reference_policy(block_length),
                       mask_id=mask_id, eos_id=eos_id)
        outs.append(out.tokens)
    return torch.cat(outs)


def collect(model, prompts, *, gen_length: int, block_length: int, mask_id: int, eos_id: int,
            batch: int = 256) -> Traces:
    parts = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        ref = reference_decode(model, chunk, gen_length=gen_length, block_length=block_length,
                               mask_id=mask_id, eos_id=eos_id)
        parts.append(oracle_traces(model, chunk, ref, gen_length=gen_length, block_length=block_length,
                                   mask_id=mask_id))
    return Traces(torch.cat([p.features for p in parts]), torch.cat([p.labels for p in parts]),
                  torch.cat([p.weights for p in parts]), sum(p.steps for p in parts),
                  sum(p.reference_steps for p in parts))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Learn2PD: oracle traces, filter training, decoding with the filter")
    ap.add_argument("--model", required=True, help="LLaDA-format checkpoint directory")
    ap.add_argument("--prompts", required=True, help="JSONL of {\"ids\": [...]} training prompts")
    ap.add_argument("--eval-prompts", help="JSONL of held-out prompts (default: the first training prompts)")
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--gen-length", type=int)
    ap.add_argument("--block-length", type=int)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--threshold", type=float, default=0.96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="filter file (default MODEL/learn2pd_filter.safetensors)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from ..models import LLaDA

    model = LLaDA.from_pretrained(a.model, dtype=torch.float32)
    mask_id, eos_id = model.config.mask_token_id, model.config.eos_token_id
    read = lambda f: [json.loads(line)["ids"] for line in open(f) if line.strip()]  # noqa: E731
    train_p = read(a.prompts)[:a.n_train]
    eval_p = read(a.eval_prompts)[:a.n_eval] if a.eval_prompts else train_p[:a.n_eval]
    gen_length = a.gen_length or 32
    block_length = a.block_length or min(32, gen_length)
    t0 = time.time()
    traces = collect(model, train_p, gen_length=gen_length, block_length=block_length, mask_id=mask_id,
                     eos_id=eos_id)
    print(f"traces: {traces.features.shape[0]} block-steps from {len(train_p)} prompts: the oracle needs "
          f"{traces.steps} forwards, one token per step {traces.reference_steps} "
          f"({time.time() - t0:.0f} s)")
    t0 = time.time()
    filt = train_filter(traces, hidden=a.hidden, epochs=a.epochs, seed=a.seed, log=print)
    m = filter_metrics(filt, traces, a.threshold)
    print(f"filter trained in {time.time() - t0:.0f} s; on the traces at threshold {a.threshold}: {m}")
    out = a.out or os.path.join(a.model, "learn2pd_filter.safetensors")
    meta = {"block_length": block_length, "gen_length": gen_length, "threshold": a.threshold,
            "hidden": a.hidden, "epochs": a.epochs, "seed": a.seed, "n_train_prompts": len(train_p),
            "trace_rows": int(traces.features.shape[0]), "trace_metrics": m}
    save_filter(filt, out, meta)
    print(f"saved {out}")
    ref = reference_decode(model, eval_p, gen_length=gen_length, block_length=block_length, mask_id=mask_id,
                           eos_id=eos_id)
    pol = Policy(rule="filter", steps=block_length, block_length=block_length, learned_filter=filt,
                 filter_threshold=a.threshold)
    got = generate(model, eval_p, gen_length=gen_length, policy=pol, mask_id=mask_id, eos_id=eos_id)
    agree = float((got.tokens == ref).all(1).float().mean())
    print(f"held-out ({len(eval_p)} prompts): filter {sum(got.nfe) / len(eval_p):.2f} forwards per prompt vs "
          f"{gen_length} one-token-per-step; agreement with one-token-per-step {agree:.1%}")


if __name__ == "__main__":
    main()
