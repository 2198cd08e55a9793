"""dllm_kernels.compat against restatements of the public helpers, written here from their published
behaviour (Fast-dLLM, LLaDA, SGLang, Dream), decision for decision at temperature 0."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dllm_kernels import compat

DTYPES = (torch.float32, torch.bfloat16)
V, MASK = 64, 63


# ---- inputs ---------------------------------------------------------------------------------------

def peaked_logits(B, L, dtype, *, gen, ties=True, saturated=True):
    """randn * 4 with one boosted token per row (confidences spread over (0, 1)); some rows copied
    (exact ties), some boosted far (float64 probabilities at or next to 1: float32 cannot order them)."""
    logits = torch.randn(B, L, V, generator=gen) * 4
    top = torch.randint(0, V - 1, (B, L, 1), generator=gen)
    logits.scatter_add_(2, top, torch.rand(B, L, 1, generator=gen) * 16)
    if saturated:
        far = torch.rand(B, L, generator=gen) < 0.2
        logits[far] = logits[far] * 0.1
        logits[far, 5] += 30 + torch.rand(int(far.sum()), generator=gen) * 10
    if ties:
        for b in range(B):
            src = torch.randint(0, L, (3,), generator=gen).tolist()
            dst = torch.randint(0, L, (3,), generator=gen).tolist()
            for s, d in zip(src, dst):
                logits[b, d] = logits[b, s]
    return logits.to(dtype)


def near_tie_logits(B, L, dtype, *, gen):
    """Rows float32 cannot order: saturated ones (probability within 1e-7 of 1) and copies of one
    row with a losing logit nudged (probabilities a few 1e-9 apart)."""
    logits = peaked_logits(B, L, torch.float32, gen=gen, ties=False, saturated=False)
    for b in range(B):
        rows = torch.randperm(L, generator=gen)
        logits[b, rows[:6]] = logits[b, rows[:6]] * 0.1
        logits[b, rows[:6], 9] = 17.0 + torch.arange(6) * 0.25  # 1 - p ~ 1e-7 .. 1e-8
        base = logits[b, rows[6]].clone()
        for i, r in enumerate(rows[7:12].tolist()):
            logits[b, r] = base
            logits[b, r, (int(base.argmax()) + 1) % V] += 0.004 * (i + 1)
    return logits.to(dtype)


def masked_x(B, L, *, gen, masked_counts=None):
    x = torch.randint(0, V - 1, (B, L), generator=gen)
    mask = torch.rand(B, L, generator=gen) < 0.6
    if masked_counts is not None:
        for b, n in enumerate(masked_counts):
            mask[b] = False
            mask[b, torch.randperm(L, generator=gen)[:n]] = True
    x[mask] = MASK
    return x, mask


# ---- restatements of the public helpers (temperature 0) ------------------------------------------

def ref_get_transfer_index(logits, remasking, mask_index, x, num_transfer_tokens, threshold=None):
    x0 = torch.argmax(logits, dim=-1)
    if remasking == "low_confidence":
        x0_p = F.softmax(logits.to(torch.float64), dim=-1).gather(-1, x0[..., None])[..., 0]
    else:
        x0_p = torch.rand(x0.shape)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    if threshold is not None:
        num_transfer_tokens = mask_index.sum(dim=1, keepdim=True)
    for j in range(confidence.shape[0]):
        _, idx = torch.topk(confidence[j], k=num_transfer_tokens[j])
        transfer[j, idx] = True
        if threshold is not None:
            for k in range(1, num_transfer_tokens[j]):
                if confidence[j, idx[k]] < threshold:
                    transfer[j, idx[k]] = False
    return x0, transfer


def ref_get_transfer_index_dynamic(logits, remasking, mask_index, x, factor):
    x0 = torch.argmax(logits, dim=-1)
    if remasking == "low_confidence":
        x0_p = F.softmax(logits.to(torch.float64), dim=-1).gather(-1, x0[..., None])[..., 0]
    else:
        x0_p = torch.rand(x0.shape)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    counts = mask_index.sum(dim=1, keepdim=True)
    for j in range(confidence.shape[0]):
        if counts[j] == 0:
            continue  # the public loop raises here; the drop-in commits nothing
        threshs = [1 - factor / (n + 1) for n in range(1, counts[j] + 1)]
        threshs[0] = -1
        ranked = torch.sort(confidence[j][mask_index[j]], descending=True)[0]
        for top_i in range(len(threshs)):
            if ranked[top_i] < threshs[top_i]:
                break
        if top_i == 0 or top_i == len(threshs) - 1:
            top_i += 1
        _, idx = torch.topk(confidence[j], k=top_i)
        transfer[j, idx] = True
    return x0, transfer


def ref_llada_step(logits, x, mask_id, block_end, ks, remasking="low_confidence", logits_eos_inf=False,
                   confidence_eos_eot_inf=False, eos=3, eot=4):
    logits = logits.clone()
    mask_index = x == mask_id
    if logits_eos_inf:
        logits[:, :, eos] = -torch.inf
    x0 = torch.argmax(logits, dim=-1)
    if confidence_eos_eot_inf:
        logits[:, :, eos] = logits[:, :, eot] = -torch.inf  # T = 0: the noisy logits are the logits
    if remasking == "low_confidence":
        x0_p = F.softmax(logits, dim=-1).gather(-1, x0[..., None])[..., 0]
    else:
        x0_p = torch.rand(x0.shape)
    x0_p[:, block_end:] = -np.inf
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    for j in range(confidence.shape[0]):
        _, idx = torch.topk(confidence[j], k=ks[j])
        transfer[j, idx] = True
    return x0, transfer


def ref_sglang_low_confidence(logits, input_ids, mask_id, threshold=0.95):
    mask = input_ids == mask_id
    done = mask.sum(dim=1) == 0
    x = torch.argmax(logits, dim=-1)
    conf = F.softmax(logits, dim=-1).gather(-1, x[..., None])[..., 0]
    conf = torch.where(mask, conf, -float("inf"))
    transfer = conf > threshold
    top1 = torch.zeros_like(transfer)
    top1[torch.arange(conf.shape[0]), torch.argmax(conf, dim=1)] = True
    transfer = torch.where((transfer.sum(dim=1) > 0)[:, None], transfer, top1)
    x = torch.where(mask, x, input_ids)
    return torch.where(transfer, x, input_ids), transfer, done


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _same(ours, ref, where=None):
    for a, b in zip(ours, ref):
        if where is not None:
            a, b = a[where], b[where]
        assert torch.equal(a.cpu(), b.cpu())


# ---- Fast-dLLM ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(6))
def test_get_transfer_index_topk(dtype, seed):
    gen = _gen(seed)
    B, L = 3, 24
    logits = peaked_logits(B, L, dtype, gen=gen)
    x, mask = masked_x(B, L, gen=gen)
    counts = mask.sum(1)
    # per row: a share of its masks, all of them, and more than it has (marks -inf positions)
    ks = torch.stack([counts // 3, counts, torch.clamp(counts + 4, max=L)], dim=0)[seed % 3].reshape(B, 1)
    _same(compat.get_transfer_index(logits, 0.0, "low_confidence", mask, x, ks),
          ref_get_transfer_index(logits, "low_confidence", mask, x, ks))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_get_transfer_index_orders_what_float32_cannot(dtype):
    for seed in range(6):
        gen = _gen(50 + seed)
        logits = near_tie_logits(3, 24, dtype, gen=gen)
        x = torch.full((3, 24), MASK)
        mask = x == MASK
        for k in (1, 2, 3, 5, 8):
            ks = torch.full((3, 1), k)
            _same(compat.get_transfer_index(logits, 0.0, "low_confidence", mask, x, ks),
                  ref_get_transfer_index(logits, "low_confidence", mask, x, ks))
        probs = F.softmax(logits.double(), -1).max(-1).values
        for threshold in probs[0, :8].tolist():  # thresholds at the confidences themselves
            _same(compat.get_transfer_index(logits, 0.0, "low_confidence", mask, x, None, threshold),
                  ref_get_transfer_index(logits, "low_confidence", mask, x, None, threshold))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threshold", [0.3, 0.7, 0.9, 0.999])
def test_get_transfer_index_threshold(dtype, threshold):
    for seed in range(4):
        gen = _gen(100 + seed)
        logits = peaked_logits(3, 24, dtype, gen=gen)
        x, mask = masked_x(3, 24, gen=gen)
        _same(compat.get_transfer_index(logits, 0.0, "low_confidence", mask, x, None, threshold),
              ref_get_transfer_index(logits, "low_confidence", mask, x, None, threshold))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("masked_counts", [(1, 1, 1), (0, 1, 5), (0, 0, 0)], ids=str)
def test_get_transfer_index_few_masks(dtype, masked_counts):
    gen = _gen(7)
    logits = peaked_logits(3, 16, dtype, gen=gen)
    x, mask = masked_x(3, 16, gen=gen, masked_counts=masked_counts)
    for ks in (torch.tensor([[1], [1], [1]]), torch.tensor([0, 1, 2]), torch.tensor([[3], [2], [6]])):
        _same(compat.get_transfer_index(logits, 0.0, "low_confidence", mask, x, ks),
              ref_get_transfer_index(logits, "low_confidence", mask, x, ks))
    _same(compat.get_transfer_index(logits, 0.0, "low_confidence", mask, x, None, 0.9),
          ref_get_transfer_index(logits, "low_confidence", mask, x, None, 0.9))


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_get_transfer_index_random_remasking_same_draws(threshold):
    gen = _gen(3)
    logits = peaked_logits(3, 24, torch.bfloat16, gen=gen)
    x, mask = masked_x(3, 24, gen=gen)
    ks = mask.sum(1, keepdim=True) // 2
    torch.manual_seed(11)
    ours = compat.get_transfer_index(logits, 0.0, "random", mask, x, ks, threshold)
    torch.manual_seed(11)
    _same(ours, ref_get_transfer_index(logits, "random", mask, x, ks, threshold))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0, 4.0])
def test_get_transfer_index_dynamic(dtype, factor):
    for seed in range(4):
        gen = _gen(200 + seed)
        logits = peaked_logits(3, 24, dtype, gen=gen)
        x, mask = masked_x(3, 24, gen=gen, masked_counts=[(0, 3, 9), (1, 2, 24), (5, 12, 17), None][seed])
        _same(compat.get_transfer_index_dynamic(logits, 0.0, "low_confidence", mask, x, None, factor),
              ref_get_transfer_index_dynamic(logits, "low_confidence", mask, x, factor))


def test_factor_quirk_commits_all_when_only_the_last_fails():
    # Three masked positions with probabilities ~0.99, ~0.9, ~0.3: at factor 1 the thresholds are
    # (-1, 2/3, 3/4): only the last fails, and the public loop then commits all three.
    logits = torch.full((1, 3, V), -20.0)
    for p, lead in enumerate((9.0, 6.5, 3.3)):
        logits[0, p, p] = lead
        logits[0, p, 10:14] = 2.0
    x = torch.full((1, 3), MASK)
    mask = torch.ones(1, 3, dtype=torch.bool)
    _, ours = compat.get_transfer_index_dynamic(logits, 0.0, "low_confidence", mask, x, None, 1.0)
    _, ref = ref_get_transfer_index_dynamic(logits, "low_confidence", mask, x, 1.0)
    assert ours.tolist() == ref.tolist() == [[True, True, True]]


def test_get_transfer_index_dynamic_random_same_draws():
    gen = _gen(5)
    logits = peaked_logits(2, 24, torch.float32, gen=gen)
    x, mask = masked_x(2, 24, gen=gen)
    torch.manual_seed(3)
    ours = compat.get_transfer_index_dynamic(logits, 0.0, "random", mask, x, None, 1.0)
    torch.manual_seed(3)
    _same(ours, ref_get_transfer_index_dynamic(logits, "random", mask, x, 1.0))


def test_temperature_samples_masked_positions_only():
    gen = _gen(9)
    logits = peaked_logits(2, 24, torch.bfloat16, gen=gen)
    x, mask = masked_x(2, 24, gen=gen)
    ks = mask.sum(1) // 2
    x0, transfer = compat.get_transfer_index(logits, 0.7, "low_confidence", mask, x, ks)
    assert torch.equal(x0[~mask], x[~mask]) and not bool(transfer[~mask].any())
    assert transfer.sum(1).tolist() == ks.tolist()


# ---- LLaDA ----------------------------------------------------------------------------------------

def test_get_num_transfer_tokens_matches():
    mask = torch.zeros(4, 40, dtype=torch.bool)
    for b, n in enumerate((0, 7, 32, 40)):
        mask[b, :n] = True
    for steps in (1, 3, 8, 64):
        mask_num = mask.sum(dim=1, keepdim=True)
        ref = torch.zeros(4, steps, dtype=torch.int64) + mask_num // steps
        for i in range(4):
            ref[i, :mask_num[i] % steps] += 1
        ours = compat.get_num_transfer_tokens(mask, steps)
        assert ours.dtype == torch.int64 and torch.equal(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True), (True, True)], ids=str)
def test_llada_transfer(dtype, flags):
    eos_inf, eot_inf = flags
    for seed in range(4):
        gen = _gen(300 + seed)
        B, L = 3, 32
        logits = (peaked_logits if seed % 2 else near_tie_logits)(B, L, dtype, gen=gen)
        logits[:, :, 3] += 6.0  # eos often wins, so the flags matter
        x, mask = masked_x(B, L, gen=gen)
        x[:, :8] = 1  # prompt
        block_end = 8 + 8 * (seed + 1)
        in_block = (x[:, :block_end] == MASK).sum(1)
        ks = torch.clamp(in_block // 2 + seed, min=0)
        ours = compat.llada_transfer(logits, x, MASK, block_end, ks, 0.0, "low_confidence",
                                     logits_eos_inf=eos_inf, confidence_eos_eot_inf=eot_inf, eos_id=3, eot_id=4)
        ref = ref_llada_step(logits, x, MASK, block_end, ks, logits_eos_inf=eos_inf,
                             confidence_eos_eot_inf=eot_inf)
        assert torch.equal(ours[1], ref[1])
        cand = mask & (torch.arange(L) < block_end)
        assert torch.equal(ours[0][cand], ref[0][cand])  # past the block ours keeps x


def test_llada_transfer_random_same_draws():
    gen = _gen(31)
    logits = peaked_logits(2, 32, torch.bfloat16, gen=gen)
    x, _ = masked_x(2, 32, gen=gen)
    torch.manual_seed(5)
    ours = compat.llada_transfer(logits, x, MASK, 20, torch.tensor([3, 2]), 0.0, "random")
    torch.manual_seed(5)
    assert torch.equal(ours[1], ref_llada_step(logits, x, MASK, 20, [3, 2], remasking="random")[1])


# ---- SGLang ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threshold", [0.5, 0.95, 0.999, 0.9999999])
def test_sglang_low_confidence(dtype, threshold):
    for seed in range(4):
        gen = _gen(400 + seed)
        logits = (peaked_logits if seed % 2 else near_tie_logits)(3, 16, dtype, gen=gen)
        x, _ = masked_x(3, 16, gen=gen, masked_counts=[None, (0, 1, 16), (2, 2, 2), (16, 5, 0)][seed])
        _same(compat.low_confidence_step(logits, x, MASK, threshold), ref_sglang_low_confidence(logits, x, MASK, threshold))


def test_sglang_threshold_is_strict():
    logits = torch.full((1, 2, V), -30.0)
    logits[0, :, 7] = 0.0  # probability 1.0 at both positions
    x = torch.full((1, 2), MASK)
    assert compat.low_confidence_step(logits, x, MASK, 1.0)[1].tolist() == [[True, False]]


# ---- bad input ------------------------------------------------------------------------------------

def test_bad_inputs_name_the_argument():
    logits = torch.randn(2, 8, V)
    x = torch.full((2, 8), MASK)
    mask = x == MASK
    with pytest.raises(NotImplementedError, match="remasking"):
        compat.get_transfer_index(logits, 0.0, "lowest", mask, x, 1)
    with pytest.raises(ValueError, match="mask_index"):
        compat.get_transfer_index(logits, 0.0, "low_confidence", mask[:, :4], x, 1)
    with pytest.raises(ValueError, match="num_transfer_tokens"):
        compat.get_transfer_index(logits, 0.0, "low_confidence", mask, x, 9)
    with pytest.raises(ValueError, match="num_transfer_tokens"):
        compat.get_transfer_index(logits, 0.0, "low_confidence", mask, x, None)
    with pytest.raises(TypeError, match="logits"):
        compat.get_transfer_index(logits.double(), 0.0, "low_confidence", mask, x, 1)
    with pytest.raises(ValueError, match="factor"):
        compat.get_transfer_index_dynamic(logits, 0.0, "low_confidence", mask, x, None, -1.0)
    with pytest.raises(ValueError, match="steps"):
        compat.get_num_transfer_tokens(mask, 0)


# ---- the example ----------------------------------------------------------------------------------

def test_drop_in_example_gives_identical_tokens():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, os.path.join(root, "examples", "drop_in_fast_dllm.py")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all tokens identical" in run.stdout and "DIFFER" not in run.stdout
