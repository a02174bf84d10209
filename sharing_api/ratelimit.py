"""Per-credential rate limits: a token bucket per key (a credential id, or a client address for
requests that fail to authenticate, which slows down token guessing)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    def __init__(self, *, rate: float, burst: int, max_keys: int = 100_000):
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0.0 when the request may go ahead, else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_keys:
                # Full buckets carry no state worth keeping.
                full = [k for k, (t, _) in self._buckets.items() if t >= self.burst - 1]
                for k in full[: len(full) // 2 or 1]:
                    self._buckets.pop(k, None)
            return (1.0 - tokens) / self.rate
