"""fused_unmask's per-sequence parameter pack: the raw op with only its required arguments,
per-request policies in one batch (each row as if decoded alone with its own Policy, on the C++
op, the Triton kernels under the interpreter and the float64 reference), and no recompile under
torch.compile when a number changes. The CUDA-graph replay with a changed threshold is the GPU
test at the end."""
import os

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.fused_unmask_params import UNMASK_DEFAULTS, UNMASK_PARAM_COLUMNS, pack_unmask_params
from fused_unmask_cases import make_batch, peaked_logits

B, L, V = 3, 24, 48
MASK, EOS = V - 1, V - 2
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
BACKENDS = ["native", "reference"] + (["triton"] if INTERPRETING or torch.cuda.is_available() else [])


def test_columns_and_defaults_come_from_the_native_list():
    names, defaults, kinds = torch.ops.dllm.fused_unmask_param_columns()
    assert tuple(names) == UNMASK_PARAM_COLUMNS and names[0] == "steps"
    select_names, _, select_kinds = torch.ops.dllm.select_param_columns()
    assert names[1:len(select_names)] == select_names[1:]  # the rules' columns at the same indices
    assert kinds[1:len(select_kinds)] == select_kinds[1:]
    kind = dict(zip(names, kinds))
    assert (kind["steps"], kind["window"], kind["factor"], kind["block_delta"]) == ("whole1", "whole0", "finite0", "unit")
    assert dict(zip(select_names, select_kinds))["k"] == "whole0"
    assert dk.Policy().block_length == UNMASK_DEFAULTS["block_length"] == 32
    assert dk.Policy().block_delta == UNMASK_DEFAULTS["block_delta"]


def test_raw_op_with_only_required_arguments():
    """Schema defaults: every optional tensor None, the pack's defaults (rule top-k, steps 1, a
    32-position block): the first step commits the whole first block."""
    gen = torch.Generator().manual_seed(0)
    logits = peaked_logits(2, 40, V, torch.float32, gen)
    x = torch.full((2, 40), MASK)
    st = dk.DecodeState.new(2, 40, gen_start=0)
    x0, transfer, _ = torch.ops.dllm.fused_unmask(logits, x, st.conf, st.state, mask_id=MASK, eos_id=EOS)
    assert transfer[:, :32].all() and not transfer[:, 32:].any()
    assert torch.equal(x[:, :32], logits[:, :32].argmax(-1))
    ref = dk.fused_unmask(logits, torch.full((2, 40), MASK), dk.DecodeState.new(2, 40, gen_start=0),
                          dk.Policy(steps=1), mask_id=MASK, eos_id=EOS)
    assert torch.equal(ref.x0, x0)


def _decode(logits_steps, batch, policy, backend, rows=None, params=None):
    """Steps `rows` of the batch (default: all) through fused_unmask; returns (x, state, transfers)."""
    rows = list(range(B)) if rows is None else rows
    x = batch.x[rows].clone()
    st = dk.DecodeState(batch.state.state[rows].clone(), batch.state.conf[rows].clone())
    transfers = []
    for logits in logits_steps:
        out = dk.fused_unmask(logits[rows].contiguous(), x, st, policy, mask_id=batch.mask_id,
                              eos_id=batch.eos_id, params=params, backend=backend)
        transfers.append(out.transfer)
    return x, st.state, torch.stack(transfers)


