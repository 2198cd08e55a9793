"""dllm::block_attention against the SDPA reference (dllm_kernels/reference/block_attention.py).

Accuracy rule (flash-attention's): a backend's max error against the float64 reference is at most
2x PyTorch's own error (SDPA in the same dtype against the same float64 reference), plus a tiny
floor for float32 where both are at rounding level. Backends: the registered CPU kernel, the Triton
kernel under the interpreter on CPU tensors, and (cuda-marked) the op on a GPU.
"""
import importlib
import math

import pytest
import torch

import dllm_kernels  # noqa: F401  (registers the op's kernels)
from dllm_kernels import block_attention
from dllm_kernels.block_attention import triton_kernel_module
from dllm_kernels.reference.block_attention import block_attention_key_limits, block_attention_ref

TK = triton_kernel_module()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_case(B, q_max, hq, hkv, d, l_max, starts, lens, kv_lens=None, dtype=torch.float32, seed=0,
              device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)

    q, k_new, v_new = rnd(B, q_max, hq, d), rnd(B, q_max, hkv, d), rnd(B, q_max, hkv, d)
    k_cache, v_cache = rnd(B, l_max, hkv, d), rnd(B, l_max, hkv, d)
    t = lambda xs: torch.tensor(xs, dtype=torch.int64, device=device)  # noqa: E731
    return dict(q=q, k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache, block_start=t(starts),
                block_len=t(lens), kv_len=None if kv_lens is None else t(kv_lens))


def clone_case(c):
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in c.items()}


def run_backend(backend, c, mode, scale, block_size, num_splits=None):
    args = (c["q"], c["k_new"], c["v_new"], c["k_cache"], c["v_cache"], c["block_start"], c["block_len"],
            c["kv_len"], mode, scale, block_size)
    if backend == "triton":
        return TK.block_attention_triton(*args, num_splits=num_splits)
    return torch.ops.dllm.block_attention(*args)


def run_ref(c, mode, scale, block_size, compute_dtype=None):
    return block_attention_ref(c["q"], c["k_new"], c["v_new"], c["k_cache"], c["v_cache"], c["block_start"],
                               c["block_len"], c["kv_len"], mode, scale, block_size, compute_dtype=compute_dtype)


def check_against_reference(backend, c, mode, block_size=0, num_splits=None, scale=None):
    """Runs the backend and the references on clones; checks the output error rule, the zero rows
    and that the caches end up exactly as the reference's (block slots written, nothing else)."""
    d = c["q"].shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    mine = clone_case(c)
    out = run_backend(backend, mine, mode, scale, block_size, num_splits)
    truth_c = clone_case(c)
    truth = run_ref(truth_c, mode, scale, block_size, compute_dtype=torch.float64)
    own = run_ref(clone_case(c), mode, scale, block_size)
    assert out.shape == c["q"].shape and out.dtype == c["q"].dtype
    err = (out.double() - truth).abs().max().item()
    err_pt = (own.double() - truth).abs().max().item()
    floor = 1e-5 if c["q"].dtype == torch.float32 else 0.0
    assert err <= 2 * err_pt + floor, f"{backend}: error {err:.3g} vs PyTorch's own {err_pt:.3g}"
    # Rows past block_len are exactly zero.
    q_max = c["q"].shape[1]
    invalid = torch.arange(q_max, device=out.device)[None, :] >= c["block_len"][:, None]
    assert bool((out[invalid] == 0).all())
    # Caches: bit-exact the reference's (written block slots, untouched elsewhere).
    assert torch.equal(mine["k_cache"].cpu(), truth_c["k_cache"].to(c["q"].dtype).cpu())
    assert torch.equal(mine["v_cache"].cpu(), truth_c["v_cache"].to(c["q"].dtype).cpu())
    return out


BACKENDS = ["cpu", "triton"]


