"""Bounded waits on Ray calls: every remote wait in vlaforge goes through ``get`` or ``wait`` here.

A simulator or a rank that hangs (alive, not dead: a deadlock, a stopped process, a wedged driver call)
would stall ``ray.get`` / ``ray.wait`` for ever. These wrappers take a deadline in seconds and raise
:class:`RemoteTimeout` naming what was awaited (actor, rank, method), so the caller can kill and replace
the culprit (rollout pool, evaluation) or fail the stage with that name (learners). The deadlines come
from the recipe (``runtime.timeouts``, vlaforge/runtime/config.py).
"""

from __future__ import annotations

import time
from typing import Any, Sequence


class RemoteTimeout(TimeoutError):
    """A remote call did not finish within its deadline. ``what`` names it (actor, rank, method)."""

    def __init__(self, what: str, timeout_s: float, hint: str = ""):
        self.what, self.timeout_s = what, float(timeout_s)
        super().__init__(f"{what} did not finish within {timeout_s:g} s" + (f"; {hint}" if hint else ""))


def _check(timeout_s: float | None, what: str) -> float:
    if timeout_s is None or not timeout_s > 0:
        raise ValueError(f"bounded wait on {what}: timeout_s must be > 0 seconds, got {timeout_s!r}")
    return float(timeout_s)


def get(refs: Any, timeout_s: float, what: str, hint: str = "") -> Any:
    """``ray.get(refs)`` that raises :class:`RemoteTimeout` (naming ``what``) after ``timeout_s`` seconds.

    Errors of the call itself (RayTaskError, RayActorError) pass through unchanged."""
    import ray

    timeout_s = _check(timeout_s, what)
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RemoteTimeout(what, timeout_s, hint) from None


def wait(refs: Sequence[Any], timeout_s: float, what: str, num_returns: int = 1, hint: str = "") -> list:
    """``ray.wait`` for ``num_returns`` of ``refs``; the ready ones, or :class:`RemoteTimeout` if fewer than
    ``num_returns`` finished within ``timeout_s`` seconds."""
    import ray

    timeout_s = _check(timeout_s, what)
    ready, _ = ray.wait(list(refs), num_returns=min(num_returns, len(refs)), timeout=timeout_s)
    if len(ready) < min(num_returns, len(refs)):
        raise RemoteTimeout(what, timeout_s, hint)
    return ready


class Deadlines:
    """Per-request deadlines of requests in flight (one per actor): which is overdue, how long to wait.

    ``start(key, timeout_s)`` when a request is submitted; ``left()`` is the time until the earliest
    deadline (the ``ray.wait`` timeout); ``overdue()`` the keys past theirs."""

    def __init__(self) -> None:
        self._due: dict[Any, float] = {}

    def start(self, key: Any, timeout_s: float) -> None:
        self._due[key] = time.monotonic() + _check(timeout_s, str(key))

    def stop(self, key: Any) -> None:
        self._due.pop(key, None)

    def keep(self, keys: Any) -> None:
        """Forget the deadlines of requests no longer in ``keys`` (abandoned ones)."""
        self._due = {k: t for k, t in self._due.items() if k in keys}

    def left(self) -> float:
        return max(0.0, min(self._due.values()) - time.monotonic()) if self._due else 0.0

    def overdue(self) -> list:
        now = time.monotonic()
        return [k for k, t in self._due.items() if t <= now]

    def clear(self) -> None:
        self._due.clear()
