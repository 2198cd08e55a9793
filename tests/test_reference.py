"""Hand-worked cases for the float64 reference of fused_unmask and its Philox generator.

Every expected value is derived by hand in the comments (docs/fused_unmask.md, docs/policies.md); the
reference is the spec the other backends are tested against, so these tests pin it to the contract
rather than to any implementation.

Conventions of the small cases: V = 8, mask_id = 7, eos_id = 6, delimiter = 5. `row(t, c)` is a
logits row whose clean softmax puts probability c on token t and (1 - c) / 7 on each other token,
so x0 = t and conf (kind prob) = c up to float64 rounding (~1e-16) whenever c > 1/8.
"""
import math
import os
import shutil
import subprocess
import struct

import numpy as np
import pytest
import torch

from dllm_kernels.reference import (
    BLOCK_END, BLOCK_MASKED, BLOCK_REMAINING, BLOCK_START, CONF_KINDS, DONE, END_POS, GEN_END, GEN_START,
    OFFSET, RANK_STREAM, RULES, SEED, STATE_COLUMN_NAMES, STATE_COLUMNS, STEP, bits_to_uniform,
    noise_uniform, philox4x32_10, rank_uniform, row_statistics)
from fused_unmask_cases import fused_unmask_reference  # the flat keyword form

V, MASK, EOS, DELIM = 8, 7, 6, 5
M = MASK
NAN = float("nan")
INF = float("inf")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def row(token, c):
    l = torch.full((V,), math.log((1.0 - c) / (V - 1)), dtype=torch.float64)
    l[token] = math.log(c)
    return l


def low_row():
    return row(1, 0.2)  # a valid, unconfident row (x0 = 1, conf 0.2)


def logits_for(rows, R=None):
    """rows: dict {row index: logits row} for one sequence -> [1, R, V] float32 (others low_row)."""
    R = R if R is not None else max(rows) + 1
    out = torch.stack([rows.get(r, low_row()) for r in range(R)]).float()
    return out.unsqueeze(0)


def new_state(gen_start, gen_end, seed=0, offset=0):
    s = torch.zeros(1, STATE_COLUMNS, dtype=torch.int64)
    s[0, GEN_START], s[0, GEN_END] = gen_start, gen_end
    s[0, BLOCK_START] = s[0, BLOCK_END] = gen_start
    s[0, END_POS] = gen_end
    s[0, SEED], s[0, OFFSET] = seed, offset
    return s


def seq(tokens):
    return torch.tensor([tokens], dtype=torch.int64)


def nan_conf(L, B=1):
    return torch.full((B, L), NAN, dtype=torch.float32)


def step(logits, x, conf, state, **kw):
    kw.setdefault("mask_id", MASK)
    kw.setdefault("eos_id", EOS)
    return fused_unmask_reference(logits, x, conf, state, **kw)


def positions(mask_row):
    return [i for i, v in enumerate(mask_row.tolist()) if v]


# ------------------------------------------------------------------------------------------------
# Philox
# ------------------------------------------------------------------------------------------------

# Random123's published known-answer vectors for Philox4x32-10 (counter, key -> output).
KATS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KATS)
def test_philox_known_answers(ctr, key, expected):
    out = philox4x32_10(*ctr, *key)
    assert tuple(int(w) for w in out) == expected


def test_philox_vectorised_matches_scalar():
    c0 = np.array([0, 1, 0xFFFFFFFF, 12345], dtype=np.uint64)
    out = philox4x32_10(c0, 7, 0, 0, 3, 4)
    for i, c in enumerate(c0.tolist()):
        single = philox4x32_10(c, 7, 0, 0, 3, 4)
        assert [int(w[i]) for w in out] == [int(w) for w in single]
    assert all(w.dtype == np.uint32 and w.shape == (4,) for w in out)


def test_bits_to_uniform_exact():
    # (r >> 9) * 2^-23 + 2^-24: r = 0 -> 2^-24; r = 2^32 - 1 -> (2^23 - 1) * 2^-23 + 2^-24 = 1 - 2^-24;
    # r = 0x200 -> k = 1 -> 1.5 * 2^-23; the low 9 bits are dropped.
    u = bits_to_uniform(np.array([0, 0xFFFFFFFF, 0x200, 0x3FF], dtype=np.uint32))
    assert u.dtype == np.float32
    assert u.tolist() == [2.0 ** -24, 1.0 - 2.0 ** -24, 1.5 * 2.0 ** -23, 1.5 * 2.0 ** -23]


def test_noise_uniform_counter_and_key_layout():
    seed, offset = 0x0123456789ABCDEF, (5 << 32) | 9
    v = np.array([0, 1, 1000], dtype=np.uint64)
    u = noise_uniform(seed, offset, v, 17)
    # counter (v, p, offset lo, offset hi) = (v, 17, 9, 5), key (seed lo, seed hi).
    r0 = philox4x32_10(v, 17, 9, 5, 0x89ABCDEF, 0x01234567)[0]
    assert u.dtype == np.float32 and u.shape == (3,)
    assert np.array_equal(u, bits_to_uniform(r0))
    assert np.all((u > 0) & (u < 1))
    # A negative int64 seed (as stored in the state tensor) is its two's-complement bit pattern.
    assert np.array_equal(noise_uniform(-1, 0, v, 3), noise_uniform(2 ** 64 - 1, 0, v, 3))
    # The rank stream is vocab index 0xffffffff.
    assert RANK_STREAM == 0xFFFFFFFF
    assert np.array_equal(rank_uniform(seed, offset, np.arange(4)),
                          noise_uniform(seed, offset, 0xFFFFFFFF, np.arange(4)))


