"""Remember an unreachable upstream for a while, so that requests a client waits on are answered
from the cache at once instead of each paying a connect timeout and a retry.

```
closed --(N consecutive failures, or a 429 saying "wait")--> open (until cooldown / Retry-After)
open   --(time passes)--> half-open: one probe request goes through, the others still fail fast
half-open --(probe answers)--> closed      --(probe fails)--> open again
```

A failure is a connection error, a timeout, a 5xx or a 429; any other answer (404 included)
proves the upstream is there. The clients syncs use report into the same breaker (so that a
failing sync warns the pull-through path) but never short-circuit: they wait and retry instead.
"""

from __future__ import annotations

import time


class CircuitBreaker:
    def __init__(self, *, threshold: int = 2, cooldown: float = 15.0, max_cooldown: float = 300.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._failures = 0
        self._open_until = 0.0
        self._probe_since: float | None = None  # a probe in flight (one that never ends is forgotten)
        self.reason = ""
        self.opened = 0  # times it opened (for metrics)

    def is_open(self) -> bool:
        return time.monotonic() < self._open_until

    def allow(self) -> bool:
        """May a fail-fast request go to the upstream now? In half-open state only one probe may."""
        if self._failures < self.threshold and not self.is_open():
            return True
        now = time.monotonic()
        if self.is_open() or (self._probe_since is not None and now - self._probe_since < self.cooldown):
            return False
        self._probe_since = now
        return True

    def retry_in(self) -> float:
        return max(0.0, self._open_until - time.monotonic())

    def success(self) -> None:
        self._failures = 0
        self._probe_since = None
        self._open_until = 0.0
        self.reason = ""

    def failure(self, reason: str, *, wait: float | None = None, force: bool = False) -> None:
        """A failed request; `wait` is what a 429 asked for (opens at once, for that long);
        `force` opens at once (a timeout: the next request would wait as long)."""
        self._failures += 1
        self._probe_since = None
        if wait is not None or force or self._failures >= self.threshold:
            hold = min(self.max_cooldown, wait if wait is not None else self.cooldown)
            if not self.is_open():
                self.opened += 1
            self._open_until = max(self._open_until, time.monotonic() + hold)
            self.reason = reason
