"""Fast-dLLM's decoding loop with its selection helpers swapped for dllm_kernels.compat: one line.

The loop below is written the way Fast-dLLM's `generate` is (blocks, a step count per block, the
helper called once per forward, `x[transfer_index] = x0[transfer_index]`), and so are the two
helpers it calls, restated from their published behaviour. The script decodes held-out prompts
of the tiny models trained here (models/shakespeare and models/addition, LLaDA architecture; the
addition model is confident to within float32 rounding of 1, where ties are the hard part) with those
helpers, then with the drop-ins after the one changed line

    from dllm_kernels.compat import get_transfer_index, get_transfer_index_dynamic

and checks the tokens are identical, for the top-k schedule, the threshold rule, the factor rule
and random remasking, in float32 and bfloat16.

    python examples/drop_in_fast_dllm.py
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dllm_kernels as dk  # noqa: E402


# ---- Fast-dLLM's helpers as published (restated from their behaviour; temperature 0 shown) --------

def get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    counts = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + mask_num // steps
    for i in range(mask_num.size(0)):
        counts[i, :mask_num[i] % steps] += 1
    return counts


def _confidence(logits, remasking, mask_index, x):
    x0 = torch.argmax(logits, dim=-1)
    if remasking == "low_confidence":
        x0_p = F.softmax(logits.to(torch.float64), dim=-1).gather(-1, x0[..., None])[..., 0]
    else:
        x0_p = torch.rand(x0.shape, device=x0.device)
    return torch.where(mask_index, x0, x), torch.where(mask_index, x0_p, -np.inf)


def get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
    x0, confidence = _confidence(logits, remasking, mask_index, x)
    transfer_index = torch.zeros_like(x0, dtype=torch.bool)
    if threshold is not None:
        num_transfer_tokens = mask_index.sum(dim=1, keepdim=True)
    for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=num_transfer_tokens[j])
        transfer_index[j, select_index] = True
        if threshold is not None:
            for k in range(1, num_transfer_tokens[j]):
                if confidence[j, select_index[k]] < threshold:
                    transfer_index[j, select_index[k]] = False
    return x0, transfer_index


def get_transfer_index_dynamic(logits, temperature, remasking, mask_index, x, num_transfer_tokens, factor=1):
    x0, confidence = _confidence(logits, remasking, mask_index, x)
    transfer_index = torch.zeros_like(x0, dtype=torch.bool)
    counts = mask_index.sum(dim=1, keepdim=True)
    for j in range(confidence.shape[0]):
        threshs = [1 - factor / (n + 1) for n in range(1, counts[j] + 1)]
        threshs[0] = -1
        ranked = torch.sort(confidence[j][mask_index[j]], descending=True)[0]
        for top_i in range(len(threshs)):
            if ranked[top_i] < threshs[top_i]:
                break
        if top_i == 0 or top_i == len(threshs) - 1:
            top_i += 1
        _, select_index = torch.topk(confidence[j], k=top_i)
        transfer_index[j, select_index] = True
    return x0, transfer_index


# ---- Fast-dLLM's generate loop --------------------------------------------------------------------

@torch.no_grad()
def generate(model, prompt, steps=32, gen_length=32, block_length=16, temperature=0.0,
             remasking="low_confidence", mask_id=85, threshold=None, factor=None):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt.clone()
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    nfe = 0
    for num_block in range(num_blocks):
        start = prompt.shape[1] + num_block * block_length
        end = start + block_length
        num_transfer_tokens = get_num_transfer_tokens(x[:, start:end] == mask_id, steps_per_block)
        i = 0
        while True:
            nfe += 1
            mask_index = x == mask_id
            logits = model(x)  # the HF model's `.logits`
            mask_index[:, end:] = 0
            if factor is None:
                x0, transfer_index = get_transfer_index(logits, temperature, remasking, mask_index, x,
                                                        num_transfer_tokens[:, i] if threshold is None else None,
                                                        threshold)
            else:
                x0, transfer_index = get_transfer_index_dynamic(logits, temperature, remasking, mask_index, x,
                                                                None, factor)
            x[transfer_index] = x0[transfer_index]
            i += 1
            if (x[:, start:end] == mask_id).sum() == 0:
                break
    return x, nfe


CONFIGS = {
    "top-k, 2 tokens per step": dict(steps=0),  # steps = gen_length / 2
    "threshold 0.9": dict(threshold=0.9),
    "factor 1.0": dict(factor=1.0),
    "factor 3.0": dict(factor=3.0),
    "random remasking": dict(steps=0, remasking="random"),
}


def decode_all(model, prompts, mask_id, gen_length, block_length):
    out = {}
    for name, cfg in CONFIGS.items():
        cfg = dict(cfg, steps=cfg.get("steps", gen_length) or gen_length // 2)
        torch.manual_seed(0)  # random remasking draws from torch's generator
        rows = prompts if cfg.get("factor") is None else prompts[:1]  # the public factor loop needs B = 1
        out[name] = generate(model, rows, gen_length=gen_length, block_length=block_length, mask_id=mask_id, **cfg)
    return out


def held_out(name, n):
    """n held-out prompts of equal length: models/shakespeare's file, or fresh addition problems."""
    path = os.path.join(ROOT, "models", name)
    if name == "shakespeare":
        with open(os.path.join(path, "heldout_prompts.jsonl")) as f:
            return torch.tensor([json.loads(line)["ids"] for line in f if line.strip()][:n])
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import tiny_data as D

    tok = D.CharTokenizer.load(path)
    return torch.tensor([tok.encode(p) for p, _ in D.addition_eval_set(n)])


def main():
    torch.set_num_threads(1)  # the loop is small; more threads only wait on busy cores
    all_same = True
    print(f"{'model':<12} {'dtype':<15} {'helper':<26} forwards (public / drop-in)")
    for name, gen_length, block_length in (("shakespeare", 32, 16), ("addition", 8, 8)):
        path = os.path.join(ROOT, "models", name)
        with open(os.path.join(path, "config.json")) as f:
            mask_id = json.load(f)["mask_token_id"]
        prompts = held_out(name, 4)
        for dtype in (torch.float32, torch.bfloat16):
            model = dk.models.LLaDA.from_pretrained(path, dtype=dtype)
            use_public_helpers()
            public = decode_all(model, prompts, mask_id, gen_length, block_length)
            use_drop_ins()
            ours = decode_all(model, prompts, mask_id, gen_length, block_length)
            for cname in CONFIGS:
                (xa, na), (xb, nb) = public[cname], ours[cname]
                same = torch.equal(xa, xb) and na == nb
                all_same &= same
                print(f"{name:<12} {str(dtype):<15} {cname:<26} {na:>3} / {nb:>3}   tokens "
                      f"{'identical' if same else 'DIFFER'}")
    print("all tokens identical" if all_same else "SOME TOKENS DIFFER")
    return 0 if all_same else 1


_PUBLIC = (get_transfer_index, get_transfer_index_dynamic)


def use_drop_ins():
    global get_transfer_index, get_transfer_index_dynamic
    from dllm_kernels.compat import get_transfer_index, get_transfer_index_dynamic  # the one changed line


def use_public_helpers():
    global get_transfer_index, get_transfer_index_dynamic
    get_transfer_index, get_transfer_index_dynamic = _PUBLIC

if __name__ == "__main__":
    sys.exit(main())
