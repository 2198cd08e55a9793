"""Decode with every policy through fused_unmask and show what each one commits.

No trained dLLM can be downloaded here, so the "model" is a synthetic denoiser: each position has a
hidden target token (text-like, with newline delimiters and an end-of-text tail), and its logits
get more peaked on the target as more neighbours are decoded, the way a real dLLM's confidence
grows with context. Each policy decodes the same batch; the table shows forwards (NFE), tokens per
step, agreement with the targets, and the time of one fused step against the float64 reference.

    python examples/demo.py            # (make demo)
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dllm_kernels as dk  # noqa: E402

V, PROMPT, GEN, B = 8192, 16, 96, 2
MASK_ID, EOS_ID, NEWLINE = V - 128, V - 383, 198


def make_targets(gen):
    targets = torch.randint(1000, V - 400, (B, PROMPT + GEN), generator=gen)
    for b in range(B):
        targets[b, PROMPT + 9::11] = NEWLINE  # lines of ten tokens
        end = PROMPT + GEN - 20 - 13 * b  # sequences end at different places
        targets[b, end:] = EOS_ID
    return targets


class SyntheticDenoiser:
    """Logits peaked on the target, more so the more of its neighbourhood is decoded."""

    def __init__(self, targets, seed=0):
        self.targets = targets
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        decoded = (x != MASK_ID).float()
        context = torch.nn.functional.avg_pool1d(decoded[:, None], 9, stride=1, padding=4)[:, 0]
        logits = torch.randn(x.shape[0], x.shape[1], V, generator=self.gen) * 1.5
        boost = 5.0 + 9.0 * context + torch.randn(x.shape, generator=self.gen) * 2.0
        logits.scatter_add_(2, self.targets[:, :, None], boost[:, :, None])
        return logits.to(torch.bfloat16)


def decode(policy, targets, seed=0):
    """Decode the batch to the end through the fused op; returns tokens, forwards, mean step time."""
    model = SyntheticDenoiser(targets, seed)
    x = targets.clone()
    x[:, PROMPT:] = MASK_ID
    state = dk.DecodeState.new(B, x.shape[1], gen_start=PROMPT, seed=seed)
    nfe, step_time = 0, 0.0
    while not state.all_done() and nfe < 4 * GEN:
        logits = model(x)
        t0 = time.perf_counter()
        dk.fused_unmask(logits, x, state, policy, mask_id=MASK_ID, eos_id=EOS_ID)
        step_time += time.perf_counter() - t0
        nfe += 1
    return x, nfe, step_time / max(nfe, 1)


def reference_step_time(policy, targets, steps=1, seed=0):
    """The first steps through the float64 reference, checked against the fused op on the same inputs."""
    model = SyntheticDenoiser(targets, seed)
    x = targets.clone()
    x[:, PROMPT:] = MASK_ID
    state = dk.DecodeState.new(B, x.shape[1], gen_start=PROMPT, seed=seed)
    total = 0.0
    for _ in range(steps):
        logits = model(x)
        x_fused, state_fused = x.clone(), state.clone()
        dk.fused_unmask(logits, x_fused, state_fused, policy, mask_id=MASK_ID, eos_id=EOS_ID)
        t0 = time.perf_counter()
        dk.fused_unmask(logits, x, state, policy, mask_id=MASK_ID, eos_id=EOS_ID, backend="reference")
        total += time.perf_counter() - t0
        assert torch.equal(x, x_fused), "fused op and float64 reference committed different tokens"
    return total / steps


def main():
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    targets = make_targets(gen)
    filt_gen = torch.Generator().manual_seed(1)
    learned = dk.LearnedFilter(torch.randn(32, 32, generator=filt_gen) * 0.3, torch.zeros(32),
                               torch.eye(32)[:, :32] * 4.0, torch.full((32,), -3.0))
    delim = dict(adaptive_block=True, delimiter_ids=(NEWLINE,), block_delta=0.3)
    policies = {
        "one token per step (top-k 1)": dk.Policy(rule="topk", steps=32),
        "top-k 4 per step": dk.Policy(rule="topk", steps=8),
        "threshold 0.9 (Fast-dLLM)": dk.Policy(rule="threshold", threshold=0.9),
        "threshold 0.7": dk.Policy(rule="threshold", threshold=0.7),
        "factor 1.0 (Fast-dLLM dynamic)": dk.Policy(rule="factor", factor=1.0),
        "LocalLeap (0.9 / 0.75, W=4)": dk.Policy(rule="localleap"),
        "LocalLeap graded": dk.Policy(rule="localleap", graded=True),
        "AdaBlock + threshold 0.9": dk.Policy(rule="threshold", **delim),
        "threshold 0.9 + EoTP": dk.Policy(rule="threshold", eotp=True),
        "learned filter (untrained) + EoTP": dk.Policy(rule="filter", steps=32, learned_filter=learned, eotp=True),
        "threshold 0.9, T=1 sampling": dk.Policy(rule="threshold", temperature=1.0),
    }
    print(f"# {B} sequences, prompt {PROMPT}, generation {GEN}, V = {V}, bf16 logits, CPU, 2 threads")
    print(f"{'policy':<36} {'NFE':>4} {'tok/step':>9} {'match':>7} {'fused ms':>9} {'ref ms':>8} {'speed-up':>9}")
    for name, policy in policies.items():
        x, nfe, t_fused = decode(policy, targets)
        t_ref = reference_step_time(policy, targets)
        gen_region = slice(PROMPT, None)
        match = (x[:, gen_region] == targets[:, gen_region]).float().mean().item()
        tokens = (x[:, gen_region] != EOS_ID).sum().item()
        print(f"{name:<36} {nfe:>4} {tokens / nfe:>9.2f} {match:>7.1%} {t_fused * 1e3:>9.2f} {t_ref * 1e3:>8.1f} "
              f"{t_ref / t_fused:>8.0f}x")
    print("\nThe first step of every policy also ran through the float64 reference (ref ms): same tokens.")
    print("First sequence, threshold 0.9 + EoTP, as token ids (198 = newline, eos shown as '.'):")
    x, _, _ = decode(policies["threshold 0.9 + EoTP"], targets)
    toks = ["." if t == EOS_ID else ("\\n" if t == NEWLINE else str(t)) for t in x[0, PROMPT:].tolist()]
    print(" ".join(toks))


if __name__ == "__main__":
    main()
    # Part 2: the tiny dLLMs trained in this repository (models/), with a quick quality/forwards table.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import demo_models  # noqa: E402

    demo_models.main()
    # Part 3: one prompt through each model class (LLaDA trained here; Dream, SDAR, Fast-dLLM v2 random).
    import demo_model_classes  # noqa: E402

    demo_model_classes.main()
