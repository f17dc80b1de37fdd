"""The one retry and rate-limit policy: every platform client and writer, and the push loop's sinks.

* A client-side token bucket keeps us under the platform's documented rate.
* A 429 is retried after the server's ``Retry-After`` (or exponential backoff
  when it sends none), a bounded number of times.
* Transient 5xx and connection errors are retried by the platform SDK where it
  has a policy of its own (stripe's ``max_network_retries``), never by a second
  loop around it; for plain-HTTP clients :func:`call_with_retries` covers both.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class RateLimiter:
    """Token bucket: at most ``per_second`` calls a second on average, bursts of ``burst``."""

    def __init__(self, per_second: float, burst: int | None = None, sleep: Callable[[float], None] = time.sleep):
        self.per_second = per_second
        self.capacity = burst or max(1, int(per_second))
        self.tokens = float(self.capacity)
        self.updated = time.monotonic()
        self.lock = threading.Lock()
        self.sleep = sleep

    def acquire(self) -> None:
        if self.per_second <= 0:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.per_second
            self.sleep(wait)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for attempt 1, 2, ..."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds; None for an absent or HTTP-date value (then we back off)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


class RateLimited(Exception):
    """Raised by an adapter for a 429; ``retry_after`` in seconds if the server said."""

    def __init__(self, retry_after: float | None, message: str = "rate limited"):
        super().__init__(message)
        self.retry_after = retry_after


class Transient(Exception):
    """Raised by a plain-HTTP adapter for a retryable 5xx or connection error."""


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy = RetryPolicy(),
    *,
    retry_transient: bool,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[str, float], None] | None = None,
) -> T:
    """Call ``fn``; retry :class:`RateLimited` (always) and :class:`Transient`
    (only when the client has no retry policy of its own)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except RateLimited as e:
            if attempt >= policy.max_attempts:
                raise
            wait = min(policy.max_delay, e.retry_after) if e.retry_after is not None else policy.backoff(attempt)
            reason = "429"
        except Transient:
            if not retry_transient or attempt >= policy.max_attempts:
                raise
            wait, reason = policy.backoff(attempt), "transient"
        if on_retry:
            on_retry(reason, wait)
        sleep(wait)
