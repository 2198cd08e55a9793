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
        _same(compat.low_confidence_step(logits, x, MASK, threshold),
              ref_sglang_low_confidence(logits, x, MASK, threshold))


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


# ---- Dream ----------------------------------------------------------------------------------------

DV = 128  # > 50, so Dream's top_k = 50 filters


def ref_sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False, neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        srt, order = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(srt, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, remove),
                                    torch.finfo(logits.dtype).min)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1)
    confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        srt = torch.sort(probs, dim=-1, descending=True)[0]
        confidence = srt[:, 0] - srt[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def ref_dream_generate(model, input_ids, mask_id, max_length, steps, eps, alg, alg_temp, top_p, top_k):
    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=mask_id)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = model(x, "full", None)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index]) + mask_id
            chosen = torch.rand(*x0.shape) < p_transfer
            _, x0[chosen] = ref_sample_tokens(mask_logits[chosen], top_p=top_p, top_k=top_k)
            x[mask_index] = x0.clone()
            continue
        confidence, x0 = ref_sample_tokens(mask_logits, top_p=top_p, top_k=top_k,
                                           margin_confidence=alg == "topk_margin", neg_entropy=alg == "entropy")
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        k = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full[mask_index] = confidence
        if k > 0:
            if alg_temp is None or alg_temp == 0:
                _, idx = torch.topk(full, k)
            else:
                idx = torch.multinomial(F.softmax(full / alg_temp, dim=-1), num_samples=k)
            x_ = torch.zeros_like(x) + mask_id
            x_[mask_index] = x0.clone()
            rows = torch.arange(x.size(0)).unsqueeze(1).expand_as(idx)
            x[rows, idx] = x_[rows, idx]
    return x


class ToyDenoiser:
    """A deterministic callable: fixed peaked logits per position, sharpened by decoded neighbours."""

    def __init__(self, L, dtype, seed):
        gen = _gen(seed)
        self.base = torch.randn(L, DV, generator=gen) * 3
        self.target = torch.randint(0, DV - 1, (L,), generator=gen)
        self.gain = torch.rand(L, generator=gen) * 6
        self.base[torch.arange(L), self.target] += self.gain
        self.emb = torch.randn(DV, DV, generator=gen) * 0.5
        self.dtype = dtype

    def __call__(self, x, attention_mask, tok_idx):
        decoded = (x != DV - 1).float()
        context = F.avg_pool1d(decoded[:, None], 5, stride=1, padding=2)[:, 0]
        logits = self.base[None] + self.emb[x] * context[..., None]
        logits[:, torch.arange(x.shape[1]), self.target] += 8 * context
        return logits.to(self.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["prob", "margin", "neg_entropy"])
@pytest.mark.parametrize("filters", [(None, None), (None, 50), (0.9, None), (0.95, 50)], ids=str)
def test_dream_sample_tokens(dtype, kind, filters):
    top_p, top_k = filters
    gen = _gen(500)
    logits = peaked_logits(4, 16, torch.float32, gen=gen)
    logits = torch.cat([logits, torch.randn(4, 16, DV - V, generator=gen)], dim=-1).reshape(64, DV).to(dtype)
    flags = dict(margin_confidence=kind == "margin", neg_entropy=kind == "neg_entropy")
    conf, x0 = compat.sample_tokens(logits, 0.0, top_p, top_k, **flags)
    ref_conf, ref_x0 = ref_sample_tokens(logits, 0.0, top_p, top_k, **flags)
    assert torch.equal(x0, ref_x0) and conf.dtype == ref_conf.dtype
    if dtype == torch.float32:
        torch.testing.assert_close(conf, ref_conf, rtol=0, atol=2e-5)
    else:
        assert torch.equal(conf, ref_conf)
    for k in (1, 5, 17, 40):  # every ranking the Dream loop can ask for
        assert set(torch.topk(conf, k).indices.tolist()) == set(torch.topk(ref_conf, k).indices.tolist())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy", "origin"])
def test_dream_diffusion_generate(dtype, alg):
    B, P, L = 2, 6, 30
    for steps, top_k, top_p, alg_temp in ((24, None, None, None), (8, 50, None, None), (5, 50, 0.95, None),
                                          (12, None, None, 0.5)):
        if alg == "origin" and alg_temp is not None:
            continue
        model = ToyDenoiser(L, dtype, seed=steps)
        prompt = torch.randint(0, DV - 1, (B, P), generator=_gen(steps))
        torch.manual_seed(1)
        ours = compat.dream_diffusion_generate(model, prompt, mask_token_id=DV - 1, max_length=L, steps=steps,
                                               alg=alg, alg_temp=alg_temp, top_p=top_p, top_k=top_k)
        torch.manual_seed(1)
        ref = ref_dream_generate(model, prompt, DV - 1, L, steps, 1e-3, alg, alg_temp, top_p, top_k)
        assert torch.equal(ours, ref), (steps, top_k, top_p, alg_temp)
        assert not bool((ours == DV - 1).any())


