"""What every unmasking policy buys on real (tiny, trained) dLLMs: forwards against quality.

    python bench/bench_quality.py                     # every model in MODELS: table, claims, plot
    python bench/bench_quality.py --models sudoku     # one model (the other models' rows in the .jsonl are kept)
    python bench/bench_quality.py --quick             # few prompts, few policies, no cache (make demo)

For each model in models/ (LLaDA-format checkpoints trained here) and each policy (one token per step;
top-k 2 / 4 / 8; threshold 0.5 / 0.7 / 0.9 / 0.95; factor; LocalLeap; AdaBlock + threshold; the Learn2PD
filter trained for that model), each with and without EoTP and with no cache, the prefix cache and the
dual cache, held-out prompts are decoded with `dllm_kernels.generate` (fused_unmask on the CPU). Each
run records forwards per generated (non-eos) token, forwards per prompt, wall time, exact-match accuracy
(sudoku, addition), agreement with the one-token-per-step output (whole output and per token) and, for
the text models, the share of generated tokens that repeat the token before them. Writes
bench/results/quality.{md,jsonl,png}; the plot needs matplotlib (`pip install .[bench]`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import dllm_kernels as dk  # noqa: E402
import shakespeare_words as SW  # noqa: E402
import sudoku as S  # noqa: E402
import tiny_data as D  # noqa: E402
from dllm_kernels.training.learn2pd import load_filter  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Spec:
    gen_length: int
    block_length: int
    prompts: int          # held-out prompts of the full run
    text: bool            # free text: no answer, quality is agreement with one token per step


MODELS = {
    "sudoku": Spec(S.GEN_LENGTH, S.GEN_LENGTH, 200, False),
    "addition": Spec(D.ADD_GEN_LENGTH, 8, 100, False),
    "shakespeare_words": Spec(32, 16, 16, True),
    "shakespeare": Spec(32, 16, 16, True),
}
CACHES = ("none", "prefix", "dual")


def load_tokenizer(path: str):
    with open(os.path.join(path, "tokenizer.json")) as f:
        kind = json.load(f).get("kind", "chars")
    return SW.PieceTokenizer.load(path) if kind == "pieces" else D.CharTokenizer.load(path)


def load_model(name: str):
    path = os.path.join(ROOT, "models", name)
    model = dk.models.LLaDA.from_pretrained(path, dtype=torch.float32)
    return model, load_tokenizer(path), path


def held_out_prompts(name: str, tok, n: int):
    """(prompt id lists, checker or None): checker(i, decoded text) says if output i is right."""
    if name == "addition":
        probs = D.addition_eval_set(n)
        return [tok.encode(p) for p, _ in probs], lambda i, text: text == probs[i][1]
    with open(os.path.join(ROOT, "models", name, "heldout_prompts.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()][:n]
    if name == "sudoku":
        return [r["ids"] for r in rows], lambda i, text: S.is_solution(rows[i]["prompt"], text)
    return [r["ids"] for r in rows], None


def policies(spec: Spec, tok, filt, quick: bool) -> dict:
    block = spec.block_length
    base = dict(block_length=block)
    out = {"one token per step": dk.Policy(rule="topk", steps=block, **base)}
    for k in (2, 4, 8):
        out[f"top-k {k}"] = dk.Policy(rule="topk", steps=max(1, block // k), **base)
    for t in (0.95, 0.9, 0.7, 0.5):
        out[f"threshold {t}"] = dk.Policy(rule="threshold", threshold=t, **base)
    out["factor 1.0"] = dk.Policy(rule="factor", factor=1.0, **base)
    out["LocalLeap"] = dk.Policy(rule="localleap", **base)
    out["AdaBlock + threshold 0.9"] = dk.Policy(rule="threshold", threshold=0.9, adaptive_block=True,
                                                delimiter_ids=(tok.index["\n"],), **base)
    if filt is not None:
        f, meta = filt
        out["learned filter"] = dk.Policy(rule="filter", steps=block, learned_filter=f,
                                          filter_threshold=float(meta.get("threshold", 0.96)), **base)
        out["learned filter 0.8"] = dk.Policy(rule="filter", steps=block, learned_filter=f,
                                              filter_threshold=0.8, **base)
    if quick:
        keep = ("one token per step", "top-k 4", "top-k 8", "threshold 0.9", "threshold 0.5", "LocalLeap",
                "learned filter")
        out = {k: v for k, v in out.items() if k in keep}
    return out


def repeat_share(tokens: torch.Tensor, eos_id: int) -> float:
    """Share of generated non-eos tokens equal to the token before them ("not not not")."""
    live = tokens[:, 1:] != eos_id
    return float(((tokens[:, 1:] == tokens[:, :-1]) & live).sum()) / max(int(live.sum()), 1)


def run_model(name: str, n: int, quick: bool, caches, eotps, log=print) -> list:
    spec = MODELS[name]
    model, tok, path = load_model(name)
    fpath = os.path.join(path, "learn2pd_filter.safetensors")
    filt = load_filter(fpath) if os.path.exists(fpath) else None
    prompts, check = held_out_prompts(name, tok, n)
    rows, baseline = [], None
    for pname, pol in policies(spec, tok, filt, quick).items():
        for eotp in eotps:
            for cache in caches:
                p = dataclasses.replace(pol, eotp=eotp)
                t0 = time.perf_counter()
                out = dk.generate(model, prompts, gen_length=spec.gen_length, policy=p, cache=cache,
                                  mask_id=tok.mask_id, eos_id=tok.eos_id)
                wall = time.perf_counter() - t0
                texts = [tok.decode(r) for r in out.tokens]
                if baseline is None:  # the first run: one token per step, no EoTP, no cache
                    assert pname == "one token per step" and not eotp and cache == "none"
                    baseline = (texts, out.tokens.clone())
                gen_tok = sum(max(1, g) for g in out.generated_tokens)
                valid = (baseline[1] != tok.eos_id) | (out.tokens != tok.eos_id)
                row = {"model": name, "policy": pname, "eotp": eotp, "cache": cache, "prompts": len(prompts),
                       "forwards_per_token": sum(out.nfe) / gen_tok,
                       "forwards_per_prompt": sum(out.nfe) / len(prompts),
                       "batch_forwards": out.forward_calls, "wall_s": wall,
                       "agreement": sum(a == b for a, b in zip(texts, baseline[0])) / len(texts),
                       "token_agreement": float(((out.tokens == baseline[1]) & valid).sum()) / max(int(valid.sum()), 1),
                       "repeats": repeat_share(out.tokens, tok.eos_id), "finished": out.finished}
                if check is not None:
                    row["accuracy"] = sum(check(i, t) for i, t in enumerate(texts)) / len(texts)
                rows.append(row)
                log(fmt_row(row))
    return rows


def fmt_row(r) -> str:
    acc = f"{100 * r['accuracy']:5.1f}" if "accuracy" in r else "    -"
    return (f"| {r['model']:<17} | {r['policy']:<24} | {'yes' if r['eotp'] else 'no':<4} | {r['cache']:<6} | "
            f"{r['forwards_per_token']:7.3f} | {r['forwards_per_prompt']:6.2f} | {r['wall_s']:6.2f} | {acc} | "
            f"{100 * r['agreement']:5.1f} | {100 * r['token_agreement']:5.1f} | {100 * r['repeats']:5.1f} |")


HEADER = ("| model             | policy                   | EoTP | cache  | fwd/tok | fwd/prompt | wall s | acc % | "
          "agree % | tok agree % | repeats % |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")


def pareto(points):
    """Points (x, y) not dominated by another with x' <= x and y' >= y, sorted by x."""
    front = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def quality_key(rows) -> str:
    return "accuracy" if "accuracy" in rows[0] else "token_agreement"


def pick(rows, policy, eotp=False, cache="none"):
    for r in rows:
        if r["policy"] == policy and r["eotp"] == eotp and r["cache"] == cache:
            return r
    return None


def best_at(rows, budget, key):
    """Highest quality among `rows` with at most `budget` forwards per token (None if none)."""
    ok = [r[key] for r in rows if r["forwards_per_token"] <= budget + 1e-9]
    return max(ok) if ok else None


def threshold_forwards_at(thr, quality, q):
    """Forwards per token the threshold runs need for `quality` %, linear between neighbouring runs
    (None outside their range)."""
    pts = sorted((q(r), r["forwards_per_token"]) for r in thr)
    for (q0, f0), (q1, f1) in zip(pts, pts[1:]):
        if q0 <= quality <= q1:
            return f0 if q1 == q0 else f0 + (f1 - f0) * (quality - q0) / (q1 - q0)
    return None


def claims(rows) -> list:
    """The papers' qualitative claims checked on one model's rows (no cache unless named); each a line
    of markdown with the numbers it rests on. Nothing here is tuned: it reads the table."""
    name, key = rows[0]["model"], quality_key(rows)
    q = lambda r: 100 * r[key]  # noqa: E731
    what = "exact match" if key == "accuracy" else "per-token agreement with one token per step"
    one = pick(rows, "one token per step")
    out = [f"**{name}** ({what}, no cache, no EoTP unless said):"]
    ks = [pick(rows, p) for p in ("one token per step", "top-k 2", "top-k 4", "top-k 8")]
    vals = [q(r) for r in ks]
    mono = all(a >= b for a, b in zip(vals, vals[1:])) and vals[-1] < vals[0] - 1
    out.append(f"- fixed top-k loses quality as k grows: k = 1 / 2 / 4 / 8 give "
               + " / ".join(f"{v:.1f}%" for v in vals) + f" -> {'holds' if mono else 'does not hold'}.")
    t9 = pick(rows, "threshold 0.9")
    ratio = one["forwards_per_token"] / t9["forwards_per_token"]
    ok = q(t9) >= q(one) - 1 and ratio >= 3
    out.append(f"- threshold 0.9 within 1 point of one token per step with >= 3x fewer forwards: "
               f"{q(t9):.1f}% vs {q(one):.1f}%, {ratio:.2f}x fewer forwards -> {'holds' if ok else 'does not hold'}.")
    thr = [r for r in rows if r["policy"].startswith("threshold") and not r["eotp"] and r["cache"] == "none"]
    ll = pick(rows, "LocalLeap")
    need = threshold_forwards_at(thr, q(ll), q)
    if need is None:
        verdict, ok = f"LocalLeap's {q(ll):.1f}% is outside the threshold runs' range", False
    else:
        ok = ll["forwards_per_token"] < 0.98 * need  # 2%: closer than that is "on the front"
        verdict = (f"the threshold runs, interpolated, need {need:.4f} forwards per token for LocalLeap's {q(ll):.1f}%, "
                   f"LocalLeap takes {ll['forwards_per_token']:.4f}")
    on_front = need is not None and ll["forwards_per_token"] <= 1.02 * need
    status = "holds" if ok else ("does not hold (within 2%: on the threshold front, not below it)" if on_front
                                 else "does not hold")
    out.append(f"- LocalLeap needs fewer forwards than threshold at equal quality: {verdict} -> {status}.")
    lf = pick(rows, "learned filter")
    if lf is not None:
        front = best_at(thr, lf["forwards_per_token"], key)
        ok = front is None or q(lf) >= 100 * front - 1e-9
        ref = "no threshold run is that cheap" if front is None else f"the best threshold run at most that costly {100 * front:.1f}%"
        out.append(f"- the learned filter lies on or above the threshold front: {q(lf):.1f}% at "
                   f"{lf['forwards_per_token']:.3f} forwards per token; {ref} -> {'holds' if ok else 'does not hold'}.")
    e0, e1 = one, pick(rows, "one token per step", eotp=True)
    t0, t1 = t9, pick(rows, "threshold 0.9", eotp=True)
    out.append(f"- EoTP removes forwards spent on padding: one token per step {e0['forwards_per_prompt']:.2f} -> "
               f"{e1['forwards_per_prompt']:.2f} forwards per prompt ({q(e0):.1f}% -> {q(e1):.1f}%), threshold 0.9 "
               f"{t0['forwards_per_prompt']:.2f} -> {t1['forwards_per_prompt']:.2f} ({q(t0):.1f}% -> {q(t1):.1f}%) -> "
               f"{'holds' if e1['forwards_per_prompt'] < e0['forwards_per_prompt'] else 'nothing to remove (no padding here)'}.")
    return out


def plot(rows, path) -> bool:
    """One panel per model: quality against forwards per generated token; colour per policy, marker per
    cache, hollow markers with EoTP; the grey steps are the Pareto front over all runs of the panel."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_quality: matplotlib is not installed (pip install .[bench]); the table is written, the plot is not")
        return False
    models = list(dict.fromkeys(r["model"] for r in rows))
    names = list(dict.fromkeys(r["policy"] for r in rows))
    colours = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
    markers = {"none": "o", "prefix": "s", "dual": "^"}
    fig, axes = plt.subplots(1, len(models), figsize=(max(5.2 * len(models), 12), 4.8), squeeze=False)
    for ax, name in zip(axes[0], models):
        rs = [r for r in rows if r["model"] == name]
        key = quality_key(rs)
        front = pareto([(r["forwards_per_token"], 100 * r[key]) for r in rs])
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="0.7", zorder=1)
        for r in rs:
            c = colours[r["policy"]]
            ax.scatter(r["forwards_per_token"], 100 * r[key], marker=markers[r["cache"]], s=36, zorder=2,
                       facecolors="none" if r["eotp"] else c, edgecolors=c)
        lo = min(100 * r[key] for r in rs)
        ax.set_ylim(max(0, lo - 5), 101)
        ax.set_title(name)
        ax.set_xlabel("forwards per generated token")
        ax.set_ylabel("exact match %" if key == "accuracy" else "token agreement with one token per step %")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[n], label=n) for n in names]
    handles += [plt.Line2D([], [], marker=m, ls="", color="k", mfc="k" if c == "none" else "none", label=f"cache {c}")
                for c, m in markers.items()]
    handles += [plt.Line2D([], [], marker="o", ls="", color="k", mfc="none", label="hollow: EoTP")]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    return True