# A ragged batch: full block with empty prefix, block length 1, a block in the middle, a finished
# sequence (block_len 0), a block ending at the last cache slot.
RAGGED = dict(B=5, q_max=8, l_max=41, starts=[0, 5, 17, 9, 33], lens=[8, 1, 6, 0, 8], kv_lens=[20, 41, 30, 12, 41])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("mode", [0, 1, 2], ids=["prefix", "dual", "block_causal"])
def test_modes_dtypes_ragged_gqa(backend, dtype, mode):
    c = make_case(hq=4, hkv=2, d=64, dtype=dtype, seed=mode, **RAGGED)
    check_against_reference(backend, c, mode, block_size=3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hq,hkv", [(3, 3), (6, 2), (5, 1), (8, 2)])
@pytest.mark.parametrize("d", [64, 128])
def test_gqa_ratios_head_dims(backend, hq, hkv, d):
    c = make_case(B=2, q_max=5, hq=hq, hkv=hkv, d=d, l_max=23, starts=[0, 11], lens=[5, 3], kv_lens=[9, 23],
                  dtype=torch.bfloat16, seed=hq * 10 + hkv)
    check_against_reference(backend, c, mode=1)


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("num_splits", [1, 2, 5])
def test_triton_split_k(mode, num_splits):
    """Flash-decoding path: long key ranges split over programs, several key tiles per split,
    splits that get no keys at all (short sequences), partial last tiles."""
    c = make_case(B=3, q_max=16, hq=4, hkv=1, d=64, l_max=301, starts=[250, 3, 0], lens=[16, 13, 2],
                  kv_lens=[301, 290, 2], dtype=torch.float16, seed=7)
    check_against_reference("triton", c, mode, block_size=4, num_splits=num_splits)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size", [1, 2, 5, 16])
def test_block_causal_sub_blocks(backend, block_size):
    """Block-causal over a query span holding several sub-blocks (e.g. a block-diffusion prefill);
    block_size 1 is causal attention after the prefix, >= Qmax is the prefix mode."""
    c = make_case(B=2, q_max=11, hq=2, hkv=2, d=64, l_max=30, starts=[0, 7], lens=[11, 9],
                  dtype=torch.float32, seed=block_size)
    out = check_against_reference(backend, c, 2, block_size=block_size)
    if block_size >= 11:
        c2 = clone_case(c)
        out0 = run_backend(backend, c2, 0, 1 / 8, 0)
        assert torch.allclose(out, out0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_qmax1_block_len1(backend):
    c = make_case(B=3, q_max=1, hq=4, hkv=4, d=128, l_max=7, starts=[0, 6, 3], lens=[1, 1, 0],
                  kv_lens=[1, 7, 5], dtype=torch.float16, seed=3)
    for mode in (0, 1, 2):
        check_against_reference(backend, c, mode, block_size=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_views(backend):
    """q sliced out of a fused QKV projection, caches stored head-major [B, Hkv, Lmax, D] and
    passed as transposed views: only the last dimension is contiguous. The cache write goes
    through the views into the underlying storage."""
    B, q_max, hq, hkv, d, l_max = 2, 6, 4, 2, 64, 19
    g = torch.Generator().manual_seed(11)
    qkv = torch.randn(B, q_max, hq + 2 * hkv, d, generator=g).half()
    q, k_new, v_new = qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:]
    k_store = torch.randn(B, hkv, l_max, d, generator=g).half()
    v_store = torch.randn(B, hkv, l_max, d, generator=g).half()
    c = dict(q=q, k_new=k_new, v_new=v_new, k_cache=k_store.transpose(1, 2), v_cache=v_store.transpose(1, 2),
             block_start=torch.tensor([4, 13]), block_len=torch.tensor([6, 5]), kv_len=torch.tensor([15, 19]))
    assert not q.is_contiguous() and not c["k_cache"].is_contiguous()
    check_against_reference(backend, c, 1)
    # In place through the view: the head-major storage holds the block.
    kc, vc = c["k_cache"].clone(), c["v_cache"].clone()
    ks = k_store.clone()
    run_backend(backend, dict(c, k_cache=ks.transpose(1, 2), v_cache=vc), 0, 0.125, 0)
    assert torch.equal(ks[0, :, 4:10], k_new[0].transpose(0, 1))
    assert torch.equal(ks[1, :, 13:18], k_new[1, :5].transpose(0, 1))
    assert torch.equal(ks[1, :, :13], kc[1, :13].transpose(0, 1))


def test_backends_agree_and_wrapper_defaults():
    c = make_case(hq=4, hkv=2, d=64, dtype=torch.float32, seed=5, **RAGGED)
    out_w = block_attention(**clone_case(c), mode="dual")  # scale defaults to 1/sqrt(D)
    out_cpu = run_backend("cpu", clone_case(c), 1, 1 / 8, 0)
    out_tr = run_backend("triton", clone_case(c), 1, 1 / 8, 0)
    assert torch.equal(out_w, out_cpu)
    torch.testing.assert_close(out_tr, out_cpu, atol=2e-6, rtol=1e-5)
    out_bc = block_attention(**clone_case(c), mode="block_causal", block_size=2, scale=0.3)
    torch.testing.assert_close(out_bc, run_ref(clone_case(c), 2, 0.3, 2), atol=2e-6, rtol=1e-5)


def test_dual_mode_sees_the_suffix_and_prefix_mode_does_not():
    """Changing a cached suffix slot changes dual-mode outputs only; changing a prefix slot changes both."""
    c = make_case(B=1, q_max=4, hq=2, hkv=2, d=64, l_max=16, starts=[5], lens=[4], kv_lens=[16], seed=2)
    base = {m: run_backend("cpu", clone_case(c), m, 0.125, 0) for m in (0, 1)}
    c_suffix = clone_case(c)
    c_suffix["v_cache"][0, 12] += 5.0
    c_prefix = clone_case(c)
    c_prefix["v_cache"][0, 1] += 5.0
    assert torch.equal(run_backend("cpu", clone_case(c_suffix), 0, 0.125, 0), base[0])
    assert not torch.allclose(run_backend("cpu", clone_case(c_suffix), 1, 0.125, 0), base[1])
    for m in (0, 1):
        assert not torch.allclose(run_backend("cpu", clone_case(c_prefix), m, 0.125, 0), base[m])
    # The block's own stale cache slots never leak: they are overwritten before attention.
    c_stale = clone_case(c)
    c_stale["v_cache"][0, 5:9] = 1e4
    assert torch.equal(run_backend("cpu", c_stale, 1, 0.125, 0), base[1])


def test_key_limits_spec():
    lim = block_attention_key_limits(torch.tensor([3, 0]), torch.tensor([5, 2]), torch.tensor([9, 4]), 2, 2, 6)
    assert lim.tolist() == [[5, 5, 7, 7, 8, 0], [2, 2, 0, 0, 0, 0]]
    lim = block_attention_key_limits(torch.tensor([3, 0]), torch.tensor([5, 2]), torch.tensor([9, 4]), 1, 0, 6)
    assert lim.tolist() == [[9, 9, 9, 9, 9, 0], [4, 4, 0, 0, 0, 0]]


def test_opcheck():
    c = make_case(B=2, q_max=4, hq=4, hkv=2, d=64, l_max=12, starts=[0, 6], lens=[4, 2], kv_lens=[7, 12],
                  dtype=torch.float32, seed=1)
    args = (c["q"], c["k_new"], c["v_new"], c["k_cache"], c["v_cache"], c["block_start"], c["block_len"],
            c["kv_len"], 1, 0.125, 0)
    torch.library.opcheck(torch.ops.dllm.block_attention.default, args)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        c = make_case(B=2, q_max=4, hq=6, hkv=2, d=128, l_max=12, starts=[0, 6], lens=[4, 2],
                      dtype=torch.bfloat16)
        out = torch.ops.dllm.block_attention(c["q"], c["k_new"], c["v_new"], c["k_cache"], c["v_cache"],
                                             c["block_start"], c["block_len"], None, 0, 0.1, 0)
        assert out.shape == (2, 4, 6, 128) and out.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# Bad inputs


def _good():
    return make_case(B=2, q_max=4, hq=4, hkv=2, d=64, l_max=12, starts=[0, 6], lens=[4, 2], kv_lens=[7, 12])


def _bad_cases():
    f32 = torch.float32
    yield "dtype", dict(k_new=lambda c: c["k_new"].half()), "k_new has dtype"
    yield "int_dtype", dict(q=lambda c: c["q"].to(torch.int32), k_new=None), "q must be float16"
    yield "rank", dict(q=lambda c: c["q"][0]), "q must be 4-D"
    yield "qmax", dict(k_new=lambda c: torch.zeros(2, 3, 2, 64), v_new=lambda c: torch.zeros(2, 3, 2, 64)), "k_new must be"
    yield "kv_shape", dict(v_new=lambda c: torch.zeros(2, 4, 2, 64)[:, :3]), "same shape"
    yield "cache_heads", dict(k_cache=lambda c: torch.zeros(2, 12, 4, 64), v_cache=lambda c: torch.zeros(2, 12, 4, 64)), "k_cache must be"
    yield "ratio", dict(q=lambda c: torch.zeros(2, 4, 3, 64)), "multiple of the number of KV heads"
    yield "head_dim", dict(q=lambda c: torch.zeros(2, 4, 4, 80), k_new=lambda c: torch.zeros(2, 4, 2, 80),
                           v_new=lambda c: torch.zeros(2, 4, 2, 80), k_cache=lambda c: torch.zeros(2, 12, 2, 80),
                           v_cache=lambda c: torch.zeros(2, 12, 2, 80)), "head dim"
    yield "last_dim_stride", dict(q=lambda c: torch.zeros(2, 4, 64, 4).transpose(2, 3)), "q must be contiguous in its last"
    yield "device", dict(k_cache=lambda c: torch.zeros(2, 12, 2, 64, device="meta")), "k_cache is on meta"
    yield "index_dtype", dict(block_start=lambda c: c["block_start"].int()), "block_start must be int64"
    yield "index_shape", dict(block_len=lambda c: torch.tensor([4])), r"block_len must have shape \[B\]"
    yield "len_range", dict(block_len=lambda c: torch.tensor([5, 2])), r"block_len must lie in \[0, Qmax=4\]"
    yield "neg_len", dict(block_len=lambda c: torch.tensor([-1, 2])), "block_len must lie"
    yield "neg_start", dict(block_start=lambda c: torch.tensor([-1, 6])), "block_start must be >= 0"
    yield "past_cache", dict(block_start=lambda c: torch.tensor([0, 11])), r"block_start \+ block_len must be <= Lmax=12"
    yield "kv_short", dict(kv_len=lambda c: torch.tensor([3, 12])), "kv_len must lie in"
    yield "kv_long", dict(kv_len=lambda c: torch.tensor([7, 13])), "kv_len must lie in"
    yield "kv_missing", dict(kv_len=lambda c: None), "kv_len is required in mode 1"
    yield "same_cache", dict(v_cache=lambda c: c["k_cache"]), "must not overlap"
    del f32


@pytest.mark.parametrize("name,changes,msg", list(_bad_cases()), ids=[x[0] for x in _bad_cases()])
@pytest.mark.parametrize("entry", ["wrapper", "op"])
def test_bad_inputs_rejected(name, changes, msg, entry):
    c = _good()
    for k, fn in changes.items():
        if fn is not None:
            c[k] = fn(c)
    before = c["k_cache"].clone() if c["k_cache"].device.type == "cpu" else None
    with pytest.raises((ValueError, RuntimeError), match=msg):
        if entry == "wrapper":
            block_attention(**c, mode="dual")
        else:
            torch.ops.dllm.block_attention(c["q"], c["k_new"], c["v_new"], c["k_cache"], c["v_cache"],
                                           c["block_start"], c["block_len"], c["kv_len"], 1, 0.125, 0)
    if before is not None and c["k_cache"].dtype == before.dtype:
        assert torch.equal(c["k_cache"], before), "a rejected call must not touch the cache"


@pytest.mark.parametrize("kw,msg", [(dict(mode="causal"), "mode must be one of"), (dict(mode=3), "mode must be 0"),
                                    (dict(mode="block_causal"), "block_size is required"),
                                    (dict(mode=2, block_size=0), "block_size must be >= 1"),
                                    (dict(scale=float("nan")), "scale must be"), (dict(scale=-1.0), "scale must be")])
def test_bad_scalars_rejected(kw, msg):
    with pytest.raises(ValueError, match=msg):
        block_attention(**_good(), **kw)


# ---------------------------------------------------------------------------------------------
# GPU (skipped without CUDA)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (8, 2, 64), (12, 4, 128)])
def test_cuda_against_reference(dtype, mode, hq, hkv, d):
    c = make_case(B=4, q_max=32, hq=hq, hkv=hkv, d=d, l_max=1100, starts=[0, 517, 1068, 40], lens=[32, 1, 32, 0],
                  kv_lens=[600, 1100, 1100, 90], dtype=dtype, seed=mode, device="cuda")
    check_against_reference("cuda", c, mode, block_size=8)


@pytest.mark.cuda
def test_cuda_no_sync_and_graph_capture():
    """No host synchronisation, and a captured graph replays correctly after the block
    positions (device values) change: one graph serves every step for a fixed Qmax."""
    c = make_case(B=3, q_max=16, hq=8, hkv=4, d=128, l_max=2048, starts=[0, 100, 1500], lens=[16, 3, 9],
                  kv_lens=[64, 300, 2048], dtype=torch.bfloat16, device="cuda")
    static = clone_case(c)
    block_attention(**clone_case(c), mode="dual")  # warm-up: compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        block_attention(**clone_case(c), mode="dual")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = block_attention(**static, mode="dual")
    for starts, lens, kvs in (([16, 103, 1509], [16, 16, 1], [80, 400, 2048]), ([0, 0, 2032], [5, 0, 16], [5, 7, 2048])):
        new = make_case(B=3, q_max=16, hq=8, hkv=4, d=128, l_max=2048, starts=starts, lens=lens, kv_lens=kvs,
                        dtype=torch.bfloat16, seed=len(starts) + starts[-1], device="cuda")
        for k in ("q", "k_new", "v_new", "block_start", "block_len", "kv_len"):
            static[k].copy_(new[k])
        ref_c = clone_case(static)
        graph.replay()
        ref = run_ref(ref_c, 1, 1 / math.sqrt(128), 0, compute_dtype=torch.float32)
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
        assert torch.equal(static["k_cache"], ref_c["k_cache"])


def test_interleaved_kv_buffer_is_not_mistaken_for_overlap():
    """A [B, L, 2, H, D] buffer holding K and V side by side is a valid (non-overlapping) cache layout."""
    A = importlib.import_module("dllm_kernels.block_attention")  # the module, not the op of that name

    kv = torch.zeros(2, 12, 2, 2, 64)
    assert not A._caches_overlap(kv[:, :, 0], kv[:, :, 1])
    assert A._caches_overlap(kv[:, :11, 0], kv[:, 1:, 0])
    flat = torch.zeros(2, 13, 2, 64)
    assert A._caches_overlap(flat[:, :12], flat[:, 1:])
    assert not A._caches_overlap(flat[:, :6], flat[:, 6:12])
