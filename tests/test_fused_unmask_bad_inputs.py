"""Every argument of fused_unmask with each wrong kind of value: a clear error naming it, no crash."""
import math
import warnings

import pytest
import torch

import dllm_kernels as dk
from fused_unmask_cases import op_positional

B, L, V = 2, 6, 20
def good_args():
    st = dk.DecodeState.new(B, L, gen_start=1)
    return dict(logits=torch.randn(B, L, V), x=torch.full((B, L), V - 1), conf=st.conf, state=st.state,
                row_start=torch.zeros(B, dtype=torch.int64), gumbel_u=None, rank_u=None,
                suppress_ids=torch.tensor([2]), zero_conf_ids=torch.tensor([3]), delimiter_ids=torch.tensor([4]),
                filter_w1=torch.randn(4, 8), filter_b1=torch.randn(4), filter_w2=torch.randn(8, 4),
                filter_b2=torch.randn(8), mask_id=V - 1, eos_id=V - 2, rule=4, conf_kind=0, temperature=0.0,
                shift=False, steps=2, threshold=0.9, factor=1.0, anchor_threshold=0.9, relaxed_threshold=0.75,
                window=4, graded=False, filter_threshold=0.96, random_remasking=False, block_length=4,
                adaptive_block=True, block_delta=0.3, block_window_fraction=0.25, eotp=True, early_stop=False)


def call(args):
    pos, kw = op_positional(**args)  # the numbers go into the (unchecked) pack: the op checks them
    return torch.ops.dllm.fused_unmask(*pos, **kw)


# (argument, bad value builder, text the error must contain)
CASES = [
    ("logits", lambda a: a["logits"].to(torch.float64), "logits must be float32, float16 or bfloat16"),
    ("logits", lambda a: a["logits"].to(torch.int32), "logits must be float32"),
    ("logits", lambda a: a["logits"][0], "logits must be 3-D"),
    ("logits", lambda a: a["logits"].transpose(1, 2).contiguous().transpose(1, 2), "contiguous along the vocab"),
    ("logits", lambda a: torch.randn(0, L, V), "empty batch"),
    ("logits", lambda a: torch.randn(B, L, 1), "vocabulary of at least 2"),
    ("logits", lambda a: torch.randn(B + 1, L, V), "x must be [B, L] with B = 3"),
    ("x", lambda a: a["x"].to(torch.int32), "x must be Long"),
    ("x", lambda a: a["x"][:, None], "x must be [B, L]"),
    ("x", lambda a: torch.full((L, B), V - 1).t(), "x must be contiguous"),
    ("x", lambda a: torch.zeros(B, 0, dtype=torch.int64), "x must have at least one position"),
    ("conf", lambda a: a["conf"].double(), "conf must be Float"),
    ("conf", lambda a: a["conf"][:, :-1], "conf must have shape"),
    ("state", lambda a: a["state"][:, :10].contiguous(), "state must have shape"),
    ("state", lambda a: a["state"].int(), "state must be Long"),
    ("row_start", lambda a: torch.zeros(B + 1, dtype=torch.int64), "row_start must have shape"),
    ("row_start", lambda a: torch.zeros(B, dtype=torch.int32), "row_start must be Long"),
    ("row_start", lambda a: torch.tensor([0, -1]), "row_start must be >= 0, got -1"),
    ("logits", lambda a: torch.randn(B, L + 1, V), "logits has R = 7 rows, more than the L = 6 positions"),
    ("gumbel_u", lambda a: torch.rand(B, L, V - 1), "gumbel_u must have shape"),
    ("gumbel_u", lambda a: torch.rand(B, L, V).double(), "gumbel_u must be Float"),
    ("rank_u", lambda a: torch.rand(B, L + 1), "rank_u must have shape"),
    ("suppress_ids", lambda a: torch.tensor([V]), "suppress_ids holds ids outside [0, 20)"),
    ("suppress_ids", lambda a: torch.tensor([-1]), "suppress_ids holds ids outside"),
    ("suppress_ids", lambda a: torch.tensor([[1]]), "suppress_ids must be 1-D"),
    ("zero_conf_ids", lambda a: torch.tensor([1.0]), "zero_conf_ids must be int64"),
    ("delimiter_ids", lambda a: torch.tensor([V + 5]), "delimiter_ids holds ids outside"),
    ("filter_w1", lambda a: None, "go together"),
    ("filter_w1", lambda a: torch.randn(4, 200), "filter width must be 1..128"),
    ("filter_b1", lambda a: torch.randn(5), "filter_b1 must have shape"),
    ("filter_w2", lambda a: torch.randn(8, 4).double(), "filter_w2 must be Float"),
    ("filter_b2", lambda a: torch.randn(7), "filter_b2 must have shape"),
    ("mask_id", lambda a: V, "mask_id must be in [0, 20)"),
    ("mask_id", lambda a: -1, "mask_id must be in"),
    ("eos_id", lambda a: V + 1, "eos_id must be in"),
    ("eos_id", lambda a: V - 1, "eos_id must differ from mask_id"),
    ("rule", lambda a: 5, "rule must be 0..4"),
    ("conf_kind", lambda a: -1, "conf_kind must be 0..2"),
    ("temperature", lambda a: -0.5, "temperature must be finite and >= 0"),
    ("temperature", lambda a: math.nan, "temperature must be finite"),
    ("temperature", lambda a: math.inf, "temperature must be finite"),
    ("steps", lambda a: 0, "steps must be >= 1"),
    ("block_length", lambda a: 0, "block_length must be >= 1"),
    ("window", lambda a: -1, "window must be >= 0"),
    ("factor", lambda a: -1.0, "factor must be finite and >= 0"),
    ("factor", lambda a: math.nan, "factor must be finite"),
] + [(name, (lambda v: lambda a: v)(bad), f"{name} must be in [0, 1]")
     for name in ("threshold", "anchor_threshold", "relaxed_threshold", "filter_threshold", "block_delta",
                  "block_window_fraction")
     for bad in (-0.1, 1.5, math.nan)]


