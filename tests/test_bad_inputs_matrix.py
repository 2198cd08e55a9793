"""The bad-input matrix across ops and entry points, filling the gaps of the per-op tables.

tests/test_fused_unmask_bad_inputs.py holds fused_unmask's table for the C++ op and
tests/test_block_attention.py block_attention's for the wrapper and the op. Here:

* fused_unmask: the rows that table lacks (device mix, contiguity and rank of every tensor
  argument, dtype of every index/float tensor, +-inf thresholds, huge ids and lengths, rule /
  conf_kind below range, a consistent empty batch and V = 1), each run through the C++ op AND the
  Triton entry point; the existing table is also replayed through the Triton entry point (its
  messages spell dtypes the torch way: int64 for Long).
* block_attention: the missing rows (every tensor on another device, every dtype / rank / shape /
  last-dim stride, scale 0 / inf, mode and block_size out of range, huge ids, Lmax = 0, non-tensor
  arguments), through the wrapper, the raw op, the Triton launcher's checks and the fake
  (torch.compile / FakeTensor) implementation.
* Values the ops do not check (uniforms of gumbel_u / rank_u outside (0, 1), NaN): the result is
  unspecified but every written token stays a vocabulary id.

Every rejection must be a ValueError / RuntimeError whose message names the argument, and a
rejected call writes nothing (x, conf, state, caches unchanged).
"""
from __future__ import annotations

import importlib
import math
import re

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels.triton_fused_unmask import fused_unmask_triton
from test_fused_unmask_bad_inputs import B, CASES, L, V, good_args
from fused_unmask_cases import op_positional

attn_mod = importlib.import_module("dllm_kernels.block_attention")  # the module: the package's attribute is the op

# ---------------------------------------------------------------------------------------------
# fused_unmask

_META = "meta"


def _ids(*v, **kw):
    return torch.tensor(v, dtype=kw.get("dtype", torch.int64))


