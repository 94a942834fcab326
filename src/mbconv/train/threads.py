"""How many CPU threads a training step runs on, chosen by timing real steps (:class:`ThreadTuner`).

A small network's step is a few hundred short kernels. On a quiet 2-core machine two OpenMP threads make the tour
model's step about 1.2x faster than one; on a loaded one (other processes on the cores) each parallel region
waits for a descheduled thread, and libgomp's spin-waiting turns that into a slowdown of several times (measured:
3.4 s per step at 2 threads vs 0.22 s at 1 thread at load average 5 on 2 cores; 0.67 vs 0.20 s at load 3,
docs/bench/depthwise.md). No fixed choice is right on both, so the trainer measures: at the start of an epoch it
times steps at the current count and at the other one, alternating, and keeps the faster for the rest of the epoch.
A confirmed choice is probed again after 1, 2, 4, ... epochs, a changed one after the next epoch. Steps stay the
same computation; only float rounding can differ between thread counts.
"""

from __future__ import annotations

import os
import statistics

import torch

__all__ = ["ThreadTuner"]


class ThreadTuner:
    """Alternates the thread count over a few timed training steps of an epoch and keeps the faster.

    Args:
        max_threads: the larger count (torch's current one by default); the other is 1.
        pairs: probe pairs per probing epoch (each pair: one step at each count, order alternating); a pair in
            which one count is over twice as slow decides at once.
        skip: steps at the start of an epoch not timed (the first step after evaluation allocates afresh).
    """

    def __init__(self, max_threads: int | None = None, pairs: int = 2, skip: int = 1):
        self.max_threads = max_threads or torch.get_num_threads()
        if self.max_threads < 2:
            raise ValueError(f"ThreadTuner needs at least 2 threads to choose from, got {self.max_threads}")
        self.pairs, self.skip = pairs, skip
        self.choice = self.max_threads
        self.interval, self.next_probe = 1, 0
        self.history: list[dict] = []  # one entry per probing epoch: the times and the choice (for the log)
        self._plan: list[int] = []
        self._times: dict[int, list[float]] = {}
        self._step = 0
        self._epoch = 0

    @staticmethod
    def wanted(device: torch.device, world_size: int, deterministic: bool) -> bool:
        """Whether a run should tune: CPU, one process, not deterministic (the thread count is part of a
        bit-exact run), more than one thread, and no explicit OMP_NUM_THREADS."""
        return (device.type == "cpu" and world_size == 1 and not deterministic and torch.get_num_threads() > 1
                and "OMP_NUM_THREADS" not in os.environ)

    def start_epoch(self, epoch: int) -> None:
        """Called before the epoch's first step: plan the probe steps if this epoch probes."""
        self._epoch, self._step = epoch, 0
        self._times = {self.max_threads: [], 1: []}
        if epoch >= self.next_probe:
            other = 1 if self.choice == self.max_threads else self.max_threads
            self._plan = [c for i in range(self.pairs) for c in ((other, self.choice) if i % 2 == 0
                                                                   else (self.choice, other))]
        else:
            self._plan = []
        torch.set_num_threads(self.choice)

    def before_step(self) -> None:
        """Set the thread count of the next step."""
        i = self._step - self.skip
        if 0 <= i < len(self._plan):
            torch.set_num_threads(self._plan[i])

    def after_step(self, seconds: float) -> None:
        """Record the step's wall time; decide when the probe steps are done (or one pair is decisive)."""
        i = self._step - self.skip
        self._step += 1
        if not 0 <= i < len(self._plan):
            return
        self._times[self._plan[i]].append(seconds)
        a, b = self._times[self.max_threads], self._times[1]
        pair_done = i % 2 == 1
        decisive = pair_done and (max(a[-1], b[-1]) > 2 * min(a[-1], b[-1]))
        if i == len(self._plan) - 1 or decisive:
            self._decide()

    def _decide(self) -> None:
        a, b = self._times[self.max_threads], self._times[1]
        best = self.max_threads if statistics.median(a) <= statistics.median(b) else 1
        self.interval = self.interval * 2 if best == self.choice else 1
        self.next_probe = self._epoch + self.interval
        self.history.append({"epoch": self._epoch, f"{self.max_threads}_threads_s": list(a), "1_thread_s": list(b),
                             "choice": best})
        self.choice = best
        self._plan = []
        torch.set_num_threads(best)
