"""Latency budget: running estimates of each stage's time, and the check that refuses a call that cannot fit.

Before running, the time already spent plus the estimates of the stages still to run must fit the budget, else
BudgetExceeded(before_running=True) is raised and nothing runs. Estimates are exponential moving averages of the
measured stage times. Every read and update of the estimates holds the lock (requests run on several threads).
"""
from __future__ import annotations

import threading

from runtime.errors import BudgetExceeded

EMA_WEIGHT = 0.3
"""Weight of the newest measurement in the running estimate of a stage's time."""


class LatencyBudget:
    """Stage-time estimates (milliseconds) and the budget check."""

    def __init__(self, ema_weight: float = EMA_WEIGHT):
        self.ema_weight = ema_weight
        self._estimates: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(self, stage: str, ms: float) -> None:
        """Fold one measurement of `stage` into its estimate."""
        with self._lock:
            old = self._estimates.get(stage)
            self._estimates[stage] = ms if old is None else (1 - self.ema_weight) * old + self.ema_weight * ms

    def estimate(self, stage: str) -> float:
        """The running estimate of `stage` (0.0 before it was ever measured)."""
        with self._lock:
            return self._estimates.get(stage, 0.0)

    def estimates(self) -> dict[str, float]:
        with self._lock:
            return dict(self._estimates)

    def check(self, budget_ms: float | None, elapsed_ms: float, stages: dict[str, int], what: str) -> None:
        """Raise BudgetExceeded (before running) when elapsed + sum(count * estimate) over `stages` > budget.

        `what` describes the planned work for the message, e.g. 'synthesis + 1 render(s)'.
        """
        if budget_ms is None:
            return
        with self._lock:
            planned = sum(n * self._estimates.get(stage, 0.0) for stage, n in stages.items())
        estimate = elapsed_ms + planned
        if estimate > budget_ms:
            raise BudgetExceeded(f"budget_ms={budget_ms:g} cannot be met: estimated {estimate:.1f} ms ({what}); "
                                 f"nothing was run", budget_ms, estimate, elapsed_ms, True)

    @staticmethod
    def check_after(budget_ms: float | None, elapsed_ms: float, done: int, total: int, result) -> None:
        """Raise BudgetExceeded (after running, the finished `result` attached) when elapsed > budget."""
        if budget_ms is not None and elapsed_ms > budget_ms:
            raise BudgetExceeded(f"budget_ms={budget_ms:g} exceeded: took {elapsed_ms:.1f} ms ({done}/{total} "
                                 f"view(s) done)", budget_ms, None, elapsed_ms, False, result=result)