CPP_CHECK = r"""
#include <cstdio>
#include <cstring>
#include <cstdint>
#include "dllm/philox.h"
int main() {
  const uint64_t seeds[3] = {0ull, 0x0123456789abcdefull, 0xffffffffffffffffull};
  const uint64_t offsets[3] = {0ull, 7ull, (5ull << 32) | 9ull};
  const uint32_t vs[4] = {0u, 1u, 151645u, 0xffffffffu};
  const uint32_t ps[2] = {0u, 4095u};
  for (uint64_t s : seeds) for (uint64_t o : offsets) for (uint32_t v : vs) for (uint32_t p : ps) {
    float u = dllm::noise_uniform(s, o, v, p);
    uint32_t bits; std::memcpy(&bits, &u, 4);
    std::printf("%llu %llu %u %u %08x\n", (unsigned long long)s, (unsigned long long)o, v, p, bits);
  }
  dllm::Philox4 k = dllm::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  std::printf("kat %08x %08x %08x %08x\n", k.v[0], k.v[1], k.v[2], k.v[3]);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_noise_uniform_matches_philox_h(tmp_path):
    src = tmp_path / "check.cpp"
    src.write_text(CPP_CHECK)
    exe = tmp_path / "check"
    subprocess.run(["g++", "-std=c++17", "-O1", "-I", os.path.join(REPO, "csrc", "include"), str(src),
                    "-o", str(exe)], check=True, capture_output=True, timeout=120)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout.split("\n")
    n = 0
    for line in lines:
        if not line:
            continue
        f = line.split()
        if f[0] == "kat":
            assert tuple(int(w, 16) for w in f[1:]) == KATS[2][2]
            continue
        s, o, v, p, bits = int(f[0]), int(f[1]), int(f[2]), int(f[3]), int(f[4], 16)
        ours = noise_uniform(s, o, v, p)
        assert struct.unpack("<I", np.float32(ours).tobytes())[0] == bits, line
        n += 1
    assert n == 3 * 3 * 4 * 2


# ------------------------------------------------------------------------------------------------
# Row statistics
# ------------------------------------------------------------------------------------------------

def test_row_statistics_kinds_by_hand():
    l = torch.tensor([2.0, 1.0, 0.0, -INF], dtype=torch.float64)
    Z = math.e ** 2 + math.e + 1  # exp(-inf) = 0
    q = [math.e ** 2 / Z, math.e / Z, 1 / Z]
    s = row_statistics(l, temperature=0.0, conf_kind=CONF_KINDS["prob"])
    assert s.valid and s.x0 == 0
    assert s.lse == pytest.approx(math.log(Z), abs=1e-15)
    assert s.pprob == pytest.approx(q[0], abs=1e-15) and s.conf == pytest.approx(q[0], abs=1e-15)
    assert s.noisy_gap == pytest.approx(1.0, abs=1e-15)  # 2 - 1
    s = row_statistics(l, temperature=0.0, conf_kind=CONF_KINDS["margin"])
    assert s.conf == pytest.approx(q[0] - q[1], abs=1e-15)  # p1 - p2
    s = row_statistics(l, temperature=0.0, conf_kind=CONF_KINDS["neg_entropy"])
    assert s.conf == pytest.approx(sum(v * math.log(v) for v in q), abs=1e-14)  # 0 log 0 = 0
    assert s.pprob == pytest.approx(q[0], abs=1e-15)


def test_row_statistics_ties_and_shared_max():
    # Shared maximum at ids 1 and 3: x0 = 1 (first index), margin p1 - p2 = 0, gap 0.
    l = torch.tensor([0.0, 3.0, 1.0, 3.0], dtype=torch.float64)
    s = row_statistics(l, temperature=0.0, conf_kind=CONF_KINDS["margin"])
    assert s.x0 == 1 and s.conf == 0.0 and s.noisy_gap == 0.0
    # A single finite value: x0 is it, prob 1, gap inf.
    s = row_statistics(torch.tensor([-INF, 4.0, -INF]), temperature=0.0, conf_kind=0)
    assert s.x0 == 1 and s.conf == 1.0 and s.noisy_gap == INF


def test_row_statistics_suppression_and_zero_conf():
    l = torch.tensor([5.0, 1.0, 0.0, NAN], dtype=torch.float64)
    # The NaN sits on a suppressed id: -inf first, then the row is valid. Suppressing 0 too: the max is
    # id 1 with prob e / (e + 1).
    s = row_statistics(l, temperature=0.0, conf_kind=0, suppress_ids=[3, 0])
    assert s.valid and s.x0 == 1 and s.conf == pytest.approx(math.e / (math.e + 1), abs=1e-15)
    # zero_conf_ids forces conf (not pprob) to 0 when x0 is listed.
    s = row_statistics(l, temperature=0.0, conf_kind=0, suppress_ids=[3, 0], zero_conf_ids=[2, 1])
    assert s.x0 == 1 and s.conf == 0.0 and s.pprob == pytest.approx(math.e / (math.e + 1), abs=1e-15)
    # Suppressing every finite value leaves an all -inf row: invalid.
    s = row_statistics(torch.tensor([1.0, -INF, 2.0]), temperature=0.0, conf_kind=0, suppress_ids=[0, 2])
    assert not s.valid and s.x0 == -1 and math.isnan(s.conf)


@pytest.mark.parametrize("bad", [[0.0, NAN, 1.0], [0.0, INF, 1.0], [-INF, -INF, -INF]])
def test_row_statistics_invalid_rows(bad):
    s = row_statistics(torch.tensor(bad, dtype=torch.float64), temperature=0.0, conf_kind=0)
    assert not s.valid and math.isnan(s.conf)


def test_row_statistics_gumbel_by_hand():
    # l = [1, 0, 0, 0], T = 1, u = [0.5, 0.99, 0.5, 0.5]:
    # g(0.5) = -log(log 2) = 0.3665, g(0.99) = -log(-log 0.99) = 4.6002 -> noisy = [1.37, 4.60, .37, .37]
    # x0 = 1, gap = 4.6002 - 1.3665; the conf is the clean prob of id 1: 1 / (e + 3).
    u = np.array([0.5, 0.99, 0.5, 0.5], dtype=np.float32)
    s = row_statistics(torch.tensor([1.0, 0.0, 0.0, 0.0]), temperature=1.0, uniforms=u, conf_kind=0)
    g = [-math.log(-math.log(float(v))) for v in u]  # float32 uniforms, float64 noise
    assert s.x0 == 1
    assert s.conf == pytest.approx(1 / (math.e + 3), abs=1e-15)
    assert s.noisy_gap == pytest.approx(g[1] - (1 + g[0]), abs=1e-12)
    # T = 0.1 scales the noise: noisy = [1.0367, 0.4600, .0367, .0367] -> x0 = 0.
    s = row_statistics(torch.tensor([1.0, 0.0, 0.0, 0.0]), temperature=0.1, uniforms=u, conf_kind=0)
    assert s.x0 == 0 and s.conf == pytest.approx(math.e / (math.e + 3), abs=1e-15)


def test_module_constants():
    assert RULES == {"topk": 0, "threshold": 1, "factor": 2, "localleap": 3, "filter": 4}
    assert CONF_KINDS == {"prob": 0, "margin": 1, "neg_entropy": 2}
    assert STATE_COLUMN_NAMES[OFFSET] == "OFFSET" and STATE_COLUMNS == 11 and DONE == 8 and SEED == 9


# ------------------------------------------------------------------------------------------------
# Selection rules
# ------------------------------------------------------------------------------------------------

def test_topk_schedule_remainder_and_ties():
    # Block [0, 5), m = 5 masked, steps = 3: k_i = 5 // 3 + (i < 5 % 3) = 2, 2, 1.
    x, conf, st = seq([M] * 5), nan_conf(5), new_state(0, 5)
    # Step 0 confs [0.5, 0.9, 0.3, 0.7, 0.6] -> top 2: p1 (0.9), p3 (0.7).
    lg = logits_for({0: row(0, 0.5), 1: row(1, 0.9), 2: row(2, 0.3), 3: row(3, 0.7), 4: row(4, 0.6)})
    x0, tr, ws = step(lg, x, conf, st, rule=0, steps=3, block_length=8)
    assert positions(tr[0]) == [1, 3]
    assert x[0].tolist() == [M, 1, M, 3, M] and x0[0].tolist() == [0, 1, 2, 3, 4]
    assert conf[0].tolist() == pytest.approx([0.5, 0.9, 0.3, 0.7, 0.6], abs=1e-7)
    s = st[0].tolist()
    assert (s[BLOCK_START], s[BLOCK_END], s[STEP], s[BLOCK_MASKED], s[BLOCK_REMAINING], s[OFFSET]) == (0, 5, 1, 5, 3, 1)
    # Step 1: confs p0 0.4, p2 0.4, p4 0.4 (three-way tie): k_1 = 2 -> lower positions p0, p2.
    lg = logits_for({0: row(0, 0.4), 2: row(2, 0.4), 4: row(4, 0.4)}, R=5)
    _, tr, _ = step(lg, x, conf, st, rule=0, steps=3, block_length=8)
    assert positions(tr[0]) == [0, 2]
    assert st[0, STEP] == 2 and st[0, BLOCK_REMAINING] == 1 and st[0, BLOCK_MASKED] == 5
    # Step 2: k_2 = 1 -> p4; block complete, sequence done.
    _, tr, _ = step(lg, x, conf, st, rule=0, steps=3, block_length=8)
    assert positions(tr[0]) == [4] and x[0].tolist() == [0, 1, 2, 3, 4]
    assert st[0, DONE] == 1 and st[0, BLOCK_REMAINING] == 0 and st[0, OFFSET] == 3


def test_topk_past_the_schedule_takes_everything():
    # m = 4, steps = 2: k = 2, 2. Step 0 commits p0, p1 (0.9, 0.8). In step 1 the rows of p2 and p3 are
    # invalid (a NaN, all -inf): no candidate, nothing committed, STEP still advances.
    x, conf, st = seq([M] * 4), nan_conf(4), new_state(0, 4)
    lg = logits_for({0: row(0, 0.9), 1: row(1, 0.8), 2: row(2, 0.3), 3: row(3, 0.25)})
    _, tr, _ = step(lg, x, conf, st, rule=0, steps=2)
    assert positions(tr[0]) == [0, 1]
    bad = logits_for({}, R=4)
    bad[0, 2, 3] = NAN
    bad[0, 3, :] = -INF
    x0, tr, _ = step(bad, x, conf, st, rule=0, steps=2)
    assert positions(tr[0]) == [] and x0[0].tolist() == [0, 1, M, M]
    assert math.isnan(conf[0, 2]) and math.isnan(conf[0, 3])
    assert st[0, STEP] == 2 and st[0, BLOCK_REMAINING] == 2
    # Step i = 2 >= steps: k = every candidate (2), both commit.
    _, tr, _ = step(lg, x, conf, st, rule=0, steps=2)
    assert positions(tr[0]) == [2, 3] and st[0, DONE] == 1


def test_topk_schedule_more_steps_than_masked():
    # m = 2, steps = 4: k = 2 // 4 + (i < 2) = 1, 1, 0, 0. Step 0 commits one (p1, conf 0.6).
    x, conf, st = seq([M] * 2), nan_conf(2), new_state(0, 2)
    lg = logits_for({0: row(0, 0.3), 1: row(1, 0.6)})
    _, tr, _ = step(lg, x, conf, st, rule=0, steps=4)
    assert positions(tr[0]) == [1]
    # Step 1 row p0 invalid -> nothing; step 2: k_2 = 0 -> nothing even with a valid row; step 3: k = 0;
    # step 4 (i >= steps): all -> p0.
    bad = logits_for({}, R=2)
    bad[0, 0, 0] = INF
    for expect in ([], [], [], [0]):
        _, tr, _ = step(bad if st[0, STEP] == 1 else lg, x, conf, st, rule=0, steps=4)
        assert positions(tr[0]) == expect
    assert st[0, DONE] == 1 and st[0, STEP] == 5


def test_random_remasking_ranks_by_uniforms():
    # confs favour p0, p1; rank_u favours p3 (0.9) and p2 (0.8): top-k with k = 2 takes p3, p2.
    x, conf, st = seq([M] * 4), nan_conf(4), new_state(0, 4)
    lg = logits_for({0: row(0, 0.9), 1: row(1, 0.8), 2: row(2, 0.3), 3: row(3, 0.25)})
    ru = torch.tensor([[0.1, 0.2, 0.8, 0.9]], dtype=torch.float32)
    _, tr, _ = step(lg, x, conf, st, rank_u=ru, rule=0, steps=2, random_remasking=True)
    assert positions(tr[0]) == [2, 3]
    # Without rank_u the keys are the Philox rank stream of (seed, offset, p): the two largest win.
    x, conf, st = seq([M] * 4), nan_conf(4), new_state(0, 4, seed=1234, offset=77)
    keys = rank_uniform(1234, 77, np.arange(4)).tolist()
    expect = sorted(sorted(range(4), key=lambda p: (-keys[p], p))[:2])
    _, tr, _ = step(lg, x, conf, st, rule=0, steps=2, random_remasking=True)
    assert positions(tr[0]) == expect


def test_threshold_equal_passes_and_argmax_progress():
    # conf exactly 0.5: row [0, 0, -inf, ...] -> x0 = 0 (first index), p = exp(0 - log 2) = 0.5 exactly.
    half = torch.full((V,), -INF, dtype=torch.float64)
    half[0] = half[1] = 0.0
    assert row_statistics(half, temperature=0.0, conf_kind=0).conf == 0.5
    x, conf, st = seq([M] * 4), nan_conf(4), new_state(0, 4)
    lg = logits_for({0: half, 1: row(2, 0.7), 2: row(3, 0.49), 3: row(4, 0.3)})
    # tau = 0.5: p0 (0.5 >= 0.5, not the argmax) and p1 (0.7) pass, p2 (0.49) and p3 fail.
    _, tr, _ = step(lg, x, conf, st, rule=1, threshold=0.5)
    assert positions(tr[0]) == [0, 1] and x[0].tolist() == [0, 2, M, M]
    # tau = 0.9: nobody passes; the argmax of the still-masked (p2, 0.49) commits for progress.
    _, tr, _ = step(lg, x, conf, st, rule=1, threshold=0.9)
    assert positions(tr[0]) == [2] and x[0].tolist() == [0, 2, 3, M]


def test_threshold_several_pass():
    # tau = 0.7: p0 0.95, p2 0.8 pass; p1 0.6, p3 0.2 do not.
    x, conf, st = seq([M] * 4), nan_conf(4), new_state(0, 4)
    lg = logits_for({0: row(1, 0.95), 1: row(2, 0.6), 2: row(3, 0.8), 3: row(4, 0.2)})
    _, tr, _ = step(lg, x, conf, st, rule=1, threshold=0.7)
    assert positions(tr[0]) == [0, 2] and x[0].tolist() == [1, M, 3, M]


@pytest.mark.parametrize("confs,expected", [
    # f = 1: thresholds 1 - 1/(r+1): r=2 0.6667, r=3 0.75, r=4 0.8, r=5 0.8333.
    # Sorted [0.95, 0.9, 0.85, 0.7]: r=2,3 pass, r=4 (0.7 < 0.8) fails, and it is the last element: we
    # commit the run of 3 (the public code's off-by-one would commit all 4).
    ([0.95, 0.9, 0.85, 0.7], [0, 1, 2]),
    # Sorted [0.6, 0.5]: r=2 0.5 < 0.6667 -> only c(1).
    ([0.5, 0.6], [1]),
    # [0.9, 0.6, 0.95, 0.5, 0.8] sorted: p2 .95, p0 .9, p4 .8, p1 .6, p3 .5: r=2 .9 ok, r=3 .8 ok,
    # r=4 .6 < .8 stops the run (r=5 fails too) -> {p2, p0, p4}.
    ([0.9, 0.6, 0.95, 0.5, 0.8], [0, 2, 4]),
    # Everything passes: [0.99, 0.98, 0.97] -> all three.
    ([0.99, 0.98, 0.97], [0, 1, 2]),
])
def test_factor_rule(confs, expected):
    n = len(confs)
    x, conf, st = seq([M] * n), nan_conf(n), new_state(0, n)
    lg = logits_for({p: row(p % 5, c) for p, c in enumerate(confs)})
    _, tr, _ = step(lg, x, conf, st, rule=2, factor=1.0)
    assert positions(tr[0]) == expected


def test_factor_rule_run_stops_at_first_failure():
    # f = 2: r=2 needs 1 - 2/3 = 0.333, r=3 0.5, r=4 0.6. Sorted [0.9, 0.45, 0.44, 0.43]: r=2 .45 ok,
    # r=3 .44 < .5 fails -> run 2, although nothing later could pass either -> {p0, p1}.
    x, conf, st = seq([M] * 4), nan_conf(4), new_state(0, 4)
    lg = logits_for({0: row(0, 0.9), 1: row(1, 0.45), 2: row(2, 0.44), 3: row(3, 0.43)})
    _, tr, _ = step(lg, x, conf, st, rule=2, factor=2.0)
    assert positions(tr[0]) == [0, 1]


LOCALLEAP_CONFS = [0.8, 0.95, 0.5, 0.8, 0.8, 0.7, 0.76, 0.92]


def _localleap(**kw):
    x, conf, st = seq([M] * 8), nan_conf(8), new_state(0, 8)
    lg = logits_for({p: row(p % 5, c) for p, c in enumerate(LOCALLEAP_CONFS)})
    _, tr, _ = step(lg, x, conf, st, rule=3, **kw)
    return positions(tr[0])


def test_localleap_hard_window():
    # kappa 0.9, tau_rel 0.75, W = 2. Anchors p1 (0.95), p7 (0.92).
    # p0: d=1 to p1, 0.8 >= .75 yes. p2: d=1, 0.5 no. p3: d=2, 0.8 yes. p4: d=3 (p1) / 3 (p7) > W no.
    # p5: d=2 to p7, 0.7 no. p6: d=1 to p7, 0.76 yes.  -> {0, 1, 3, 6, 7}
    assert _localleap(anchor_threshold=0.9, relaxed_threshold=0.75, window=2) == [0, 1, 3, 6, 7]
    # W = 0: no relaxed commits, anchors only.
    assert _localleap(anchor_threshold=0.9, relaxed_threshold=0.75, window=0) == [1, 7]


def test_localleap_graded_window():
    # Graded: thr(d) = tau_rel + (kappa - tau_rel) (d - 1) / W: W = 2 -> thr(1) = .75, thr(2) = .825.
    # p3 (d=2, 0.8 < .825) now fails; p0 (d=1, .8) and p6 (d=1, .76) still pass. -> {0, 1, 6, 7}
    assert _localleap(anchor_threshold=0.9, relaxed_threshold=0.75, window=2, graded=True) == [0, 1, 6, 7]
    # W = 4: thr = .75, .7875, .825, .8625. p4: d=3 to p1 and p7, 0.8 < .825 no; p3: d=2, .8 >= .7875
    # yes; p5: d=2 to p7, .7 no. -> {0, 1, 3, 6, 7}
    assert _localleap(anchor_threshold=0.9, relaxed_threshold=0.75, window=4, graded=True) == [0, 1, 3, 6, 7]


def test_localleap_without_anchors_is_threshold():
    # kappa = 0.99 > every conf: no anchors; LocalLeap = {argmax} = threshold rule with tau = kappa.
    assert _localleap(anchor_threshold=0.99, relaxed_threshold=0.5, window=8) == [1]
    x, conf, st = seq([M] * 8), nan_conf(8), new_state(0, 8)
    lg = logits_for({p: row(p % 5, c) for p, c in enumerate(LOCALLEAP_CONFS)})
    _, tr, _ = step(lg, x, conf, st, rule=1, threshold=0.99)
    assert positions(tr[0]) == [1]


def _filter_case(p0_buffer):
    # Block [0, 4) of gen region [0, 6); p0 decoded earlier (buffer conf p0_buffer), p1..p3 masked,
    # p4 (next block) holds a stale buffer conf 0.5. Width 5, hidden 2:
    #   h0 = relu(feat0), h1 = relu(feat4)
    #   out1 = 10 h0 - 5, out2 = 10 h1 - 1, out3 = -10, out0 = out4 = 10 (not candidates).
    # feat4 = 0 (p4 is outside the block), feat0 = p0's buffer conf (0 if not finite).
    # sigmoid(z) > 0.96 <=> z > log 24 = 3.18.
    w1 = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0]])
    b1 = torch.zeros(2)
    w2 = torch.tensor([[0.0, 0], [10, 0], [0, 10], [0, 0], [0, 0]])
    b2 = torch.tensor([10.0, -5, -1, -10, 10])
    x = seq([3, M, M, M, M, M])
    conf = torch.tensor([[p0_buffer, NAN, NAN, NAN, 0.5, NAN]], dtype=torch.float32)
    st = new_state(0, 6)
    # confs p1 0.3, p2 0.4, p3 0.7; m = 3, steps = 3 -> k_0 = 1 -> top-k part {p3}.
    lg = logits_for({1: row(1, 0.3), 2: row(2, 0.4), 3: row(4, 0.7)}, R=6)
    _, tr, _ = step(lg, x, conf, st, filter_w1=w1, filter_b1=b1, filter_w2=w2, filter_b2=b2,
                    rule=4, steps=3, block_length=4, filter_threshold=0.96)
    assert st[0, BLOCK_END] == 4 and st[0, BLOCK_MASKED] == 3
    return positions(tr[0])


def test_learned_filter_hand_weights():
    # feat0 = 0.9: out1 = 4 > 3.18 keeps p1; out2 = 10 * 0 - 1 = -1 drops p2 (it would be 4 if the
    # out-of-block p4 leaked in); out3 = -10. Result: filter {p1} + top-k {p3}.
    assert _filter_case(0.9) == [1, 3]
    # feat0 = NaN -> 0: out1 = -5, the filter keeps nothing: top-k {p3} only.
    assert _filter_case(NAN) == [3]


def test_learned_filter_uses_current_confs():
    # Width 2, hidden 1: h = relu(feat1) with feat1 = this step's conf of p1 (0.8); out0 = 10 h - 5 = 3
    # (< 3.18: no), out1 = 10 h - 4 = 4 keeps p1. m = 2, steps = 2 -> k = 1: top-k is p0 (0.9).
    w1, b1 = torch.tensor([[0.0, 1.0]]), torch.zeros(1)
    w2, b2 = torch.tensor([[10.0], [10.0]]), torch.tensor([-5.0, -4.0])
    x, conf, st = seq([M, M, M]), nan_conf(3), new_state(0, 3)
    lg = logits_for({0: row(0, 0.9), 1: row(1, 0.8), 2: row(2, 0.85)})
    _, tr, _ = step(lg, x, conf, st, filter_w1=w1, filter_b1=b1, filter_w2=w2, filter_b2=b2,
                    rule=4, steps=2, block_length=2, filter_threshold=0.96)
    assert positions(tr[0]) == [0, 1]


# ------------------------------------------------------------------------------------------------
# Block scheduling
# ------------------------------------------------------------------------------------------------

def test_fixed_block_opening_reads_only_the_block():
    # Prompt [0, 2), gen [2, 12), block_length 4: block [2, 6), m = 4. Positions 6.. are not read:
    # x0 = current token, conf untouched (NaN). All rows confident: threshold commits the whole block.
    x, conf, st = seq([0, 1] + [M] * 10), nan_conf(12), new_state(2, 12)
    lg = logits_for({p: row(2, 0.95) for p in range(12)})
    x0, tr, ws = step(lg, x, conf, st, rule=1, block_length=4, block_window_fraction=0.0)
    assert positions(tr[0]) == [2, 3, 4, 5]
    assert x0[0].tolist() == [0, 1, 2, 2, 2, 2] + [M] * 6
    assert torch.isnan(conf[0, 6:]).all() and torch.isnan(conf[0, :2]).all()
    s = st[0].tolist()
    assert (s[BLOCK_START], s[BLOCK_END], s[BLOCK_MASKED], s[BLOCK_REMAINING], s[STEP]) == (2, 6, 4, 0, 1)
    assert ws[0].tolist() == [0.0, 0.0, 0.0]  # w = floor(0 * 10) = 0: empty window
    # Next call opens [6, 10); the last block is [10, 12) (min(4, remaining = 2)).
    step(lg, x, conf, st, rule=1, block_length=4)
    assert (st[0, BLOCK_START], st[0, BLOCK_END]) == (6, 10)
    step(lg, x, conf, st, rule=1, block_length=4)
    assert (st[0, BLOCK_START], st[0, BLOCK_END], st[0, BLOCK_MASKED], st[0, DONE]) == (10, 12, 2, 1)


def _ada(rows, *, block_length=8, fraction=0.5, delta=0.3, L=16):
    x, conf, st = seq([M] * L), nan_conf(L), new_state(0, L)
    lg = logits_for(rows, R=L)
    x0, tr, ws = step(lg, x, conf, st, delimiter_ids=torch.tensor([DELIM]), rule=1, threshold=0.99,
                      block_length=block_length, adaptive_block=True, block_delta=delta,
                      block_window_fraction=fraction)
    return st[0, BLOCK_END].item(), st[0, BLOCK_MASKED].item(), ws[0].tolist(), conf


def test_adablock_delimiter_above_delta():
    # gen 16, fraction .5 -> w = 8 = window [0, 8). Delimiters at p2 (pprob .6) and p5 (.8): best is p5,
    # .8 >= .3 -> block [0, 6), m = 6.
    end, m, _, _ = _ada({2: row(DELIM, 0.6), 5: row(DELIM, 0.8)})
    assert (end, m) == (6, 6)


def test_adablock_delimiter_below_delta_and_ties():
    # Best delimiter pprob .25 < delta .3 -> default block [0, 8).
    end, _, _, _ = _ada({3: row(DELIM, 0.25)})
    assert end == 8
    # Two delimiters with the same pprob .7: the lower position p1 wins -> block [0, 2).
    end, _, _, _ = _ada({1: row(DELIM, 0.7), 4: row(DELIM, 0.7)})
    assert end == 2
    # pprob exactly == delta passes: row with DELIM and EOS both 0, rest -inf -> x0 = DELIM (lower id),
    # pprob = 0.5 exactly; delta = 0.5 -> block [0, 4).
    half = torch.full((V,), -INF, dtype=torch.float64)
    half[DELIM] = half[EOS] = 0.0
    assert _ada({3: half}, delta=0.5)[0] == 4


def test_adablock_window_shorter_and_longer_than_block():
    # fraction .25 -> w = 4 < block_length 8: a delimiter at p5 (.9) is outside the window -> [0, 8);
    # one at p3 (.4) inside -> [0, 4).
    assert _ada({5: row(DELIM, 0.9)}, fraction=0.25)[0] == 8
    assert _ada({3: row(DELIM, 0.4), 5: row(DELIM, 0.9)}, fraction=0.25)[0] == 4
    # block_length 4, fraction .5 -> w = 8 > 4: the span is [0, 8) and a delimiter at p6 (.5) makes the
    # block [0, 7), longer than block_length.
    end, m, _, conf = _ada({6: row(DELIM, 0.5)}, block_length=4)
    assert (end, m) == (7, 7)
    assert not torch.isnan(conf[0, :8]).any() and torch.isnan(conf[0, 8:]).all()  # rows [0, 8) were read


def test_window_stats_by_hand():
    # fraction .25 of 16 -> window [0, 4); confs .2 (low_row), .6, .2, .4 (p1 .6, p3 .4):
    # count 4, mean (.2 + .6 + .2 + .4) / 4 = .35, variance (.15² + .25² + .15² + .05²) / 4 = .0275.
    _, _, ws, _ = _ada({1: row(0, 0.6), 3: row(0, 0.4)}, fraction=0.25)
    assert ws == pytest.approx([4.0, 0.35, 0.0275], abs=1e-7)


# ------------------------------------------------------------------------------------------------
# End of text
# ------------------------------------------------------------------------------------------------

def test_eotp_committed_eos_ends_sequence():
    # gen [0, 8), block [0, 4), threshold .9. p1 predicts eos (.95), p2 token 2 (.95), p0 .5, p3 .5.
    # Committed {p1, p2}; first committed eos p1 -> END_POS = 2, [2, 8) := eos (p2's token too).
    x, conf, st = seq([M] * 8), nan_conf(8), new_state(0, 8)
    lg = logits_for({0: row(0, 0.5), 1: row(EOS, 0.95), 2: row(2, 0.95), 3: row(3, 0.5)}, R=8)
    x0, tr, _ = step(lg, x, conf, st, rule=1, threshold=0.9, block_length=4, eotp=True)
    assert x[0].tolist() == [M, EOS] + [EOS] * 6
    assert positions(tr[0]) == [1, 2, 3, 4, 5, 6, 7]
    assert not torch.isnan(conf[0]).any()  # eotp reads every masked row of the region
    s = st[0].tolist()
    # p0 is still masked: remaining in [0, min(4, 2)) = 1, not done.
    assert (s[END_POS], s[BLOCK_REMAINING], s[DONE], s[BLOCK_END]) == (2, 1, 0, 4)
    # Next step: p0 commits (argmax progress) -> done; rows >= END_POS are never read again.
    lg2 = lg.clone()
    lg2[0, 2:] = NAN  # would poison anything read there
    _, tr, _ = step(lg2, x, conf, st, rule=1, threshold=0.9, block_length=4, eotp=True)
    assert positions(tr[0]) == [0] and st[0, DONE] == 1 and x[0, 0] == 0


def test_eotp_first_committed_eos_wins():
    # Committed eos at p1 and p3 (both .95): the first, p1, ends the sequence: END_POS 2.
    x, conf, st = seq([M] * 6), nan_conf(6), new_state(0, 6)
    lg = logits_for({1: row(EOS, 0.95), 3: row(EOS, 0.95)}, R=6)
    step(lg, x, conf, st, rule=1, threshold=0.9, block_length=4, eotp=True)
    assert x[0].tolist() == [M, EOS, EOS, EOS, EOS, EOS] and st[0, END_POS] == 2


def test_eotp_best_masked_eos_candidate():
    # No committed eos: block [0, 4) commits p0 (.95). Outside the block p5 predicts eos (.6) and p6
    # eos (.7): p6 (highest conf) becomes eos, END_POS = 7, [7, 8) := eos.
    x, conf, st = seq([M] * 8), nan_conf(8), new_state(0, 8)
    lg = logits_for({0: row(0, 0.95), 5: row(EOS, 0.6), 6: row(EOS, 0.7)}, R=8)
    _, tr, _ = step(lg, x, conf, st, rule=1, threshold=0.9, block_length=4, eotp=True)
    assert x[0].tolist() == [0, M, M, M, M, M, EOS, EOS]
    assert positions(tr[0]) == [0, 6, 7]
    assert st[0, END_POS] == 7 and st[0, DONE] == 0 and st[0, BLOCK_REMAINING] == 3
    # Equal confs (.7, .7) at p5, p6: the lower position p5 ends it.
    x, conf, st = seq([M] * 8), nan_conf(8), new_state(0, 8)
    lg = logits_for({0: row(0, 0.95), 5: row(EOS, 0.7), 6: row(EOS, 0.7)}, R=8)
    step(lg, x, conf, st, rule=1, threshold=0.9, block_length=4, eotp=True)
    assert x[0].tolist() == [0, M, M, M, M, EOS, EOS, EOS] and st[0, END_POS] == 6


def test_early_stop():
    # gen [0, 8), block [0, 4) all confident, p2 predicts eos: block complete with an eos ->
    # [4, 8) := eos, END_POS = 4, done.
    x, conf, st = seq([M] * 8), nan_conf(8), new_state(0, 8)
    lg = logits_for({0: row(0, 0.95), 1: row(1, 0.95), 2: row(EOS, 0.95), 3: row(3, 0.95)}, R=8)
    _, tr, _ = step(lg, x, conf, st, rule=1, block_length=4, early_stop=True)
    assert x[0].tolist() == [0, 1, EOS, 3] + [EOS] * 4
    assert positions(tr[0]) == list(range(8))
    assert (st[0, END_POS], st[0, DONE]) == (4, 1)
    # Block complete without eos: nothing filled.
    x, conf, st = seq([M] * 8), nan_conf(8), new_state(0, 8)
    lg = logits_for({0: row(0, 0.95), 1: row(1, 0.95), 2: row(2, 0.95), 3: row(3, 0.95)}, R=8)
    step(lg, x, conf, st, rule=1, block_length=4, early_stop=True)
    assert x[0].tolist() == [0, 1, 2, 3] + [M] * 4 and st[0, END_POS] == 8 and st[0, DONE] == 0
    # Block with an eos but still a masked position (p3 low): no early stop yet.
    x, conf, st = seq([M] * 8), nan_conf(8), new_state(0, 8)
    lg = logits_for({0: row(0, 0.95), 1: row(1, 0.95), 2: row(EOS, 0.95)}, R=8)
    step(lg, x, conf, st, rule=1, block_length=4, early_stop=True)
    assert x[0].tolist() == [0, 1, EOS, M] + [M] * 4 and st[0, END_POS] == 8


# ------------------------------------------------------------------------------------------------
# Rows: shift, row_start, invalid rows
# ------------------------------------------------------------------------------------------------

def test_shift_reads_previous_row():
    # shift: position p reads row p - 1. Prompt [0, 1), gen [1, 4): rows 0, 1, 2 (tokens 0, 1, 2) land at
    # positions 1, 2, 3; row 3 (token 3, .99) belongs to no position.
    x, conf, st = seq([4, M, M, M]), nan_conf(4), new_state(1, 4)
    lg = logits_for({0: row(0, 0.95), 1: row(1, 0.95), 2: row(2, 0.95), 3: row(3, 0.99)})
    _, tr, _ = step(lg, x, conf, st, rule=1, shift=True)
    assert x[0].tolist() == [4, 0, 1, 2] and positions(tr[0]) == [1, 2, 3]


def test_row_start_window():
    # row_start = 2, R = 3: positions 2, 3, 4 read rows 0, 1, 2; positions 0, 1, 5 have no row.
    x, conf, st = seq([M] * 6), nan_conf(6), new_state(0, 6)
    lg = logits_for({0: row(0, 0.95), 1: row(1, 0.95), 2: row(2, 0.95)})
    x0, tr, _ = step(lg, x, conf, st, row_start=torch.tensor([2]), rule=1, block_length=6)
    assert x0[0].tolist() == [M, M, 0, 1, 2, M]
    assert positions(tr[0]) == [2, 3, 4]
    assert torch.isnan(conf[0, [0, 1, 5]]).all()
    assert st[0, BLOCK_REMAINING] == 3 and st[0, BLOCK_MASKED] == 6
    # With shift as well, position p reads row p - 1 - 2: positions 3, 4, 5.
    x, conf, st = seq([M] * 6), nan_conf(6), new_state(0, 6)
    x0, tr, _ = step(lg, x, conf, st, row_start=torch.tensor([2]), rule=1, block_length=6, shift=True)
    assert x0[0].tolist() == [M, M, M, 0, 1, 2]


def test_invalid_rows_never_selected():
    # Rows: p0 NaN somewhere, p1 +inf somewhere, p2 all -inf, p3 -inf mixed with finite (valid, .9),
    # p4 NaN on a suppressed id (valid after suppression). top-k past schedule (steps 1, STEP 1 via a
    # second call) would take every candidate: only p3, p4 are candidates.
    x, conf, st = seq([M] * 5), nan_conf(5), new_state(0, 5)
    lg = logits_for({3: row(2, 0.9), 4: row(3, 0.9)}, R=5)
    lg[0, 0, 4] = NAN
    lg[0, 1, 2] = INF
    lg[0, 2, :] = -INF
    lg[0, 3, 0] = -INF
    lg[0, 4, 0] = NAN
    x0, tr, _ = step(lg, x, conf, st, suppress_ids=torch.tensor([0]), rule=0, steps=1)
    assert x0[0].tolist() == [M, M, M, 2, 3]
    assert torch.isnan(conf[0, :3]).all() and not torch.isnan(conf[0, 3:]).any()
    assert positions(tr[0]) == [3, 4]
    assert st[0, BLOCK_REMAINING] == 3 and st[0, DONE] == 0
    # Threshold argmax progress never picks an invalid row either: all invalid -> nothing, stalls.
    bad = torch.full((1, 5, V), NAN)
    _, tr, _ = step(bad, x, conf, st, rule=1)
    assert positions(tr[0]) == [] and st[0, BLOCK_REMAINING] == 3 and st[0, STEP] == 2


def test_valid_row_predicting_mask_id():
    # A valid row whose argmax is mask_id: selected (transfer) but the token stays masked.
    x, conf, st = seq([M, M]), nan_conf(2), new_state(0, 2)
    lg = logits_for({0: row(MASK, 0.9), 1: row(1, 0.95)})
    _, tr, _ = step(lg, x, conf, st, rule=1, threshold=0.8)
    assert positions(tr[0]) == [0, 1] and x[0].tolist() == [M, 1]
    assert st[0, BLOCK_REMAINING] == 1 and st[0, DONE] == 0


def test_zero_conf_ids_and_conf_kinds_reach_the_buffer():
    # p0 predicts eos (.9) with eos in zero_conf_ids -> conf 0; p1 token 2 (.9) keeps .9.
    x, conf, st = seq([M, M]), nan_conf(2), new_state(0, 2)
    lg = logits_for({0: row(EOS, 0.9), 1: row(2, 0.9)})
    step(lg, x, conf, st, zero_conf_ids=torch.tensor([EOS]), rule=1, threshold=0.99)
    assert conf[0].tolist() == pytest.approx([0.0, 0.9], abs=1e-7)
    assert x[0].tolist() == [M, 2]  # argmax progress picks p1 (0.9 > 0)
    # margin: row(t, .9) -> p1 - p2 = .9 - .1 / 7.
    x, conf, st = seq([M]), nan_conf(1), new_state(0, 1)
    step(logits_for({0: row(2, 0.9)}), x, conf, st, conf_kind=1)
    assert conf[0, 0].item() == pytest.approx(0.9 - 0.1 / 7, abs=1e-7)


def test_temperature_noise_is_keyed_by_position_and_offset():
    # T = 1 with Philox: identical to passing gumbel_u built from noise_uniform(seed, offset, v, p) at the
    # row of each position (row_start = 1: row r is position r + 1).
    L = 4
    gen = torch.Generator().manual_seed(0)
    lg = torch.randn(1, L, V, generator=gen)
    seed, offset = -3, 11
    u = torch.stack([torch.from_numpy(noise_uniform(seed, offset, np.arange(V), r + 1)) for r in range(L)])
    results = []
    for gu in (None, u.unsqueeze(0)):
        x, conf, st = seq([M] * (L + 1)), nan_conf(L + 1), new_state(0, L + 1, seed=seed, offset=offset)
        x0, _, _ = step(lg, x, conf, st, row_start=torch.tensor([1]), gumbel_u=gu, rule=1, temperature=1.0)
        results.append((x0.clone(), conf.clone()))
        # by hand from the same uniforms: x0[p] = argmax(l + g)
        for r in range(L):
            g = -torch.log(-torch.log(u[r].double()))
            assert x0[0, r + 1] == int(torch.argmax(lg[0, r].double() + g))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.allclose(results[0][1], results[1][1], equal_nan=True)


# ------------------------------------------------------------------------------------------------
# Batches and state bookkeeping
# ------------------------------------------------------------------------------------------------

def test_done_sequence_untouched():
    x, conf = seq([M, M, M]), torch.tensor([[0.1, NAN, 0.3]])
    st = new_state(0, 3)
    st[0, DONE] = 1
    st[0, BLOCK_END] = 99  # even a corrupt state is not rewritten
    x_before, conf_before, st_before = x.clone(), conf.clone(), st.clone()
    x0, tr, ws = step(logits_for({0: row(0, 0.99)}, R=3), x, conf, st, rule=1)
    assert torch.equal(x, x_before) and torch.equal(st, st_before)
    assert torch.allclose(conf, conf_before, equal_nan=True)
    assert torch.equal(x0, x_before) and not tr.any() and not ws.any()


def test_batch_at_different_blocks():
    # Seq 0: gen [0, 8), block [4, 8) open (STEP 1, m 4, 2 remaining: p5, p7 masked).
    # Seq 1: fresh, gen [2, 8) -> opens [2, 6). Top-k, steps 2; block_length 4.
    L = 8
    x = torch.tensor([[0, 1, 2, 3, 4, M, 1, M], [0, 1] + [M] * 6])
    conf = nan_conf(L, B=2)
    st = torch.cat([new_state(0, 8, offset=5), new_state(2, 8, offset=0)])
    st[0, BLOCK_START], st[0, BLOCK_END], st[0, STEP], st[0, BLOCK_MASKED], st[0, BLOCK_REMAINING] = 4, 8, 1, 4, 2
    rows0 = {5: row(2, 0.6), 7: row(3, 0.7)}
    rows1 = {2: row(0, 0.9), 3: row(1, 0.5), 4: row(2, 0.8), 5: row(3, 0.7)}
    lg = torch.cat([logits_for(rows0, R=L), logits_for(rows1, R=L)])
    x_single = [x[b:b + 1].clone() for b in range(2)]
    x0, tr, _ = step(lg, x, conf, st, rule=0, steps=2, block_length=4)
    # Seq 0: k_1 = 4 // 2 = 2 -> both p5, p7; block done; sequence done.
    assert x[0].tolist() == [0, 1, 2, 3, 4, 2, 1, 3]
    assert st[0].tolist()[BLOCK_START:DONE + 1] == [4, 8, 2, 4, 0, 8, 1] and st[0, OFFSET] == 6
    # Seq 1: block [2, 6), m = 4, k_0 = 2 -> p2 (.9), p4 (.8).
    assert x[1].tolist() == [0, 1, 0, M, 2, M, M, M]
    assert st[1].tolist()[BLOCK_START:DONE + 1] == [2, 6, 1, 4, 2, 8, 0] and st[1, OFFSET] == 1
    # Batch invariance: each sequence alone gives the same result.
    for b in range(2):
        sb = torch.cat([new_state(0, 8, offset=5), new_state(2, 8, offset=0)])[b:b + 1]
        if b == 0:
            sb[0, BLOCK_START], sb[0, BLOCK_END], sb[0, STEP], sb[0, BLOCK_MASKED], sb[0, BLOCK_REMAINING] = 4, 8, 1, 4, 2
        xb, cb = x_single[b], nan_conf(L)
        x0b, trb, _ = step(lg[b:b + 1], xb, cb, sb, rule=0, steps=2, block_length=4)
        assert torch.equal(xb[0], x[b]) and torch.equal(sb[0], st[b]) and torch.equal(x0b[0], x0[b])
        assert torch.equal(trb[0], tr[b])


def test_state_bookkeeping_through_a_decode():
    # gen [0, 4), block_length 2, steps 2, top-k. Block [0, 2): m 2, k 1 per step.
    x, conf, st = seq([M] * 4), nan_conf(4), new_state(0, 4, offset=100)
    lg = logits_for({0: row(0, 0.9), 1: row(1, 0.8), 2: row(2, 0.7), 3: row(3, 0.6)})
    # (BLOCK_START, BLOCK_END, STEP, BLOCK_MASKED, BLOCK_REMAINING, END_POS, DONE, OFFSET) after each call
    expected = [
        (0, 2, 1, 2, 1, 4, 0, 101),  # opens [0, 2), commits p0
        (0, 2, 2, 2, 0, 4, 0, 102),  # commits p1, block complete
        (2, 4, 1, 2, 1, 4, 0, 103),  # opens [2, 4), commits p2
        (2, 4, 2, 2, 0, 4, 1, 104),  # commits p3: done
        (2, 4, 2, 2, 0, 4, 1, 104),  # done: untouched
    ]
    cols = [BLOCK_START, BLOCK_END, STEP, BLOCK_MASKED, BLOCK_REMAINING, END_POS, DONE, OFFSET]
    for exp in expected:
        step(lg, x, conf, st, rule=0, steps=2, block_length=2)
        assert tuple(st[0, cols].tolist()) == exp
    assert x[0].tolist() == [0, 1, 2, 3]


def test_nothing_left_to_open_sets_done_without_advancing():
    # Empty generation region: the first call finds BLOCK_END >= END_POS: DONE, no STEP/OFFSET change.
    x, conf, st = seq([1, 2]), nan_conf(2), new_state(2, 2, offset=7)
    _, tr, _ = step(logits_for({0: row(0, 0.9)}, R=2), x, conf, st, rule=1)
    assert st[0, DONE] == 1 and st[0, OFFSET] == 7 and st[0, STEP] == 0 and not tr.any()


def test_corrupt_state_is_sanitised():
    # L = 4. GEN_START 1; GEN_END 50 -> 4; BLOCK_START 1; BLOCK_END -3 -> clamped up to BLOCK_START = 1;
    # STEP -5 -> 0; BLOCK_MASKED -1 -> 0; END_POS 99 -> 4. The block opens at 1: [1, 3), m = 2; p1 commits.
    x, conf = seq([4, M, M, M]), nan_conf(4)
    st = torch.tensor([[1, 50, 1, -3, -5, -1, 0, 99, 0, 0, 0]])
    step(logits_for({1: row(0, 0.9)}, R=4), x, conf, st, rule=1, block_length=2)
    assert st[0].tolist() == [1, 4, 1, 3, 1, 2, 1, 4, 0, 0, 1]
    assert x[0].tolist() == [4, 0, M, M]


def test_end_pos_clips_the_block():
    # Block [0, 4) already open (4 remaining) with a hand-set END_POS = 3: p3 is never read and not
    # counted: BLOCK_REMAINING = masked in [0, min(4, 3)) = 0 once p0..p2 commit; DONE (no mask in [0, 3)).
    x, conf, st = seq([M] * 4), nan_conf(4), new_state(0, 4)
    st[0, BLOCK_END], st[0, BLOCK_MASKED], st[0, BLOCK_REMAINING], st[0, END_POS] = 4, 4, 4, 3
    lg = logits_for({p: row(p, 0.95) for p in range(4)})
    x0, tr, _ = step(lg, x, conf, st, rule=1, block_length=4)
    assert x0[0].tolist() == [0, 1, 2, M] and positions(tr[0]) == [0, 1, 2]
    assert st[0, BLOCK_END] == 4 and st[0, BLOCK_REMAINING] == 0 and st[0, DONE] == 1
