"""How the web page shares one model between requests: a lock granted in arrival order (`FairLock`), and each
request's time budget and cancellation (`Work`), checked before every chunk of its work. Torch-free."""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable

from runtime.errors import BudgetExceeded


class Busy(Exception):
    """Every long-job slot is taken: HTTP 503 with Retry-After `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Cancelled(Exception):
    """Work stopped because its client went away (`client_gone`) or the app is closing (HTTP 503)."""

    def __init__(self, message: str, client_gone: bool):
        super().__init__(message)
        self.client_gone = client_gone


class FairLock:
    """A lock granted in arrival order, with a timeout.

    Why: threading.Lock is not fair; a long job that releases and re-takes it between chunks could take it back
    before a waiting view wakes up. Here `release` hands the lock straight to the longest waiter.
    """

    def __init__(self):
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, timeout: float, every: float = math.inf, check: Callable[[], None] | None = None) -> bool:
        """Take the lock within `timeout` seconds (False if that passed first), calling check() every `every`
        seconds while waiting, without losing the place in the queue; an exception from check() gives it up."""
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            granted = threading.Event()
            self._waiters.append(granted)
        deadline = time.monotonic() + timeout
        try:
            while not granted.wait(max(0.0, min(every, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    return self._give_up(granted)
                if check is not None:
                    check()
            return True
        except BaseException:
            if self._give_up(granted):
                self.release()
            raise

    def _give_up(self, granted: threading.Event) -> bool:
        """Leave the queue; True when the lock was handed over meanwhile (the caller holds it then)."""
        with self._mutex:
            if granted.is_set():
                return True
            self._waiters.remove(granted)
            return False

    def release(self) -> None:
        """Hand the lock to the longest waiter, or free it."""
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False


def _never() -> bool:
    return False


class Work:
    """One request's time budget and cancellation: checked before every chunk of its work.

    `total` chunks of `unit` are planned, `done` are finished; `busy_s` is the time spent holding the model (what
    the running estimates are made of).
    """

    def __init__(self, kind: str, budget_s: float, total: int, unit: str,
                 client_gone: Callable[[], bool] | None = None, closing: threading.Event | None = None,
                 per_unit_s: float = 0.0):
        self.kind, self.budget_s, self.total, self.unit = kind, budget_s, total, unit
        self.client_gone = client_gone or _never
        self.closing = closing
        self.per_unit_s = per_unit_s
        self.started = time.monotonic()
        self.done = 0
        self.busy_s = 0.0

    @property
    def budget_field(self) -> str:
        return f"{self.kind}_budget_s"

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def remaining_s(self) -> float:
        return self.budget_s - self.elapsed_s()

    def check(self) -> None:
        """Raise Cancelled (app closing, client gone) or BudgetExceeded (budget spent: before anything ran, it
        could not be met; midway, it was exceeded and the rest is not run)."""
        if self.closing is not None and self.closing.is_set():
            raise Cancelled("the server is stopping; nothing more is run", client_gone=False)
        if self.client_gone():
            raise Cancelled("the client went away; the work was stopped", client_gone=True)
        elapsed = self.elapsed_s()
        if elapsed < self.budget_s:
            return
        budget_ms, elapsed_ms = self.budget_s * 1000, elapsed * 1000
        if self.done == 0:
            raise BudgetExceeded(f"{self.budget_field}={self.budget_s:g} cannot be met: the model was busy for "
                                 f"{elapsed:.1f} s; nothing was run", budget_ms, None, elapsed_ms, True)
        raise BudgetExceeded(f"{self.budget_field}={self.budget_s:g} exceeded: took {elapsed:.1f} s "
                             f"({self.done}/{self.total} {self.unit} done); the rest was not run",
                             budget_ms, None, elapsed_ms, False)

    def check_estimate(self) -> None:
        """Refuse before running (BudgetExceeded, before_running) when elapsed + total * per_unit_s > budget."""
        estimate = self.elapsed_s() + self.total * self.per_unit_s
        if estimate > self.budget_s:
            raise BudgetExceeded(f"{self.budget_field}={self.budget_s:g} cannot be met: estimated {estimate:.1f} s "
                                 f"({self.total} {self.unit}); nothing was run", self.budget_s * 1000,
                                 estimate * 1000, self.elapsed_s() * 1000, True)

    def expected_remaining_s(self) -> float:
        """Seconds until this work should end: the rest at the pace so far (or the estimate), within its budget."""
        per = self.elapsed_s() / self.done if self.done else self.per_unit_s
        return max(0.0, min(self.remaining_s(), per * (self.total - self.done)))
