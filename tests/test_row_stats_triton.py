"""The Triton `row_stats` (dllm_kernels/triton_row_stats.py) against the C++ op, and the Triton
`select(..., row_stats=)` against the C++ one, on small draws (the Triton interpreter runs them
on CPU: tests/conftest.py)."""
import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.row_stats import ROW_STATS_COLUMNS, row_positions
from dllm_kernels.triton_row_stats import row_stats_triton
from test_row_stats import _cuts, _positions, sliced_row_stats
from test_select import CONF_NAMES, RULE_NAMES, _draw
from fused_unmask_cases import peaked_logits

COL = {name: i for i, name in enumerate(ROW_STATS_COLUMNS)}
SMALL = dict(B=2, L=12, V=97)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("conf", CONF_NAMES)
def test_triton_partials_equal_the_cpu_ones(conf, dtype):
    """Ids, maxima and sampled winners exact; the sums to float rounding (tile order differs)."""
    gen = torch.Generator().manual_seed(4)
    B, R, V, start = 3, 4, 150, 77
    logits = peaked_logits(B, R, V, dtype, gen)
    positions = torch.randint(0, 40, (B, R), generator=gen)
    positions[2, 1] = -1
    kw = dict(seed=torch.tensor([5, 6, 7]), offset=torch.tensor([1, 0, 2]),
              temperature=torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    sup = torch.tensor([start + 3, 2])
    cpu = dk.row_stats(logits, positions, suppress_ids=sup, conf=conf, vocab_start=start, **kw)
    tri = row_stats_triton(logits, positions, kw["seed"], kw["offset"], kw["temperature"], None, sup,
                           dk.CONF_KINDS[conf], start, block_v=64)
    exact = [COL[c] for c in ("m1", "idx", "noisy_best", "noisy_clean", "noisy_idx", "bad")]
    if conf == "margin":
        exact.append(COL["m2"])
    torch.testing.assert_close(tri[..., exact], cpu[..., exact], rtol=0, atol=0)
    torch.testing.assert_close(tri, cpu, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("conf", CONF_NAMES)
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_triton_select_from_slices_equals_cpu(rule, conf):
    logits, x, cand, kw = _draw(31, rule, conf, torch.float32, **SMALL)
    V = logits.shape[-1]
    cuts = _cuts(V, torch.Generator().manual_seed(1), 3)
    stats = sliced_row_stats(logits, _positions(logits, x, kw), kw, cuts, backend="triton")
    got = dk.select(None, x.clone(), cand, row_stats=stats, vocab_size=V, backend="triton", **kw)
    ref = dk.select(None, x.clone(), cand, row_stats=stats, vocab_size=V, **kw)
    torch.testing.assert_close(got.x0, ref.x0, rtol=0, atol=0)
    # exp differs by an ulp between the backends (tl.exp, expf): conf to rounding
    torch.testing.assert_close(got.conf, ref.conf, rtol=2e-6, atol=1e-7, equal_nan=True)
    torch.testing.assert_close(got.transfer, ref.transfer, rtol=0, atol=0)


def test_triton_bad_inputs_match_the_cpu_messages():
    logits = peaked_logits(2, 3, 20, torch.float32, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="positions must have shape"):
        row_stats_triton(logits, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="vocab_start must be >= 0"):
        row_stats_triton(logits, row_positions(2, 3), vocab_start=-5)
    stats = dk.row_stats(logits, row_positions(2, 3))[None]
    x = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="row_stats needs vocab_size >= 2"):
        dk.select(None, x, row_stats=stats, vocab_size=1, backend="triton")


@pytest.mark.parametrize("policy_kw", [dict(rule="threshold", threshold=0.5, adaptive_block=True, delimiter_ids=(3,)),
                                       dict(rule="topk", steps=2, temperature=0.7, eotp=True, conf="margin")],
                         ids=lambda kw: kw["rule"])
def test_triton_fused_unmask_from_slices_equals_cpu(policy_kw):
    import dllm_kernels.state as S

    from fused_unmask_cases import make_batch

    gen = torch.Generator().manual_seed(3)
    B, L, V = 2, 12, 61
    batch = make_batch(B, L, V, gen, block_length=4)
    policy = dk.Policy(block_length=4, **policy_kw)
    logits = peaked_logits(B, L, V, torch.float32, gen)
    positions = row_positions(B, L)
    temperature = torch.full((B,), policy.temperature, dtype=torch.float64)
    st = batch.state
    parts = torch.stack([
        dk.row_stats(logits[:, :, lo:hi].contiguous(), positions, seed=st.state[:, S.SEED].contiguous(),
                     offset=st.state[:, S.OFFSET].contiguous(), temperature=temperature, conf=policy.conf,
                     vocab_start=lo) for lo, hi in ((0, 30), (30, V))])
    outs = []
    for backend in ("auto", "triton"):
        x, s = batch.x.clone(), dk.DecodeState(st.state.clone(), st.conf.clone())
        r = dk.fused_unmask(None, x, s, policy, mask_id=batch.mask_id, eos_id=batch.eos_id, row_stats=parts,
                            vocab_size=V, backend=backend)
        outs.append((x, s.state, s.conf, r.x0, r.transfer))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7, equal_nan=True)