def test_good_arguments_run():
    call(good_args())


@pytest.mark.parametrize("name,make_bad,message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_argument_is_rejected_with_its_name(name, make_bad, message):
    args = good_args()
    x_before = args["x"].clone()
    args[name] = make_bad(args)
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        call(args)
    if name != "x":
        assert torch.equal(args["x"], x_before)  # nothing was written before the check failed


def test_filter_rule_needs_weights():
    args = good_args()
    for k in ("filter_w1", "filter_b1", "filter_w2", "filter_b2"):
        args[k] = None
    with pytest.raises(RuntimeError, match="rule 4 .learned filter. needs filter_w1"):
        call(args)


def test_meta_device_mix_is_rejected():
    args = good_args()
    args["row_start"] = torch.zeros(B, dtype=torch.int64, device="meta")
    with pytest.raises(RuntimeError, match="row_start is on meta but logits is on cpu"):
        call(args)


@pytest.mark.parametrize("field,value,message", [
    ("rule", "greedy", "rule must be one of"), ("conf", "max", "conf must be one of"),
    ("threshold", 1.2, "threshold must be in"), ("steps", 0, "steps must be an int"),
    ("temperature", -1.0, "temperature must be"), ("suppress_ids", (-3,), "suppress_ids must hold"),
    ("steps", True, "steps must be an int"), ("block_length", True, "block_length must be an int"),
    ("window", False, "window must be an int"), ("threshold", True, "threshold must be in"),
    ("temperature", True, "temperature must be"), ("factor", True, "factor must be"),
    ("suppress_ids", 5.0, "suppress_ids must be a token id or a sequence of token ids, got float"),
    ("zero_conf_ids", (True,), "zero_conf_ids must hold non-negative token ids"),
])
def test_policy_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        dk.Policy(**{field: value})


def test_policy_ids_beyond_vocab_and_wrapper_types():
    x = torch.full((1, 4), 9)
    st = dk.DecodeState.new(1, 4, gen_start=0)
    with pytest.raises(ValueError, match="suppress_ids holds ids >= vocab size 10"):
        dk.fused_unmask(torch.randn(1, 4, 10), x, st, dk.Policy(suppress_ids=(12,)), mask_id=9, eos_id=8)
    with pytest.raises(TypeError, match="policy must be a dllm_kernels.Policy"):
        dk.fused_unmask(torch.randn(1, 4, 10), x, st, {"rule": "topk"}, mask_id=9, eos_id=8)
    with pytest.raises(ValueError, match="backend must be one of"):
        dk.fused_unmask(torch.randn(1, 4, 10), x, st, dk.Policy(), mask_id=9, eos_id=8, backend="fast")
    with pytest.raises(ValueError, match="gen_start <= gen_end"):
        dk.DecodeState.new(1, 4, gen_start=5)


def test_single_id_is_a_one_element_list():
    """An int where a list of ids goes is that one id (a 1-D tensor is accepted too)."""
    assert dk.Policy(suppress_ids=5).suppress_ids == (5,)
    assert dk.Policy(zero_conf_ids=torch.tensor([3, 4])).zero_conf_ids == (3, 4)
    logits = torch.zeros(1, 2, 10)
    logits[:, :, 5] = 10.0  # the favourite token, suppressed
    logits[:, :, 7] = 5.0
    x = torch.full((1, 2), 9)
    out = dk.fused_unmask(logits, x, dk.DecodeState.new(1, 2, gen_start=0), dk.Policy(suppress_ids=5, steps=1),
                          mask_id=9, eos_id=8)
    assert x.tolist() == [[7, 7]] and out.transfer.all()


def test_seed_outside_int64_is_rejected():
    with pytest.raises(ValueError, match=r"seed must be int64, in \[-9223372036854775808, 9223372036854775807\]"):
        dk.DecodeState.new(1, 4, gen_start=0, seed=2 ** 70)
    with pytest.raises(ValueError, match="seed must be int64"):
        dk.DecodeState.new(2, 4, gen_start=0, seed=[1, -(2 ** 64)])
    assert dk.DecodeState.new(1, 4, gen_start=0, seed=2 ** 63 - 1).state[0, dk.state.SEED] == 2 ** 63 - 1


@pytest.mark.parametrize("fields,unused", [
    (dict(rule="topk", threshold=0.5), "threshold is unused by rule 'topk'"),
    (dict(rule="threshold", steps=4), "steps is unused by rule 'threshold'"),
    (dict(rule="factor", graded=True), "graded is unused by rule 'factor'"),
    (dict(rule="localleap", random_remasking=True), "random_remasking is unused by rule 'localleap'"),
])
def test_field_the_rule_does_not_read_warns(fields, unused):
    with pytest.warns(UserWarning, match=unused):
        dk.Policy(**fields)


@pytest.mark.parametrize("fields", [dict(rule="topk", threshold=0.9), dict(rule="threshold", threshold=0.5),
                                    dict(rule="topk", steps=4), dict(rule="localleap", window=2, graded=True)])
def test_default_or_used_fields_do_not_warn(fields):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dk.Policy(**fields)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_rows_beyond_l_and_negative_row_start_through_the_wrapper(backend):
    x = torch.full((1, 4), 9)
    st = dk.DecodeState.new(1, 4, gen_start=0)
    pol = dk.Policy(steps=1)
    with pytest.raises((RuntimeError, ValueError), match="logits has R = 5 rows, more than the L = 4"):
        dk.fused_unmask(torch.randn(1, 5, 10), x, st, pol, mask_id=9, eos_id=8, backend=backend)
    with pytest.raises((RuntimeError, ValueError), match="row_start must be >= 0, got -2"):
        dk.fused_unmask(torch.randn(1, 4, 10), x, st, pol, mask_id=9, eos_id=8, backend=backend,
                        row_start=torch.tensor([-2]))
    assert (x == 9).all()