# (argument, label, bad value builder, regex the message must match: names the argument)
UNMASK_ROWS = [
    # device mix: every tensor argument on another device than logits
    *[(n, "device", (lambda n: lambda a: a[n].to(_META) if a[n] is not None else None)(n), rf"{n} is on meta but logits is on cpu")
      for n in ("x", "conf", "state", "suppress_ids", "zero_conf_ids", "delimiter_ids", "filter_w1", "filter_b1",
                "filter_w2", "filter_b2")],
    ("gumbel_u", "device", lambda a: torch.rand(B, L, V, device=_META), r"gumbel_u is on meta but logits is on cpu"),
    ("rank_u", "device", lambda a: torch.rand(B, L, device=_META), r"rank_u is on meta but logits is on cpu"),
    ("logits", "device", lambda a: torch.randn(B, L, V, device=_META), r"x is on cpu but logits is on meta"),
    # contiguity of every other tensor argument
    ("conf", "non-contiguous", lambda a: torch.zeros(L, B).t(), r"conf must be contiguous"),
    ("state", "non-contiguous", lambda a: a["state"].t().contiguous().t(), r"state must be contiguous"),
    ("row_start", "non-contiguous", lambda a: torch.zeros(2 * B, dtype=torch.int64)[::2], r"row_start must be contiguous"),
    ("gumbel_u", "non-contiguous", lambda a: torch.rand(B, V, L).transpose(1, 2), r"gumbel_u must be contiguous"),
    ("rank_u", "non-contiguous", lambda a: torch.rand(L, B).t(), r"rank_u must be contiguous"),
    ("suppress_ids", "non-contiguous", lambda a: _ids(1, 2, 3, 4)[::2], r"suppress_ids must be contiguous"),
    ("zero_conf_ids", "non-contiguous", lambda a: _ids(1, 2, 3, 4)[::2], r"zero_conf_ids must be contiguous"),
    ("delimiter_ids", "non-contiguous", lambda a: _ids(1, 2, 3, 4)[::2], r"delimiter_ids must be contiguous"),
    ("filter_w1", "non-contiguous", lambda a: torch.randn(8, 4).t(), r"filter_w1 must be contiguous"),
    ("filter_b1", "non-contiguous", lambda a: torch.randn(8)[::2], r"filter_b1 must be contiguous"),
    ("filter_w2", "non-contiguous", lambda a: torch.randn(4, 8).t(), r"filter_w2 must be contiguous"),
    ("filter_b2", "non-contiguous", lambda a: torch.randn(16)[::2], r"filter_b2 must be contiguous"),
    # dtype
    ("rank_u", "dtype", lambda a: torch.rand(B, L).double(), r"rank_u must be"),
    ("suppress_ids", "dtype", lambda a: torch.tensor([2.0]), r"suppress_ids must be int64"),
    ("delimiter_ids", "dtype", lambda a: _ids(4, dtype=torch.int32), r"delimiter_ids must be int64"),
    ("filter_w1", "dtype", lambda a: torch.randn(4, 8).half(), r"filter_w1 must be"),
    ("filter_b1", "dtype", lambda a: torch.randn(4).double(), r"filter_b1 must be"),
    ("filter_b2", "dtype", lambda a: torch.randn(8).bfloat16(), r"filter_b2 must be"),
    ("logits", "dtype", lambda a: a["logits"].bool(), r"logits must be float32, float16 or bfloat16"),
    # rank
    ("conf", "rank", lambda a: torch.zeros(B * L), r"conf must have shape"),
    ("state", "rank", lambda a: torch.zeros(B * 11, dtype=torch.int64), r"state must have shape"),
    ("row_start", "rank", lambda a: torch.zeros(B, 1, dtype=torch.int64), r"row_start must have shape"),
    ("gumbel_u", "rank", lambda a: torch.rand(B, L * V), r"gumbel_u must have shape"),
    ("rank_u", "rank", lambda a: torch.rand(B * L), r"rank_u must have shape"),
    ("zero_conf_ids", "rank", lambda a: _ids(1, 2).reshape(1, 2), r"zero_conf_ids must be 1-D"),
    ("delimiter_ids", "rank", lambda a: _ids(1, 2).reshape(2, 1), r"delimiter_ids must be 1-D"),
    ("filter_w1", "rank", lambda a: torch.randn(8), r"filter_w1 must be \[hidden, width\]"),
    ("filter_b1", "rank", lambda a: torch.randn(4, 1), r"filter_b1 must have shape"),
    # size mismatch (batch)
    ("conf", "size", lambda a: torch.zeros(B + 1, L), r"conf must have shape"),
    ("state", "size", lambda a: torch.zeros(B + 1, 11, dtype=torch.int64), r"state must have shape"),
    ("rank_u", "size", lambda a: torch.rand(B + 1, L), r"rank_u must have shape"),
    ("gumbel_u", "size", lambda a: torch.rand(B, L + 1, V), r"gumbel_u must have shape"),
    ("filter_w2", "size", lambda a: torch.randn(8, 5), r"filter_w2 must have shape"),
    # ids and lengths: negative or too large
    ("zero_conf_ids", "range", lambda a: _ids(-1), r"zero_conf_ids holds ids outside \[0, 20\)"),
    ("zero_conf_ids", "range", lambda a: _ids(0, V), r"zero_conf_ids holds ids outside"),
    ("delimiter_ids", "range", lambda a: _ids(-7), r"delimiter_ids holds ids outside"),
    ("suppress_ids", "range", lambda a: _ids(2 ** 62), r"suppress_ids holds ids outside"),
    ("mask_id", "range", lambda a: 2 ** 40, r"mask_id must be in \[0, 20\)"),
    ("eos_id", "range", lambda a: -1, r"eos_id must be in"),
    ("rule", "range", lambda a: -1, r"rule must be 0..4"),
    ("conf_kind", "range", lambda a: 3, r"conf_kind must be 0..2"),
    ("steps", "range", lambda a: -3, r"steps must be >= 1"),
    ("block_length", "range", lambda a: -(2 ** 40), r"block_length must be >= 1"),
    ("window", "range", lambda a: -(2 ** 40), r"window must be >= 0"),
    ("filter_w1", "range", lambda a: torch.randn(4, 0), r"filter width must be 1..128"),
    ("filter_w1", "range", lambda a: torch.randn(300, 8), r"filter hidden size must be 1..256"),
    # scalars: infinities (NaN and [0, 1] bounds are in the per-op table)
    *[(n, "inf", (lambda v: lambda a: v)(v), rf"{n} must be in \[0, 1\]")
      for n in ("threshold", "anchor_threshold", "relaxed_threshold", "filter_threshold", "block_delta",
                "block_window_fraction") for v in (math.inf, -math.inf)],
    ("temperature", "inf", lambda a: -math.inf, r"temperature must be finite"),
    ("factor", "inf", lambda a: math.inf, r"factor must be finite"),
]


