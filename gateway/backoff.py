"""Capped exponential backoff with jitter: the one retry timing of every reconnect loop.

The n-th delay after the last success is ``base * 2**n`` up to ``cap``, times a random factor
in ``jitter`` (so a site-wide outage does not make every camera retry in the same instant).
"""

from __future__ import annotations

import random


class Backoff:
    """Delays for successive failures; :meth:`reset` after a success starts over."""

    def __init__(
        self, base: float = 1.0, cap: float = 60.0, *, jitter: tuple[float, float] = (0.5, 1.0)
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got {base} and {cap}")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.failures = 0

    def next_delay(self) -> float:
        """Seconds to wait after one more failure."""
        delay = min(self.cap, self.base * 2**self.failures)
        self.failures = min(self.failures + 1, 32)
        return delay * random.uniform(*self.jitter)

    def reset(self) -> None:
        self.failures = 0

    def fresh(self) -> Backoff:
        """A new backoff with the same timing and no failures (one per camera)."""
        return Backoff(self.base, self.cap, jitter=self.jitter)