NOTES_MARK = "<!-- notes: kept by bench_quality.py when it rewrites this file -->"


def write_markdown(rows, path, load: str):
    """The table and the claims computed from it; any hand-written notes after NOTES_MARK are kept."""
    notes = ""
    if os.path.exists(path):
        old = open(path).read()
        if NOTES_MARK in old:
            notes = old[old.index(NOTES_MARK):]
    lines = ["# Quality against forwards on the tiny trained dLLMs", "",
             "Generated by `python bench/bench_quality.py` (CPU, fused_unmask C++ op, float32 weights, greedy).",
             "fwd/tok: forwards per generated non-eos token (each sequence's own forwards); fwd/prompt: mean forwards",
             "per prompt; acc: exact match (sudoku: a valid grid keeping every clue, the puzzles having one solution;",
             "addition: the sum); agree: whole output equal to one token per step (no cache, no EoTP); tok agree: per",
             "position; repeats: generated tokens equal to the one before. Wall time is the whole batch on a shared",
             f"CPU: compare forwards, not seconds. Load average (1 min) at start / end: {load}.", "",
             "![quality against forwards](quality.png)", "", "## Claims, checked on these numbers", ""]
    for name in dict.fromkeys(r["model"] for r in rows):
        lines += claims([r for r in rows if r["model"] == name]) + [""]
    lines += ["## Table", "", HEADER] + [fmt_row(r) for r in rows] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + ("\n" + notes if notes else ""))


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--prompts", type=int, help="held-out prompts per model (default: each model's MODELS entry)")
    ap.add_argument("--quick", action="store_true", help="few prompts, few policies, no cache, nothing written")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "quality"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", action="store_true", help="only rewrite the .md and .png from the .jsonl")
    a = ap.parse_args(argv)
    if a.render:
        with open(a.out + ".jsonl") as f:
            rows = [json.loads(line) for line in f]
        write_markdown(rows, a.out + ".md", "not kept in the .jsonl (rendered with --render; see the notes)")
        plot(rows, a.out + ".png")
        return rows
    torch.set_num_threads(a.threads)
    caches = ("none",) if a.quick else CACHES
    load0 = load_average()
    print(HEADER)
    rows = []
    for name in a.models:
        n = a.prompts or (min(32, MODELS[name].prompts) if a.quick else MODELS[name].prompts)
        rows += run_model(name, n, a.quick, caches, (False, True))
    if a.out and not a.quick:
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        if os.path.exists(a.out + ".jsonl"):  # keep the earlier rows of models not run now
            with open(a.out + ".jsonl") as f:
                kept = [r for r in map(json.loads, f) if r["model"] in MODELS and r["model"] not in a.models]
            rows = sorted(kept + rows, key=lambda r: list(MODELS).index(r["model"]))
        with open(a.out + ".jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        write_markdown(rows, a.out + ".md", f"{load0} / {load_average()}")
        plotted = plot(rows, a.out + ".png")
        print(f"wrote {a.out}.md, .jsonl" + (", .png" if plotted else ""))
    return rows


if __name__ == "__main__":
    main()
