"""The Triton `lm_head_row_stats` (dllm_kernels/triton_lm_head_row_stats.py) against the C++ op at
small shapes (the Triton interpreter runs it on CPU: tests/conftest.py): one program per row tile
over the whole vocabulary, and the vocabulary split over several programs plus the merge."""
import pytest
import torch
import torch.nn.functional as F

import dllm_kernels as dk
from dllm_kernels.from_hidden import select_from_hidden
from dllm_kernels.row_stats import ROW_STATS_COLUMNS
from dllm_kernels.triton_lm_head_row_stats import lm_head_row_stats_triton
from test_lm_head_row_stats import _in, peaked_head
from test_select import CONF_NAMES, _draw

COL = {name: i for i, name in enumerate(ROW_STATS_COLUMNS)}
# The interpreter computes masked-out lanes too (-inf - -inf there): numpy warns, the lanes are dropped.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.mark.parametrize("splits", [1, 3], ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("conf", CONF_NAMES)
def test_triton_partials_equal_the_cpu_ones(conf, dtype, splits):
    """Odd V and d, 17 rows (two row tiles, one partly empty), a shard at vocab_start, bias,
    suppression, a row not read, sampling in one sequence: ids and maxima exact, sums to rounding."""
    gen = torch.Generator().manual_seed(4)
    B, R, V, d, start = 3, 6, 149, 37, 77
    hidden, weight, bias = _in(dtype, *peaked_head(B, R, V, d, gen, bias=True))
    positions = torch.randint(0, 40, (B, R), generator=gen)
    positions[2, 1] = -1
    args = (torch.tensor([5, 6, 7]), torch.tensor([1, 0, 2]), torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64),
            torch.tensor([start + 3, 2]), dk.CONF_KINDS[conf], start)
    cpu = torch.ops.dllm.lm_head_row_stats(hidden, weight, bias, positions, *args)
    tri = lm_head_row_stats_triton(hidden, weight, bias, positions, *args, splits=splits)
    exact = [COL[c] for c in ("idx", "noisy_idx", "bad")]
    torch.testing.assert_close(tri[..., exact], cpu[..., exact], rtol=0, atol=0)
    # the logits agree to the dtype's rounding of a float32 dot (its order differs from ATen's): in
    # bfloat16 a logit near 8 may land one ulp (2^-4) apart, which moves the sums by a few percent
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=7e-2)
    torch.testing.assert_close(tri, cpu, **tol)


def test_triton_select_from_hidden_equals_cpu():
    _, x, cand, kw = _draw(41, "threshold", "prob", torch.float32, B=2, L=12, V=97)
    gen = torch.Generator().manual_seed(2)
    R = 12 if kw.get("row_start") is None else 7
    hidden, weight, bias = peaked_head(2, R, 97, 21, gen, bias=True)
    got = select_from_hidden(hidden, weight, x.clone(), cand, bias=bias, backend="triton", **kw)
    ref = select_from_hidden(hidden, weight, x.clone(), cand, bias=bias, **kw)
    whole = dk.select(F.linear(hidden, weight, bias), x.clone(), cand, **kw)
    assert torch.equal(got.x0, ref.x0) and torch.equal(ref.x0, whole.x0)
    torch.testing.assert_close(got.conf, ref.conf, rtol=2e-5, atol=1e-6, equal_nan=True)


def test_triton_bad_inputs_match_the_cpu_messages():
    hidden, weight, _ = peaked_head(2, 3, 20, 8, torch.Generator().manual_seed(0))
    pos = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="positions must have shape"):
        lm_head_row_stats_triton(hidden, weight, None, pos[:, :2])
    with pytest.raises(RuntimeError, match=r"weight must be \[V >= 1, d = 8\]"):
        lm_head_row_stats_triton(hidden, weight[:, :5], None, pos)
    with pytest.raises(RuntimeError, match="vocab_start must be >= 0"):
        lm_head_row_stats_triton(hidden, weight, None, pos, vocab_start=-5)