def test_dream_bad_inputs():
    with pytest.raises(ValueError, match="alg"):
        compat.dream_diffusion_generate(lambda *a: None, torch.zeros(1, 2, dtype=torch.long), mask_token_id=5,
                                        max_new_tokens=4, alg="greedy")
    with pytest.raises(ValueError, match="top_k"):
        compat.sample_tokens(torch.randn(3, 8), top_k=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["prob", "margin", "neg_entropy"])
def test_dream_sample_tokens_hard_rows(dtype, kind):
    # Rows float32 cannot order (see near_tie_logits), and rows whose two best logits are adjacent
    # bfloat16 values near 0.1, so their rounded probabilities tie and Dream's x0 is the lower id.
    gen = _gen(600)
    rows = near_tie_logits(2, 24, torch.float32, gen=gen).reshape(48, V)
    rows = torch.cat([rows, torch.full((48, DV - V), -9.0)], dim=-1)
    close = torch.full((8, DV), -6.0)
    for r in range(8):
        close[r, 10 + r] = 0.10009765625 - 2.0 ** -11 * (1 + r % 2)
        close[r, 30 + r] = 0.10009765625
    logits = torch.cat([rows, close]).to(dtype)
    flags = dict(margin_confidence=kind == "margin", neg_entropy=kind == "neg_entropy")
    conf, x0 = compat.sample_tokens(logits, **flags)
    ref_conf, ref_x0 = ref_sample_tokens(logits, **flags)
    assert torch.equal(x0, ref_x0)
    if dtype != torch.float32:
        assert torch.equal(conf, ref_conf)
    full = torch.full((1, 64), -torch.inf, dtype=dtype)
    for k in (1, 3, 6, 9, 20, 50):
        a, b = full.clone(), full.clone()
        a[0, :56], b[0, :56] = conf, ref_conf
        assert torch.equal(torch.topk(a, k).indices, torch.topk(b, k).indices)


def test_dream_sample_tokens_samples_the_tempered_distribution():
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, 0.2])
    logits = row.repeat(20000, 1)
    conf, x0 = compat.sample_tokens(logits, temperature=0.7, top_k=5)
    kept = row >= torch.topk(row, 5).values[-1]
    ref_probs = torch.softmax(torch.where(kept, row / 0.7, torch.tensor(-float("inf"))), dim=-1)
    freq = torch.bincount(x0, minlength=8).double() / x0.numel()
    assert (freq - ref_probs.double()).abs().max() < 0.015
    torch.testing.assert_close(conf, ref_probs[x0], rtol=1e-5, atol=1e-6)


def test_dream_hooks_and_history():
    model = ToyDenoiser(20, torch.float32, seed=3)
    prompt = torch.randint(0, DV - 1, (2, 4), generator=_gen(3))
    seen = []

    def logits_hook(step, x, logits):
        seen.append(step)
        return logits

    out = compat.dream_diffusion_generate(model, prompt, mask_token_id=DV - 1, max_new_tokens=16, steps=6,
                                          alg="maskgit_plus", return_dict_in_generate=True, output_history=True,
                                          generation_logits_hook_func=logits_hook,
                                          generation_tokens_hook_func=lambda step, x, logits: x)
    ref = ref_dream_generate(model, prompt, DV - 1, 20, 6, 1e-3, "maskgit_plus", None, None, None)
    assert torch.equal(out.sequences, ref) and len(out.history) == 6 and seen == list(range(6))


def test_llada_transfer_sampling_is_seeded_by_the_generator():
    gen = _gen(41)
    logits = peaked_logits(2, 32, torch.float32, gen=gen)
    x, _ = masked_x(2, 32, gen=gen)
    runs = [compat.llada_transfer(logits, x, MASK, 32, 4, 1.0, confidence_eos_eot_inf=True, eos_id=3, eot_id=4,
                                  generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0][0], runs[1][0]) and not torch.equal(runs[0][0], runs[2][0])
    assert runs[0][1].sum(1).tolist() == [4, 4]
