"""Float64 reference of lm_head_row_stats (docs/lm_head_row_stats.md): the exact logits
hidden @ weight.T + bias rounded once to hidden's dtype (the logits the op's chunks hold), then
each row's partial statistics (docs/row_stats.md) summed in float64, the Gumbel noise from the
Philox reference keyed by global ids."""
from __future__ import annotations

import math

import numpy as np
import torch

from .philox import noise_uniform
from .fused_unmask import CONF_MARGIN, CONF_NEG_ENTROPY, _id_list


def lm_head_row_stats_reference(hidden, weight, bias, positions, seed=None, offset=None, temperature=None,
                                suppress_ids=None, conf_kind=0, vocab_start=0) -> torch.Tensor:
    B, R, _ = hidden.shape
    V = weight.shape[0]
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    logits = logits.to(hidden.dtype).double().cpu()
    for i in _id_list(suppress_ids):
        if vocab_start <= i < vocab_start + V:
            logits[..., i - vocab_start] = -math.inf
    ids = np.arange(vocab_start, vocab_start + V, dtype=np.uint64)
    out = torch.empty(B, R, 9, dtype=torch.float64)
    for b in range(B):
        temp = float(temperature[b]) if temperature is not None else 0.0
        for r in range(R):
            p = int(positions[b, r])
            if p < 0:
                out[b, r] = torch.tensor([-math.inf, -math.inf, 0, 0, -math.inf, -math.inf, -1, -1, 0])
                continue
            l = logits[b, r]
            bad = float(bool(torch.isnan(l).any() or (l == math.inf).any()))
            m1 = float(l.max())
            idx = int(torch.nonzero(l == m1)[0, 0]) if m1 > -math.inf else -1
            e = torch.exp(l - m1) if m1 > -math.inf else torch.zeros_like(l)
            top2 = torch.topk(l, 2).values if V >= 2 else torch.tensor([m1, -math.inf])
            m2 = float(top2[1]) if conf_kind == CONF_MARGIN else -math.inf
            finite = l > -math.inf
            ent = float((e[finite] * (l[finite] - m1)).sum()) if conf_kind == CONF_NEG_ENTROPY else 0.0
            nb, nc, ni = -math.inf, -math.inf, -1
            if temp > 0:
                s = int(seed[b]) if seed is not None else 0
                o = int(offset[b]) if offset is not None else 0
                u = torch.from_numpy(noise_uniform(s, o, ids, np.uint64(p)).astype(np.float64))
                noisy = l + temp * -torch.log(-torch.log(u))
                nb = float(noisy.max())
                if nb > -math.inf:
                    j = int(torch.nonzero(noisy == nb)[0, 0])
                    ni, nc = vocab_start + j, float(l[j])
            out[b, r] = torch.tensor([m1, m2, float(e.sum()), ent, nb, nc, vocab_start + idx if idx >= 0 else -1,
                                      ni, bad])
    return out