def _consistent_empty_batch(a):
    """B = 0 in every tensor (not only logits): still the empty batch error."""
    st = dk.DecodeState.new(1, L, gen_start=0)
    a.update(logits=torch.randn(0, L, V), x=torch.zeros(0, L, dtype=torch.int64), conf=st.conf[:0],
             state=st.state[:0], row_start=None)


def _vocab_one(a):
    a.update(logits=torch.randn(B, L, 1), mask_id=0, eos_id=0, suppress_ids=None, zero_conf_ids=None,
             delimiter_ids=None)


WHOLE_ROWS = [("empty batch", _consistent_empty_batch, r"empty batch"), ("V = 1", _vocab_one, r"vocabulary of at least 2")]


def _unmask_entry(entry):
    op = torch.ops.dllm.fused_unmask if entry == "op" else fused_unmask_triton
    return lambda a: (lambda pos, kw: op(*pos, **kw))(*op_positional(**a))


def _expect_rejected(fn, args, pattern):
    before = [args[k].clone() for k in ("x", "conf", "state")
              if isinstance(args[k], torch.Tensor) and args[k].device.type == "cpu"]
    with pytest.raises((RuntimeError, ValueError)) as info:
        fn(args)
    assert re.search(pattern, str(info.value)), f"message does not name the argument: {info.value}"
    after = [args[k] for k in ("x", "conf", "state") if isinstance(args[k], torch.Tensor) and args[k].device.type == "cpu"]
    for u, v in zip(before, after):
        assert torch.equal(u, v) or (u.is_floating_point() and torch.equal(u.isnan(), v.isnan())
                                     and torch.equal(u.nan_to_num(), v.nan_to_num())), "a rejected call wrote"


@pytest.mark.parametrize("entry", ["op", "triton"])
@pytest.mark.parametrize("name,label,make_bad,pattern", UNMASK_ROWS,
                         ids=[f"{r[0]}-{r[1]}-{i}" for i, r in enumerate(UNMASK_ROWS)])
def test_fused_unmask_rejects(entry, name, label, make_bad, pattern):
    args = good_args()
    args[name] = make_bad(args)
    _expect_rejected(_unmask_entry(entry), args, pattern)


@pytest.mark.parametrize("entry", ["op", "triton"])
@pytest.mark.parametrize("label,change,pattern", WHOLE_ROWS, ids=[r[0] for r in WHOLE_ROWS])
def test_fused_unmask_rejects_whole(entry, label, change, pattern):
    args = good_args()
    change(args)
    _expect_rejected(_unmask_entry(entry), args, pattern)


def _torch_spelling(message):
    """The per-op table's messages as a regex that also accepts torch's dtype spelling."""
    rx = re.escape(message)
    for c10, py in (("Long", "torch.int64"), ("Float", "torch.float32"), ("Int", "torch.int32")):
        rx = re.sub(rf"must\\ be\\ {c10}\b", f"must be ({c10}|{re.escape(py)})", rx)
    return rx