# Per-request values for rows 0, 1, 2, and the Policy each row would have alone.
CASES = {
    "threshold": (dict(rule="threshold", block_length=8),
                  dict(threshold=torch.tensor([0.3, 0.9, 0.6]), temperature=torch.tensor([0.0, 0.0, 0.8]))),
    "topk": (dict(rule="topk", steps=4, block_length=8),
             dict(steps=torch.tensor([2, 4, 8]), block_length=torch.tensor([8, 6, 12]))),
    "topk-steps-follow-block": (dict(rule="topk"),
                                dict(block_length=torch.tensor([4, 8, 6]))),
    "factor": (dict(rule="factor", block_length=8, eotp=True),
               dict(factor=torch.tensor([0.5, 2.0, 1.0]), block_window_fraction=torch.tensor([0.1, 0.3, 0.5]))),
    "localleap": (dict(rule="localleap", block_length=12, graded=True),
                  dict(anchor_threshold=torch.tensor([0.7, 0.9, 0.5]), relaxed_threshold=torch.tensor([0.3, 0.6, 0.2]),
                       window=torch.tensor([1, 4, 2]))),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_per_request_params_equal_each_row_alone(case, backend):
    base, per_row = CASES[case]
    gen = torch.Generator().manual_seed(len(case))
    batch = make_batch(B, L, V, gen, gen_starts=[0, 3, 5], mid_block=False)
    logits_steps = [peaked_logits(B, L, V, torch.float32, gen, spread=8.0) for _ in range(3)]
    policy = dk.Policy(**base)
    together = _decode(logits_steps, batch, policy, backend, params=per_row)
    for b in range(B):
        own = {name: v[b].item() for name, v in per_row.items()}
        if "steps" in own or (policy.steps is None and "block_length" in own):
            own["steps"] = int(own.get("steps", own.get("block_length")))
        own = {k: (int(v) if k in ("steps", "block_length", "window") else v) for k, v in own.items()}
        alone = _decode(logits_steps, batch, dk.Policy(**dict(base, **own)), backend, rows=[b])
        for got, ref, what in zip(together, alone, ("x", "state", "transfer")):
            assert torch.equal(got[b:b + 1] if what != "transfer" else got[:, b:b + 1], ref), f"row {b}: {what}"
    # The rows really differ in policy: the batch's decisions are not those of any one of them.
    assert together[2].any()


def test_overrides_are_checked():
    x = torch.full((2, 8), MASK)
    st = dk.DecodeState.new(2, 8, gen_start=0)
    logits = torch.randn(2, 8, V)
    with pytest.raises(ValueError, match="factor does not apply to rule 'threshold'"):
        dk.fused_unmask(logits, x, st, dk.Policy(rule="threshold"), mask_id=MASK, eos_id=EOS,
                        params={"factor": 0.5})
    with pytest.raises(ValueError, match="unknown parameter 'k'"):
        dk.fused_unmask(logits, x, st, dk.Policy(), mask_id=MASK, eos_id=EOS, params={"k": 2})
    with pytest.raises(ValueError, match="threshold must be in"):
        dk.fused_unmask(logits, x, st, dk.Policy(rule="threshold"), mask_id=MASK, eos_id=EOS,
                        params={"threshold": 1.5})
    bad = pack_unmask_params(2, "cpu", {"threshold": torch.tensor([0.5, 1.5])})  # tensors: the op checks
    with pytest.raises(RuntimeError, match="threshold must be in .0, 1., got 1.5 for sequence 1"):
        torch.ops.dllm.fused_unmask(logits, x, st.conf, st.state, MASK, EOS, params=bad, rule=1)
    with pytest.raises(RuntimeError, match="params must have shape"):
        torch.ops.dllm.fused_unmask(logits, x, st.conf, st.state, MASK, EOS, params=bad[:, :4].contiguous())


def test_torch_compile_no_recompile_when_numbers_change():
    """Threshold, steps, block length and temperature as [B] tensors: one compiled frame serves
    every value, and the values take effect."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    policy = dk.Policy(rule="topk", steps=8, block_length=8)

    @torch.compile(backend=counter, fullgraph=True)
    def step(logits, x, state, conf, steps, block_length, temperature):
        st = dk.DecodeState(state, conf)
        out = dk.fused_unmask(logits, x, st, policy, mask_id=MASK, eos_id=EOS,
                              params=dict(steps=steps, block_length=block_length, temperature=temperature))
        return out.transfer.sum(1)

    threshold_counter = CompileCounter()
    thr_policy = dk.Policy(rule="threshold", block_length=16)

    @torch.compile(backend=threshold_counter, fullgraph=True)
    def thr_step(logits, x, state, conf, threshold):
        st = dk.DecodeState(state, conf)
        return dk.fused_unmask(logits, x, st, thr_policy, mask_id=MASK, eos_id=EOS,
                               params=dict(threshold=threshold)).transfer.sum(1)

    gen = torch.Generator().manual_seed(3)
    logits = peaked_logits(2, 16, V, torch.float32, gen)
    counts, thr_counts = [], []
    for steps, block, temp in ((8, 8, 0.0), (2, 8, 0.0), (1, 16, 0.5), (4, 4, 1.0)):
        fresh = dk.DecodeState.new(2, 16, gen_start=0)
        n = step(logits, torch.full((2, 16), MASK), fresh.state, fresh.conf, torch.full((2,), float(steps)),
                 torch.full((2,), float(block)), torch.full((2,), temp))
        counts.append(n.tolist())
    for thr in (0.95, 0.5, 0.05):
        fresh = dk.DecodeState.new(2, 16, gen_start=0)
        thr_counts.append(int(thr_step(logits, torch.full((2, 16), MASK), fresh.state, fresh.conf,
                                       torch.full((2,), thr)).sum()))
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} frames"
    assert threshold_counter.frame_count == 1, f"recompiled: {threshold_counter.frame_count} frames"
    assert counts[:3] == [[1, 1], [4, 4], [16, 16]] and counts[3] == [1, 1], counts  # steps / block took effect
    assert thr_counts[0] <= thr_counts[1] <= thr_counts[2] and thr_counts[0] < thr_counts[2], thr_counts


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_with_a_changed_threshold():
    """One capture; the threshold is data in the pack: replays after writing a new value give that
    value's decisions (as an eager call with it)."""
    Bg, Lg, Vg = 2, 32, 4099
    gen = torch.Generator().manual_seed(8)
    logits = peaked_logits(Bg, Lg, Vg, torch.bfloat16, gen).cuda()
    policy = dk.Policy(rule="threshold", block_length=32)
    fresh = dk.DecodeState.new(Bg, Lg, gen_start=0, device="cuda")
    x0 = torch.full((Bg, Lg), Vg - 1, device="cuda")
    kw = policy.op_arguments("cuda", Vg, Bg)
    params = kw.pop("params").clone()
    static = [x0.clone(), fresh.state.clone(), fresh.conf.clone()]

    def step():
        return torch.ops.dllm.fused_unmask(logits, static[0], static[2], static[1], Vg - 1, Vg - 2,
                                           params=params, **kw)[1]

    step()  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        transfer = step()
    for thr in (0.99, 0.3):
        params[:, UNMASK_PARAM_COLUMNS.index("threshold")] = thr
        static[0].copy_(x0), static[1].copy_(fresh.state), static[2].copy_(fresh.conf)
        graph.replay()
        torch.cuda.synchronize()
        x_e, st_e = x0.clone(), fresh.clone()
        eager = dk.fused_unmask(logits, x_e, st_e, dk.Policy(rule="threshold", block_length=32, threshold=thr),
                                mask_id=Vg - 1, eos_id=Vg - 2)
        assert torch.equal(transfer, eager.transfer) and torch.equal(static[0], x_e), thr
