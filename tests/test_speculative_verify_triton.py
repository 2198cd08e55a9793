"""The Triton speculative_verify (dllm_kernels/triton_speculative_verify.py) against the C++ op and the
float64 reference. Without a GPU the kernel runs under the Triton interpreter (tests/conftest.py),
so shapes stay small; `block_v` forces several tiles per row (odd V: a partial last tile)."""
import math

import pytest
import torch

import dllm_kernels  # noqa: F401  (loads the native op)
from dllm_kernels.triton_speculative_verify import VerifyArgumentError, speculative_verify_triton
from speculative_cases import BAD_INPUTS, DTYPES, assert_matches_reference, greedy_loop, make_case

# The interpreter evaluates both sides of tl.where in numpy: log(0) of masked-out lanes warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPU_OP = torch.ops.dllm.speculative_verify


def triton_op(block_v=None):
    def op(*args):
        dev = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
        return tuple(t.cpu() for t in speculative_verify_triton(*dev, block_v=block_v))
    return op


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,V,block_v", [(1, 2, None), (3, 37, 16), (5, 67, 32)])
def test_greedy_matches_loop_and_cpu(dtype, K, V, block_v):
    g = torch.Generator().manual_seed(K + V)
    case = make_case(6, K, V, dtype, g)
    acc, out = triton_op(block_v)(*case, 0.0, False)
    racc, rout = greedy_loop(case[0], case[1], case[3])
    assert torch.equal(acc, racc) and torch.equal(out, rout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("draft_is_logits", [False, True])
@pytest.mark.parametrize("K,V,T,block_v", [(1, 3, 1.0, None), (4, 45, 0.8, 16)])
def test_sampling_matches_reference_and_cpu(dtype, draft_is_logits, K, V, T, block_v):
    g = torch.Generator().manual_seed(K * 3 + V)
    case = make_case(8, K, V, dtype, g, draft_is_logits=draft_is_logits)
    assert_matches_reference(triton_op(block_v), case, T, draft_is_logits, min_compared=0.75)
    assert_matches_reference(CPU_OP, case, T, draft_is_logits, min_compared=0.75)


def test_draft_length_zero_and_full():
    g = torch.Generator().manual_seed(1)
    for lens in ([0, 0, 0, 0], [3, 3, 3, 3]):
        case = make_case(4, 3, 19, torch.float32, g, lens=lens, draft_is_logits=True)
        assert_matches_reference(triton_op(8), case, 1.0, True, min_compared=0.5)


@pytest.mark.parametrize("T", [0.0, 1.0])
def test_invalid_rows_like_cpu(T):
    g = torch.Generator().manual_seed(2)
    target, tokens, draft, lens, seed, offset = make_case(3, 3, 9, torch.float32, g, lens=[3, 3, 3])
    tokens[:] = target[:, :3].argmax(-1)
    draft[:] = torch.nn.functional.one_hot(tokens, 9).float()
    target[0, 1, 2] = float("nan")
    target[1, 1, 5] = math.inf
    target[2, 1] = -math.inf
    case = (target, tokens, draft, lens, seed, offset)
    got = triton_op(4)(*case, T, False)
    want = CPU_OP(*case, T, False)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_same_messages(name, mutate, message):
    g = torch.Generator().manual_seed(9)
    case, kw = list(make_case(3, 4, 11, torch.float32, g, lens=[1, 2, 0])), {"temperature": 1.0}
    mutate(case, kw)
    with pytest.raises(VerifyArgumentError) as exc:
        speculative_verify_triton(*case, kw["temperature"], False)
    assert message in str(exc.value)


@pytest.mark.parametrize("T", [0.0, 1.0])
def test_kernel_guards_unchecked_values(T):
    """What the kernel does on CUDA, where lengths and tokens are not checked on the host: lengths
    clamp into [0, K], out-of-range tokens are rejected (no out-of-bounds read)."""
    g = torch.Generator().manual_seed(3)
    target, tokens, draft, lens, seed, offset = make_case(4, 3, 13, torch.float32, g, lens=[3, 3, 3, 3])
    tokens[:] = target[:, :3].argmax(-1)
    draft[:] = torch.nn.functional.one_hot(tokens, 13).float()
    raw_lens = torch.tensor([9, -4, 3, 3])
    tokens[2, 0] = 13
    tokens[3, 1] = -7
    dev = [t.to(DEVICE) for t in (target, tokens, draft, raw_lens, seed, offset)]
    acc, out = (t.cpu() for t in speculative_verify_triton(*dev, T, False, check_values=False))
    assert acc[1] == 0 and acc[2] == 0 and acc[3] <= 1 and acc[0] <= 3
    assert (out >= -1).all() and (out < 13).all()
    # the clamped lengths and a rejected token give what the C++ op gives for those inputs
    fixed_lens = torch.tensor([3, 0, 0, 1])
    want = CPU_OP(target, tokens.clamp(0, 12), draft, fixed_lens, seed, offset, T, False)
    assert torch.equal(acc[:2], want[0][:2]) and torch.equal(out[:2], want[1][:2])


def test_device_mismatch_named():
    g = torch.Generator().manual_seed(4)
    case = list(make_case(2, 2, 7, torch.float32, g))
    case[1] = case[1].to("meta")
    with pytest.raises(VerifyArgumentError, match="draft_tokens is on meta but target_logits is on cpu"):
        speculative_verify_triton(*case, 1.0, False)
