"""Runs a random Scenario for a few steps through a backend and the float64 reference, comparing
every decision; sequences with a legitimately ambiguous step (docs/policies.md §1) are resynchronised
to the reference and counted, not compared."""
import math

import torch

from fused_unmask_cases import (Scenario, ambiguous_sequences, assert_same_decisions, boost_token, make_batch,
                          peaked_logits, run_both)


def filter_probabilities(extra, conf, state, B):
    """sigmoid(filter(features)) per sequence in float64, to spot outputs next to the threshold."""
    if "filter_w1" not in extra:
        return None
    w1, b1, w2, b2 = (extra[k].double() for k in ("filter_w1", "filter_b1", "filter_w2", "filter_b2"))
    width = w1.shape[1]
    out = []
    for b in range(B):
        bs, be = int(state[b, 2]), int(state[b, 3])
        feat = torch.zeros(width, dtype=torch.float64)
        for j in range(width):
            if bs + j < be:
                c = float(conf[b, bs + j])
                feat[j] = c if math.isfinite(c) else 0.0
        out.append(torch.sigmoid(w2 @ torch.relu(w1 @ feat + b1) + b2).tolist())
    return out


def step_inputs(sc, batch, extra, gen, invalid_rows=False):
    """Logits (eos and the delimiter made plausible somewhere) and optional noise for one step."""
    B, L, V = sc.B, sc.L, sc.V
    R = max(1, L - 5) if sc.use_row_start else L
    row_start = torch.randint(0, L - R + 1, (B,), generator=gen) if sc.use_row_start else None
    logits = peaked_logits(B, R, V, torch.float32, gen)
    for b in range(B):
        for r in torch.randint(0, R, (2,), generator=gen).tolist():
            boost_token(logits, b, r, batch.eos_id, float(torch.rand(1, generator=gen)) * 6 - 2)
        if "delimiter_ids" in extra:
            r = int(torch.randint(0, R, (1,), generator=gen))
            boost_token(logits, b, r, int(extra["delimiter_ids"][0]), float(torch.rand(1, generator=gen)) * 6 - 2)
    if invalid_rows:  # a NaN row, a +inf entry, an all -inf row (docs: "Non-finite logits")
        for b in range(B):
            rows = torch.randperm(R, generator=gen)[:3].tolist()
            logits[b, rows[0], V // 2] = float("nan")
            if len(rows) > 1:
                logits[b, rows[1], V // 3] = float("inf")
            if len(rows) > 2:
                logits[b, rows[2]] = float("-inf")
            logits[b, rows[-1], 0] = float("-inf")  # -inf entries are ordinary
    logits = logits.to(sc.dtype)
    gumbel_u = None
    if sc.use_gumbel_u and sc.kw["temperature"] > 0:
        gumbel_u = torch.rand(B, R, V, generator=gen).clamp_(1e-6, 1 - 1e-6)
    rank_u = torch.rand(B, L, generator=gen) if sc.kw.get("random_remasking") and sc.seed % 2 else None
    return logits, row_start, gumbel_u, rank_u


def run_scenario(op, sc: Scenario, steps: int = 3):
    """Returns (compared, skipped) sequence-steps."""
    gen = torch.Generator().manual_seed(sc.seed)
    kw = dict(sc.kw)
    batch = make_batch(sc.B, sc.L, sc.V, gen, block_length=kw["block_length"], seed=sc.seed)
    extra = sc.tensors()
    compared = skipped = 0
    B = sc.B
    for _ in range(steps):
        logits, row_start, gumbel_u, _ = step_inputs(sc, batch, extra, gen)
        seeds, offsets = batch.state.state[:, 9].clone(), batch.state.state[:, 10].clone()
        conf_before = batch.state.conf.clone()
        got, ref = run_both(op, logits, batch, dict(kw, **extra), row_start=row_start, gumbel_u=gumbel_u)
        rx, rconf, rstate, _ = ref
        read = ~torch.isclose(rconf, conf_before, equal_nan=True)
        rs = row_start if row_start is not None else torch.zeros(B, dtype=torch.int64)
        shift = 1 if kw["shift"] else 0
        skip = ambiguous_sequences(logits.double(), rconf, read, kw,
                                   row_of=lambda b, p: p - shift - int(rs[b]), gumbel_u=gumbel_u,
                                   seeds=seeds, offsets=offsets,
                                   filter_probs=filter_probabilities(extra, rconf, rstate, B))
        assert_same_decisions(got, ref, skip=skip)
        compared += B - len(skip)
        skipped += len(skip)
        batch.x, batch.state.conf, batch.state.state = rx, rconf, rstate  # continue from the reference
    return compared, skipped
