"""The CUDA fused_unmask kernels (csrc/kernels/fused_unmask_*.cuh) on a host emulation of CUDA thread
blocks (tests/cuda_emu/): their logic checked on machines without a GPU, against the CPU op and the
float64 reference, and for bit-for-bit batch, alignment and grid-shape invariance.

Opt-in, because it is slow on a small machine (about a minute to build, a few to run):
    DLLM_CUDA_EMULATION=1 python -m pytest tests/test_cuda_emulated.py
The emulation has no memory model and runs blocks one after another: races and timing are for
compute-sanitizer and the GPU tests (bench/device_check.sh).
"""
import os
import shutil

import pytest
import torch

import dllm_kernels  # noqa: F401  (defines the op whose schema ORDER reads)
import test_fused_unmask_cuda as cuda_tests
from fused_unmask_cases import DTYPES, make_batch, op_positional, peaked_logits, rule_id

pytestmark = pytest.mark.skipif(os.environ.get("DLLM_CUDA_EMULATION") != "1",
                                reason="opt-in: set DLLM_CUDA_EMULATION=1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU_DIR = os.path.join(ROOT, "tests", "cuda_emu")
BUILD_DIR = os.path.join(ROOT, "build", "cuda_emu")
# Dynamic shared memory has no host equivalent: the copy compiled here gets a static array.
SHARED_DECL = "extern __shared__ uint32_t suppress_bits[];"
# The op's arguments after the six required ones, in schema order, with their defaults: the
# emulated binding takes them all positionally.
_SCHEMA = torch.ops.dllm.fused_unmask.default._schema.arguments
ORDER = [a.name for a in _SCHEMA[6:]]
DEFAULTS = {a.name: a.default_value for a in _SCHEMA[6:]}


def _sync_sources():
    """Copies csrc/ under build/cuda_emu/src (unchanged files keep their time stamps, so the
    extension is rebuilt only when a source changed) with the dynamic shared array made static."""
    dst = os.path.join(BUILD_DIR, "src")
    shutil.copytree(os.path.join(ROOT, "csrc"), dst, dirs_exist_ok=True)
    stats = os.path.join(dst, "kernels", "fused_unmask_stats.cuh")
    with open(os.path.join(ROOT, "csrc", "kernels", "fused_unmask_stats.cuh")) as f:
        text = f.read()
    assert text.count(SHARED_DECL) == 1, "update tests/test_cuda_emulated.py: the shared declaration changed"
    text = text.replace(SHARED_DECL, "static uint32_t suppress_bits[1 << 16];  // emulation")
    with open(stats) as f:
        if f.read() != text:
            with open(stats, "w") as g:
                g.write(text)
    return dst


@pytest.fixture(scope="module")
def emu():
    from torch.utils.cpp_extension import load

    src = _sync_sources()
    module = load(name="dllm_cuda_emu", sources=[os.path.join(EMU_DIR, "emu_binding.cpp")],
                  extra_include_paths=[EMU_DIR, src], extra_cflags=["-O1", "-std=c++20"],
                  build_directory=BUILD_DIR)
    slots = [0]

    def op(logits, x, conf, state, **kw):
        pos, given = op_positional(logits, x, conf, state, **kw)
        full = dict(DEFAULTS, **given)
        return module.emu(*pos, *[full[k] for k in ORDER], slots[0])

    op.slots = slots
    return op


@pytest.fixture
def as_cuda_op(emu, monkeypatch):
    """The CUDA test-suite's helpers with the emulated kernels in place of the device."""
    monkeypatch.setattr(cuda_tests, "cuda_op", emu)
    return emu


@pytest.mark.parametrize("rule,conf_kind,dtype", [(0, 0, torch.float32), (1, 1, torch.bfloat16),
                                                  (2, 2, torch.float16), (3, 0, torch.bfloat16),
                                                  (4, 1, torch.float32), (4, 2, torch.bfloat16)])
def test_matches_cpu(as_cuda_op, rule, conf_kind, dtype):
    cuda_tests.test_matches_cpu_every_rule_conf_kind_dtype(rule, conf_kind, dtype)


@pytest.mark.parametrize("seed", range(6))
def test_random_scenarios_vs_reference(as_cuda_op, seed):
    cuda_tests.test_random_scenarios_vs_reference(seed)


def test_invalid_rows(as_cuda_op):
    cuda_tests.test_invalid_rows_match_cpu()


def test_span_longer_than_grid_slots(as_cuda_op):
    cuda_tests.test_span_longer_than_grid_slots()


def test_no_rows(as_cuda_op):
    cuda_tests.test_no_rows()


@pytest.mark.parametrize("fields", cuda_tests.LONG_BLOCK_RULES, ids=rule_id)
def test_long_block(as_cuda_op, fields):
    cuda_tests.test_long_block_matches_cpu(fields)


def _run(op, logits, x, conf, state, kw):
    x, conf, state = x.clone(), conf.clone(), state.clone()
    out = op(logits, x, conf, state, **kw)
    return (x, conf, state, *out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("policy", range(len(cuda_tests.POLICIES)))
def test_bitwise_invariance(emu, policy, dtype):
    """Alone or in a batch, aligned or not, with any number of grid slots: the same bits."""
    B, L, V = 3, 24, 40961
    gen = torch.Generator().manual_seed(100 + policy)
    batch = make_batch(B, L, V, gen, block_length=8, seed=policy)
    logits = peaked_logits(B, L, V, dtype, gen, spread=6.0)
    kw = dict(cuda_tests.POLICIES[policy], block_length=8, mask_id=batch.mask_id, eos_id=batch.eos_id,
              delimiter_ids=torch.tensor([5]))
    args = (batch.x, batch.state.conf, batch.state.state)
    whole = _run(emu, logits, *args, kw)
    for b in range(B):
        alone = _run(emu, logits[b:b + 1].clone(), *(t[b:b + 1] for t in args), kw)
        cuda_tests.assert_bitwise_same(alone, [t[b:b + 1] for t in whole], what=f"sequence {b}: ")
    padded = torch.empty(B, L, V + 1, dtype=dtype)
    padded[:, :, 1:] = logits
    cuda_tests.assert_bitwise_same(_run(emu, padded[:, :, 1:], *args, kw), whole, what="misaligned: ")
    emu.slots[0] = 1  # one grid slot per sequence: the blocks stride over the whole span
    try:
        cuda_tests.assert_bitwise_same(_run(emu, logits, *args, kw), whole, what="one slot: ")
    finally:
        emu.slots[0] = 0