@pytest.mark.parametrize("name,make_bad,message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fused_unmask_table_through_triton(name, make_bad, message):
    """The per-op table (test_fused_unmask_bad_inputs.py) through the Triton entry point."""
    args = good_args()
    args[name] = make_bad(args)
    _expect_rejected(_unmask_entry("triton"), args, _torch_spelling(message))


def _uniform_cases():
    for entry in ("op", "triton"):
        for what in ("gumbel_u", "rank_u"):
            for value in (0.0, 1.0, -1.0, 2.0, math.nan, math.inf):
                yield pytest.param(entry, what, value, id=f"{entry}-{what}-{value}")


@pytest.mark.parametrize("entry,what,value", list(_uniform_cases()))
def test_unchecked_uniforms_never_write_outside_the_vocabulary(entry, what, value):
    """gumbel_u / rank_u values are not checked (that would synchronise on a GPU): outside (0, 1)
    the samples are unspecified, but every token written is still a vocabulary id."""
    args = good_args()
    for k in ("filter_w1", "filter_b1", "filter_w2", "filter_b2"):
        args[k] = None
    args.update(rule=0, steps=2, temperature=1.0, random_remasking=True)
    args[what] = torch.full((B, L, V) if what == "gumbel_u" else (B, L), value)
    x0, transfer, _ = _unmask_entry(entry)(args)
    assert bool(((args["x"] >= 0) & (args["x"] < V)).all()) and bool(((x0 >= 0) & (x0 < V)).all())
    # Whether anything commits is unspecified (a row may read as invalid); what is written is the
    # prediction or the end-of-text fill.
    written = args["x"][transfer]
    assert bool(((written == x0[transfer]) | (written == args["eos_id"])).all())


# ---------------------------------------------------------------------------------------------
# block_attention

AB, AQ, AHQ, AHKV, AD, AL = 2, 4, 4, 2, 64, 12


def attn_good():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(q=r(AB, AQ, AHQ, AD), k_new=r(AB, AQ, AHKV, AD), v_new=r(AB, AQ, AHKV, AD),
                k_cache=r(AB, AL, AHKV, AD), v_cache=r(AB, AL, AHKV, AD), block_start=torch.tensor([0, 6]),
                block_len=torch.tensor([4, 2]), kv_len=torch.tensor([7, 12]), mask_mode=1, scale=0.125, block_size=0)


def _stride_last(t):
    """Same values, last dimension not contiguous."""
    return torch.stack([t, t], dim=-1)[..., 0]


# (argument(s) changed, label, changes, regex naming the argument, value check?)
ATTN_ROWS = [
    *[((n,), "device", {n: (lambda n: lambda c: c[n].to(_META))(n)}, rf"{n} is on meta", False)
      for n in ("k_new", "v_new", "v_cache", "block_start", "block_len", "kv_len")],
    (("q",), "device", {"q": lambda c: c["q"].to(_META)}, r"but q is on meta", False),
    (("v_new",), "dtype", {"v_new": lambda c: c["v_new"].half()}, r"v_new has dtype", False),
    (("v_cache",), "dtype", {"v_cache": lambda c: c["v_cache"].bfloat16()}, r"v_cache has dtype", False),
    (("q", "k_new", "v_new", "k_cache", "v_cache"), "dtype",
     {n: (lambda n: lambda c: c[n].double())(n) for n in ("q", "k_new", "v_new", "k_cache", "v_cache")},
     r"q must be float16, bfloat16 or float32", False),
    (("block_len",), "dtype", {"block_len": lambda c: c["block_len"].int()}, r"block_len must be int64", False),
    (("kv_len",), "dtype", {"kv_len": lambda c: c["kv_len"].double()}, r"kv_len must be int64", False),
    (("k_new",), "rank", {"k_new": lambda c: c["k_new"][0]}, r"k_new must be 4-D", False),
    (("v_cache",), "rank", {"v_cache": lambda c: c["v_cache"][None]}, r"v_cache must be 4-D", False),
    (("block_start",), "rank", {"block_start": lambda c: c["block_start"][:, None]}, r"block_start must have shape", False),
    (("kv_len",), "size", {"kv_len": lambda c: torch.tensor([7, 12, 12])}, r"kv_len must have shape", False),
    (("k_cache", "v_cache"), "size", {"k_cache": lambda c: torch.zeros(AB + 1, AL, AHKV, AD),
                                      "v_cache": lambda c: torch.zeros(AB + 1, AL, AHKV, AD)}, r"k_cache must be \[B=2", False),
    (("k_new", "v_new"), "size", {"k_new": lambda c: torch.zeros(AB, AQ, AHKV, 32),
                                  "v_new": lambda c: torch.zeros(AB, AQ, AHKV, 32)}, r"k_new must be \[B=2, Qmax=4, Hkv, D=64\]", False),
    (("v_cache",), "size", {"v_cache": lambda c: c["v_cache"][:, :AL - 1]}, r"k_cache .* and v_cache .* must have the same shape", False),
    (("k_cache", "v_cache"), "size", {"k_cache": lambda c: torch.zeros(AB, 0, AHKV, AD),
                                      "v_cache": lambda c: torch.zeros(AB, 0, AHKV, AD)}, r"k_cache must hold at least one slot", False),
    *[((n,), "non-contiguous", {n: (lambda n: lambda c: _stride_last(c[n]))(n)}, rf"{n} must be contiguous in its last",
       False) for n in ("k_new", "v_new", "k_cache", "v_cache")],
    (("q",), "not a tensor", {"q": lambda c: None}, r"q must be a Tensor", False),
    (("block_len",), "not a tensor", {"block_len": lambda c: [4, 2]}, r"block_len must be a Tensor|for argument 'block_len'", False),
    (("scale",), "range", {"scale": lambda c: math.inf}, r"scale must be a finite positive number", False),
    (("scale",), "range", {"scale": lambda c: 0.0}, r"scale must be a finite positive number", False),
    (("mask_mode",), "range", {"mask_mode": lambda c: -1}, r"mode must be 0 \(prefix\)", False),
    (("mask_mode", "block_size"), "range", {"mask_mode": lambda c: 2, "block_size": lambda c: -4}, r"block_size must be >= 1", False),
    (("kv_len",), "range", {"kv_len": lambda c: torch.tensor([-1, 12])}, r"kv_len must lie in", True),
    (("block_start",), "range", {"block_start": lambda c: torch.tensor([2 ** 40, 6])}, r"block_start \+ block_len must be <= Lmax", True),
    (("block_len",), "range", {"block_len": lambda c: torch.tensor([4, 2 ** 40])}, r"block_len must lie in \[0, Qmax=4\]", True),
]

ATTN_LATE_ROWS = [
    pytest.param(("q",), "empty batch", {n: (lambda n: lambda c: c[n][:0])(n) for n in
                                          ("q", "k_new", "v_new", "k_cache", "v_cache", "block_start", "block_len", "kv_len")},
                 r"empty batch|B = 0|batch", False),
    pytest.param(("k_cache", "v_cache"), "overlapping caches",
                 {"k_cache": lambda c: c["_kv"][:, :AL], "v_cache": lambda c: c["_kv"][:, 1:AL + 1]},
                 r"k_cache.*v_cache|v_cache.*k_cache", False),
]


def _attn_entry(entry):
    names = ("q", "k_new", "v_new", "k_cache", "v_cache", "block_start", "block_len", "kv_len", "mask_mode", "scale",
             "block_size")
    if entry == "wrapper":
        def run(c):
            return dk.block_attention(*[c[n] for n in names[:8]], mode=c["mask_mode"], scale=c["scale"],
                                      block_size=c["block_size"] if c["mask_mode"] == 2 else None, check_values=True)
    elif entry == "op":
        def run(c):
            return torch.ops.dllm.block_attention(*[c[n] for n in names])
    elif entry == "triton":  # the launcher's checks (metadata only: the GPU path clamps values)
        def run(c):
            return attn_mod._block_attention_triton_impl(*[c[n] for n in names])
    else:  # fake: what torch.compile / FakeTensor tracing sees
        def run(c):
            from torch._subclasses.fake_tensor import FakeTensorMode

            mode = FakeTensorMode(allow_non_fake_inputs=False)
            fake = {k: (mode.from_tensor(v) if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
            with mode:
                return torch.ops.dllm.block_attention(*[fake[n] for n in names])
    return run


@pytest.mark.parametrize("entry", ["wrapper", "op", "triton", "fake"])
@pytest.mark.parametrize("names,label,changes,pattern,value_check", ATTN_ROWS + ATTN_LATE_ROWS,
                         ids=[f"{'+'.join(r[0])}-{r[1]}-{i}" for i, r in enumerate(ATTN_ROWS)]
                         + [f"late-{i}" for i in range(len(ATTN_LATE_ROWS))])
def test_block_attention_rejects(entry, names, label, changes, pattern, value_check):
    if value_check and entry in ("triton", "fake"):
        pytest.skip("values are checked only where they can be read without a device sync (CPU op, wrapper)")
    if label == "overlapping caches" and entry == "fake":
        pytest.skip("fake tensors carry no storage addresses to compare")
    c = attn_good()
    c["_kv"] = torch.randn(AB, AL + 1, AHKV, AD)
    for k, f in changes.items():
        c[k] = f(c)
    k_before = c["k_cache"].clone() if isinstance(c["k_cache"], torch.Tensor) and c["k_cache"].device.type == "cpu" else None
    with pytest.raises((ValueError, RuntimeError)) as info:
        _attn_entry(entry)(c)
    assert re.search(pattern, str(info.value)), f"message does not name the argument: {info.value}"
    if k_before is not None:
        assert torch.equal(c["k_cache"], k_before), "a rejected call wrote the cache"
