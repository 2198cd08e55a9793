"""What every unmasking policy buys on real (tiny, trained) dLLMs: forwards against quality.

    python bench/bench_quality.py                 # both committed models, the full table + plot
    python bench/bench_quality.py --quick         # fewer prompts, fewer policies (make demo uses it)

For each model in models/ (LLaDA-format checkpoints trained by dllm_kernels.training) and each
policy (one token per step; top-k 2 and 4; threshold 0.9 / 0.7 / 0.5; factor; LocalLeap; AdaBlock +
threshold; Learn2PD learned filter), each with and without EoTP and each without cache and with the
dual cache, held-out prompts are decoded with `dllm_kernels.generate` (fused_unmask on the CPU) and
the script records: forwards per generated (non-eos) token, mean forwards per prompt, wall time,
exact-match accuracy (addition), agreement with one-token-per-step output (whole answer, and per
token). Writes bench/results/quality.{md,jsonl,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import zlib

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dllm_kernels as dk  # noqa: E402
from dllm_kernels.training import data as D  # noqa: E402
from dllm_kernels.training.learn2pd import load_filter  # noqa: E402

MODELS = {
    # name: (gen_length, block_length)
    "addition": (D.ADD_GEN_LENGTH, 8),
    "shakespeare": (32, 16),
}


def load_model(name: str):
    path = os.path.join(ROOT, "models", name)
    model = dk.models.LLaDA.from_pretrained(path, dtype=torch.float32)
    return model, D.CharTokenizer.load(path), path


def held_out_prompts(name: str, tok, n: int):
    """(prompt id lists, answers or None) of the held-out set."""
    if name == "addition":
        probs = D.addition_eval_set(n)
        return [tok.encode(p) for p, _ in probs], [a for _, a in probs]
    with open(os.path.join(ROOT, "models", name, "heldout_prompts.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["ids"] for r in rows[:n]], None


def policies(name: str, block: int, tok, filt, quick: bool):
    newline = tok.index["\n"]
    base = dict(block_length=block)
    out = {
        "one token per step": dk.Policy(rule="topk", steps=block, **base),
        "top-k 2": dk.Policy(rule="topk", steps=block // 2, **base),
        "top-k 4": dk.Policy(rule="topk", steps=block // 4, **base),
        "threshold 0.9": dk.Policy(rule="threshold", threshold=0.9, **base),
        "threshold 0.7": dk.Policy(rule="threshold", threshold=0.7, **base),
        "threshold 0.5": dk.Policy(rule="threshold", threshold=0.5, **base),
        "factor 1.0": dk.Policy(rule="factor", factor=1.0, **base),
        "LocalLeap": dk.Policy(rule="localleap", **base),
        "AdaBlock + threshold 0.9": dk.Policy(rule="threshold", threshold=0.9, adaptive_block=True,
                                              delimiter_ids=(newline,), **base),
    }
    if filt is not None:
        f, meta = filt
        out["learned filter"] = dk.Policy(rule="filter", steps=block, learned_filter=f,
                                          filter_threshold=float(meta.get("threshold", 0.96)), **base)
        out["learned filter 0.8"] = dk.Policy(rule="filter", steps=block, learned_filter=f,
                                              filter_threshold=0.8, **base)
    if quick:
        keep = ("one token per step", "top-k 2", "threshold 0.9", "threshold 0.5", "learned filter")
        out = {k: v for k, v in out.items() if k in keep}
    return out


def text_of(tok, row) -> str:
    return tok.decode(row)


def run_model(name: str, n: int, quick: bool, caches, eotps, log=print):
    gen_length, block = MODELS[name]
    model, tok, path = load_model(name)
    fpath = os.path.join(path, "learn2pd_filter.safetensors")
    filt = load_filter(fpath) if os.path.exists(fpath) else None
    prompts, answers = held_out_prompts(name, tok, n)
    rows = []
    baseline = None
    for pname, pol in policies(name, block, tok, filt, quick).items():
        for eotp in eotps:
            for cache in caches:
                import dataclasses
                p = dataclasses.replace(pol, eotp=eotp)
                t0 = time.perf_counter()
                out = dk.generate(model, prompts, gen_length=gen_length, policy=p, cache=cache,
                                  mask_id=tok.mask_id, eos_id=tok.eos_id)
                wall = time.perf_counter() - t0
                texts = [text_of(tok, r) for r in out.tokens]
                if baseline is None:  # the first run: one token per step, no EoTP, no cache
                    assert pname == "one token per step" and not eotp and cache == "none"
                    baseline = (texts, out.tokens.clone())
                gen_tok = sum(max(1, g) for g in out.generated_tokens)
                agree_seq = sum(a == b for a, b in zip(texts, baseline[0])) / len(texts)
                base_tok = baseline[1]
                valid = (base_tok != tok.eos_id) | (out.tokens != tok.eos_id)
                agree_tok = float(((out.tokens == base_tok) & valid).sum()) / max(int(valid.sum()), 1)
                row = {"model": name, "policy": pname, "eotp": eotp, "cache": cache, "prompts": len(prompts),
                       "forwards_per_token": sum(out.nfe) / gen_tok,
                       "forwards_per_prompt": sum(out.nfe) / len(prompts),
                       "batch_forwards": out.forward_calls, "wall_s": wall,
                       "agreement": agree_seq, "token_agreement": agree_tok, "finished": out.finished}
                if answers is not None:
                    row["accuracy"] = sum(t == a for t, a in zip(texts, answers)) / len(texts)
                rows.append(row)
                log(fmt_row(row))
    return rows


def fmt_row(r) -> str:
    acc = f"{100 * r['accuracy']:6.1f}" if "accuracy" in r else "     -"
    return (f"| {r['model']:<11} | {r['policy']:<24} | {'yes' if r['eotp'] else 'no ':<4} | {r['cache']:<5} | "
            f"{r['forwards_per_token']:7.3f} | {r['forwards_per_prompt']:6.2f} | {r['wall_s']:7.2f} | {acc} | "
            f"{100 * r['agreement']:6.1f} | {100 * r['token_agreement']:6.1f} |")


HEADER = ("| model       | policy                   | EoTP | cache | fwd/tok | fwd/prompt | wall s | acc % | "
          "agree % | tok agree % |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|")


# ---- a tiny PNG plot (no matplotlib): axes, ticks with a 3x5 bitmap font, points, Pareto steps ----------

FONT = {  # 3x5 glyphs, rows top to bottom, 3 bits each
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "%": "101001010100101",
    "-": "000000111000000", " ": "000000000000000", "/": "001001010100100", "+": "000010111010000",
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011", "D": "110101101101110",
    "E": "111100110100111", "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "K": "101101110101101", "L": "100100100100111", "M": "101111111101101",
    "N": "110101101101101", "O": "010101101101010", "P": "110101110100100", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111", "V": "101101101101010",
    "W": "101101111111101", "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    "Q": "010101101110011", "J": "001001001101010",
}


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def set(self, x, y, c):
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def rect(self, x0, y0, x1, y1, c):
        for y in range(min(y0, y1), max(y0, y1) + 1):
            for x in range(min(x0, x1), max(x0, x1) + 1):
                self.set(x, y, c)

    def line(self, x0, y0, x1, y1, c):
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(n + 1):
            self.set(round(x0 + (x1 - x0) * i / n), round(y0 + (y1 - y0) * i / n), c)

    def text(self, x, y, s, c=(0, 0, 0), scale=2):
        for ch in s.upper():
            g = FONT.get(ch, FONT[" "])
            for r in range(5):
                for k in range(3):
                    if g[r * 3 + k] == "1":
                        self.rect(x + k * scale, y + r * scale, x + k * scale + scale - 1, y + r * scale + scale - 1, c)
            x += 4 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(tag, data):
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff)

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


COLORS = {"one token per step": (0, 0, 0), "top-k 2": (120, 120, 120), "top-k 4": (180, 180, 180),
          "threshold 0.9": (31, 119, 180), "threshold 0.7": (70, 150, 210), "threshold 0.5": (130, 190, 235),
          "factor 1.0": (255, 127, 14), "LocalLeap": (44, 160, 44), "AdaBlock + threshold 0.9": (148, 103, 189),
          "learned filter": (214, 39, 40), "learned filter 0.8": (240, 130, 130)}


def pareto(points):
    """Points (x, y) not dominated by another with x' <= x and y' >= y; sorted by x."""
    front = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot(rows, path):
    """One panel per model: y = accuracy (addition) or agreement with one-token-per-step (others),
    x = forwards per generated token; filled squares: no cache, hollow: dual cache; EoTP runs drawn
    smaller; the grey step line is the Pareto front over all runs."""
    models = sorted({r["model"] for r in rows})
    pw, ph, m = 460, 340, 60
    c = Canvas(pw * len(models) + 20, ph + 150)
    for mi, name in enumerate(models):
        rs = [r for r in rows if r["model"] == name]
        key = "accuracy" if "accuracy" in rs[0] else "agreement"
        xs = [r["forwards_per_token"] for r in rs]
        ys = [100 * r[key] for r in rs]
        x_lo, x_hi = 0.0, max(xs) * 1.05
        y_lo = max(0.0, (min(ys) // 10) * 10)
        y_hi = 100.0
        ox = 20 + mi * pw + m
        w, h = pw - m - 20, ph - m
        oy = 30 + h

        def X(v):
            return ox + int((v - x_lo) / (x_hi - x_lo) * w)

        def Y(v):
            return oy - int((v - y_lo) / max(y_hi - y_lo, 1e-9) * h)

        c.text(ox, 6, f"{name} {key}% vs fwd/tok", scale=2)
        c.line(ox, oy, ox + w, oy, (0, 0, 0))
        c.line(ox, oy, ox, oy - h, (0, 0, 0))
        for i in range(6):
            v = y_lo + (y_hi - y_lo) * i / 5
            c.line(ox - 4, Y(v), ox, Y(v), (0, 0, 0))
            c.line(ox + 1, Y(v), ox + w, Y(v), (235, 235, 235))
            c.text(ox - 44, Y(v) - 5, f"{v:.0f}", scale=2)
        for i in range(6):
            v = x_lo + (x_hi - x_lo) * i / 5
            c.line(X(v), oy, X(v), oy + 4, (0, 0, 0))
            c.text(X(v) - 12, oy + 8, f"{v:.2f}", scale=2)
        c.text(ox + w // 2 - 70, oy + 24, "forwards per token", scale=2)
        front = pareto(list(zip(xs, ys)))
        for (x0, y0), (x1, y1) in zip(front, front[1:]):
            c.line(X(x0), Y(y0), X(x1), Y(y0), (150, 150, 150))
            c.line(X(x1), Y(y0), X(x1), Y(y1), (150, 150, 150))
        for r, x, y in zip(rs, xs, ys):
            col = COLORS.get(r["policy"], (0, 0, 0))
            s = 3 if r["eotp"] else 5
            px, py = X(x), Y(y)
            if r["cache"] == "none":
                c.rect(px - s, py - s, px + s, py + s, col)
            else:
                for d in range(-s, s + 1):
                    c.set(px + d, py - s, col), c.set(px + d, py + s, col)
                    c.set(px - s, py + d, col), c.set(px + s, py + d, col)
    # legend
    lx, ly = 30, ph + 70
    for i, (name, col) in enumerate(COLORS.items()):
        x = lx + (i % 4) * 230
        y = ly + (i // 4) * 18
        c.rect(x, y, x + 10, y + 10, col)
        c.text(x + 16, y, name, scale=2)
    c.text(lx, ly + 60, "filled no cache, hollow dual cache, small EoTP, grey Pareto front", scale=2)
    with open(path, "wb") as f:
        f.write(c.png())


def write_markdown(rows, path, header_note=""):
    lines = ["# Quality against forwards on the tiny trained dLLMs", "",
             "Generated by `python bench/bench_quality.py` (CPU, fused_unmask C++ op, float32 weights).",
             "fwd/tok: forwards per generated non-eos token (each sequence's own forwards); fwd/prompt: mean forwards",
             "per prompt; acc: exact match of the answer (addition); agree: whole output equal to one-token-per-step",
             "(no cache, no EoTP); tok agree: per position. Wall time is the whole batch on a shared CPU (noisy).", ""]
    if header_note:
        lines += [header_note, ""]
    lines += [HEADER] + [fmt_row(r) for r in rows]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--n-addition", type=int, default=400)
    ap.add_argument("--n-shakespeare", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="few prompts, six policies, no cache only (demo)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "quality"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    caches = ("none",) if a.quick else ("none", "dual")
    eotps = (False, True)
    print(HEADER)
    rows = []
    for name in a.models:
        n = a.n_addition if name == "addition" else a.n_shakespeare
        rows += run_model(name, n, a.quick, caches, eotps)
    if a.out and not a.quick:
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out + ".jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        write_markdown(rows, a.out + ".md")
        plot(rows, a.out + ".png")
        print(f"wrote {a.out}.md, .jsonl, .png")
    return rows


if __name__ == "__main__":
    main()
