"""Shared benchmark plumbing (docs/building.md, benchmark conventions): environment facts, timing, JSON-lines results."""
import datetime
import json
import os
import platform
import statistics
import subprocess

import torch
from torch.utils import benchmark

RESULTS_DIR = os.environ.get("DLLM_RESULTS_DIR", os.path.join(os.path.dirname(__file__), "results"))


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def git_sha() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                                      stderr=subprocess.DEVNULL, text=True).strip()
        changed = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                          stderr=subprocess.DEVNULL, text=True)
        # Tracked files edited since HEAD (results files aside): the numbers are not HEAD's.
        edited = [line for line in changed.splitlines() if not line[3:].startswith("bench/results/")]
        return sha + ("-dirty" if edited else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: str = "cpu") -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device_name(device), "torch": torch.__version__, "triton": triton_version,
            "threads": torch.get_num_threads(), "git_sha": git_sha(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def time_cpu(fn, setup, repeats: int) -> dict:
    """Median and p20/p80 wall time (µs) of fn(setup()), by torch.utils.benchmark.Timer at the
    current thread count. The ops under test mutate their inputs (tokens commit, the state
    advances), so each of the `repeats` measurements is one call on fresh inputs: the Timer's
    `setup` (outside the timed region) builds them, after its own two warm-up calls."""
    timer = benchmark.Timer(stmt="fn(arg)", setup="arg = setup()", globals={"fn": fn, "setup": setup},
                            num_threads=torch.get_num_threads())
    times = [timer.timeit(number=1).median * 1e6 for _ in range(repeats)]
    q = statistics.quantiles(times, n=5) if len(times) > 1 else times * 4
    return {"median_us": statistics.median(times), "p20_us": q[0], "p80_us": q[3]}


def append_results(bench: str, rows: list) -> str:
    """Appends `rows` to RESULTS_DIR/<bench>.jsonl; returns its path relative to the working
    directory, so that the printed tables (committed beside the results) name no machine's paths."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{bench}.jsonl")
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return os.path.relpath(path)
