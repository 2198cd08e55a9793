"""bench/bench_fused_unmask.py's block-length sweep at toy sizes, so the script cannot rot between the
runs that time it (its numbers live in bench/results/, never in a test)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_fused_unmask  # noqa: E402,F401  (the CLI around the sweep imports cleanly)
import fused_unmask_block_sweep as sweep  # noqa: E402


def test_block_sweep_rows(capsys):
    calls = []

    def time_step(call, logits, make_inputs, repeats):
        x, st = make_inputs()
        call(logits, x, st)
        calls.append((tuple(logits.shape), int((x != logits.shape[-1] - 1).sum())))
        return float(len(calls))

    rows = sweep.run(time_step, 1, {"device": "test"}, blocks=(16, 32), vocabs=(40,))
    assert [(r["block"], r["backend"]) for r in rows] == [(16, "auto"), (32, "auto")]
    assert rows[1]["growth_per_doubling"] == rows[1]["fused_us"] / rows[0]["fused_us"]
    assert all(0 < r["policy_share"] <= 1 and r["eager_float64_us"] for r in rows)
    # Per block: the eager step, then the fused step and the V = 16 probe, each a real top-k step
    # committing n / 8 positions (fewer where a prediction is the mask id itself).
    assert [shape for shape, _ in calls] == [(1, 16, 40), (1, 16, 40), (1, 16, 16),
                                             (1, 32, 40), (1, 32, 40), (1, 32, 16)]
    assert all(1 <= n <= shape[1] // 8 for shape, n in calls)
    assert "x per doubling" in capsys.readouterr().out

