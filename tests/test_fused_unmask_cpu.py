"""The C++ CPU fused_unmask against the float64 reference, decision for decision."""
import pytest

import dllm_kernels  # noqa: F401  (loads the op)
from scenario_runner import run_scenario
from unmask_cases import DTYPES, Scenario, cpu_op  # noqa: F401  (cpu_op: also used by other test files)


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
