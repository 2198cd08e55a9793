"""Per-step times of a decode (`generate(timing=True)`) and its progress bar."""
from __future__ import annotations

import sys
import time

import torch

__all__ = ["Progress", "StepTimer"]


class StepTimer:
    """(forward_s, step_s) per step. On a GPU, CUDA events recorded around the forward and the
    step, read once after the decode; on CPU, `time.perf_counter`. A CUDA-graph step counts its whole
    replay as forward (the forward is inside the graph). Disabled: every call does nothing."""

    def __init__(self, enabled: bool, cuda: bool):
        self.enabled, self.cuda = enabled, cuda
        self.events, self.cpu_times = [], []

    def _event(self):
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def step_start(self):
        if self.enabled:
            self.t0 = time.perf_counter()
            self.ev = [self._event()] if self.cuda else None

    def forward_start(self):
        if self.enabled and self.cuda:
            self.ev.append(self._event())
        self.tf = time.perf_counter()

    def forward_end(self):
        if self.enabled:
            if self.cuda:
                self.ev.append(self._event())
            else:
                self.t_fwd = time.perf_counter() - self.tf

    def step_end(self):
        if self.enabled:
            if self.cuda:
                self.events.append(self.ev + [self._event()])
            else:
                self.cpu_times.append((self.t_fwd, time.perf_counter() - self.t0))

    def graph_step_end(self):
        if self.enabled:
            if self.cuda:
                end = self._event()  # the replay ends the step
                self.events.append(self.ev + [end, end])
            else:
                now = time.perf_counter()
                self.cpu_times.append((now - self.tf, now - self.t0))

    def step_times(self) -> list:
        """[(forward_s, step_s)] of every step timed (reads the CUDA events: after a synchronize)."""
        if not self.cuda:
            return self.cpu_times
        return [(ev[1].elapsed_time(ev[2]) / 1e3, ev[0].elapsed_time(ev[3]) / 1e3) for ev in self.events]


class Progress:
    """A progress bar over the generated positions: tqdm if installed, else a line every 10%."""

    def __init__(self, enabled: bool, total: int):
        self.bar, self.done = None, 0
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, unit="tok", desc="generate")
        except ImportError:
            self.bar = "text"
            self.total, self.last = total, -1

    def update(self, done: int):
        if self.bar is None:
            return
        if self.bar == "text":
            pct = int(100 * done / max(self.total, 1))
            if pct // 10 != self.last // 10:
                print(f"generate: {pct}% ({done}/{self.total} positions)", file=sys.stderr)
                self.last = pct
        else:
            self.bar.update(done - self.done)
        self.done = done

    def close(self):
        if self.bar not in (None, "text"):
            self.bar.close()
