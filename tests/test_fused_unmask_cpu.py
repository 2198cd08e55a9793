"""The C++ CPU fused_unmask against the float64 reference, decision for decision."""
import math

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.reference.philox import noise_uniform
from scenario_runner import run_scenario
from fused_unmask_cases import DTYPES, Scenario, cpu_op  # noqa: F401  (cpu_op: also used by other test files)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("conf_kind", [0, 1, 2])
@pytest.mark.parametrize("rule", range(5))
def test_every_rule_conf_kind_dtype(rule, conf_kind, dtype):
    compared = 0
    for seed in range(3):
        sc = Scenario.draw(1000 * rule + 100 * conf_kind + 10 * DTYPES.index(dtype) + seed,
                           rule=rule, conf_kind=conf_kind, dtype=dtype)
        c, _ = run_scenario(cpu_op, sc, steps=3)
        compared += c
    assert compared > 0


@pytest.mark.parametrize("seed", range(60))
def test_random_scenarios(seed):
    sc = Scenario.draw(seed)
    compared, skipped = run_scenario(cpu_op, sc, steps=4)
    assert compared >= skipped, f"too many ambiguous steps ({skipped}) for {sc}"


# ---- Gumbel noise pruning (row_stats skips the noise of entries that cannot win) ----------------

U_MAX = 1.0 - 2.0 ** -24  # the largest uniform the generators give: noise -log(-log u) = 16.6355


def _sample_rows(logits, temperature, gumbel_u=None, suppress=()):
    """x0 of every row from the C++ op and from the float64 reference (one block = all rows)."""
    B, R, V = logits.shape
    mask_id, eos_id = V - 1, V - 2
    policy = dk.Policy(rule="threshold", threshold=0.9, block_length=R, temperature=temperature,
                       suppress_ids=tuple(suppress))
    out = []
    for backend in ("native", "reference"):
        x = torch.full((B, R), mask_id)
        st = dk.DecodeState.new(B, R, gen_start=0, seed=11)
        out.append(dk.fused_unmask(logits, x, st, policy, mask_id=mask_id, eos_id=eos_id, gumbel_u=gumbel_u,
                                   backend=backend).x0)
    return out


def _clear_winner(noisy):
    """Rows whose best noisy value leads the runner-up by more than float32 rounding can blur."""
    top2 = noisy.topk(2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]) > 1e-4 * (1 + top2[..., 0].abs())


@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0])
def test_noise_pruning_keeps_edge_candidates(temperature):
    """Rows built on the pruning edge: the peak P gets u = 0.5, and a far-below candidate gets the
    largest uniform with a value that beats (or just misses) P's noisy value by 1% of T. Some rows
    suppress the peak (no seed bound). The sample must be the reference's in every row."""
    V, R = 3001, 24
    g = torch.Generator().manual_seed(int(temperature * 1000))
    logits = torch.randn(1, R, V, generator=g, dtype=torch.float64) * 3 - 5
    u = torch.rand(1, R, V, generator=g, dtype=torch.float64).clamp(1e-6, 0.999).float()
    g_half, g_max = -math.log(-math.log(0.5)), -math.log(-math.log(U_MAX))
    want = []
    for r in range(R):
        peak, cand = (7 * r + 3) % (V - 2), (13 * r + 1000) % (V - 2)
        P = 20.0 + r % 5
        logits[0, r, peak], u[0, r, peak] = P, 0.5
        delta = 0.01 * temperature * (1 if r % 2 else -1)
        logits[0, r, cand] = P + temperature * g_half - temperature * g_max + delta
        u[0, r, cand] = U_MAX
        want.append(cand if delta > 0 else peak)
    logits = logits.float()
    mine, ref = _sample_rows(logits, temperature, gumbel_u=u)
    assert torch.equal(mine, ref)
    assert mine[0].tolist() == want
    # The peak suppressed: no seed bound, and the candidate must still be found among the rest.
    mine, ref = _sample_rows(logits[:, :1], temperature, gumbel_u=u[:, :1].contiguous(),
                             suppress=(3,))
    assert torch.equal(mine, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [0.02, 0.2, 1.0])
def test_noise_pruning_on_wide_rows_with_philox(dtype, temperature):
    """Language-model-like rows (a wide bulk far below a few peaks), Philox noise: what pruning
    skips most. Every row with a clear winner gets the reference's sample."""
    V, R = 2053, 32
    g = torch.Generator().manual_seed(int(temperature * 100) + len(str(dtype)))
    logits = torch.randn(1, R, V, generator=g) * 3 - 5
    top = torch.randint(0, V - 2, (1, R, 5), generator=g)
    logits.scatter_(2, top, torch.rand(1, R, 5, generator=g) * 10 + 15)
    logits = logits.to(dtype)
    mine, ref = _sample_rows(logits, temperature)
    # The reference's own noisy values (Philox keyed by seed 11, offset 0, position r) find near-ties.
    u = torch.stack([torch.as_tensor(noise_uniform(11, 0, torch.arange(V).numpy(), r)) for r in range(R)])
    noisy = logits[0].double() + temperature * -torch.log(-torch.log(u.double()))
    clear = _clear_winner(noisy)
    assert clear.sum() >= R - 2
    assert torch.equal(mine[0][clear], ref[0][clear])
    assert torch.equal(ref[0][clear], noisy.argmax(-1)[clear])
