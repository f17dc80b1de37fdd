"""Plain-HTTP access for platforms without a maintained SDK that takes a base address.

One client, one policy (:mod:`billing_ai.retry`): every request goes
through the token bucket; a 429 waits ``Retry-After``; a 5xx, a timeout or a
broken connection is retried only when repeating it is safe (a read, or a
write that carries the platform's idempotency key, which makes the platform
answer a repeat with the first outcome). A 4xx raises :class:`PlatformHTTPError`
with the platform's own error body. Credentials are passed in by the caller
(from ``EnvVar``) and never appear in errors or ``stats``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from billing_ai.retry import (
    RateLimited,
    RateLimiter,
    RetryPolicy,
    Transient,
    call_with_retries,
    retry_after_seconds,
)
from billing_ai.writeback.outcomes import Permanent, Unknown

T = TypeVar("T")

SAFE_METHODS = frozenset({"GET", "HEAD"})


class PlatformHTTPError(Exception):
    """The platform answered 4xx (or 5xx after the retries ran out): ``status`` and its parsed ``body``."""

    def __init__(self, platform: str, method: str, path: str, status: int, body: Any):
        self.platform, self.status, self.body = platform, status, body
        super().__init__(f"{platform} {method} {path}: {status} {str(body)[:500]}")


class PlatformHTTP:
    """``request(method, path, ...)`` -> parsed JSON, through the shared limiter and retry policy."""

    def __init__(
        self,
        platform: str,
        base_url: str,
        *,
        auth: httpx.Auth | tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        requests_per_second: float = 10.0,
        policy: RetryPolicy = RetryPolicy(),
        timeout: float = 30.0,
        idempotency_header: str = "Idempotency-Key",
    ):
        self.platform = platform
        self.http = httpx.Client(base_url=base_url.rstrip("/"), auth=auth, headers=headers or {}, timeout=timeout)
        self.limiter = RateLimiter(requests_per_second, burst=max(1, int(requests_per_second)))
        self.policy = policy
        self.idempotency_header = idempotency_header
        # requests sent, 429s waited out, transient failures retried
        self.stats = {"requests": 0, "rate_limited": 0, "retried": 0}

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        method = method.upper()
        hdrs = dict(headers or {})
        if idempotency_key:
            hdrs[self.idempotency_header] = idempotency_key
        repeatable = method in SAFE_METHODS or bool(idempotency_key)

        def attempt():
            self.limiter.acquire()
            self.stats["requests"] += 1
            try:
                r = self.http.request(method, path, params=params, json=json, data=data, headers=hdrs)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                raise Transient(f"{type(e).__name__}") from e
            if r.status_code == 429:
                self.stats["rate_limited"] += 1
                raise RateLimited(retry_after_seconds(r.headers.get("retry-after")))
            if r.status_code >= 500:
                raise Transient(f"{r.status_code}") from PlatformHTTPError(
                    self.platform, method, path, r.status_code, _body(r)
                )
            return r

        def on_retry(reason: str, _wait: float) -> None:
            if reason == "transient":
                self.stats["retried"] += 1

        try:
            r = call_with_retries(attempt, self.policy, retry_transient=repeatable, on_retry=on_retry)
        except Transient as e:
            if isinstance(e.__cause__, PlatformHTTPError):
                raise e.__cause__ from None
            raise
        if r.status_code >= 400:
            raise PlatformHTTPError(self.platform, method, path, r.status_code, _body(r))
        return _body(r)

    def close(self) -> None:
        self.http.close()


def _body(r: httpx.Response) -> Any:
    if not r.content:
        return None
    try:
        return r.json()
    except ValueError:
        return r.text


def http_outcome(
    call: Callable[[], T], describe: Callable[[object], str] = str, unknown_statuses: frozenset[int] = frozenset()
) -> T:
    """One request through :class:`billing_ai.platforms.http.PlatformHTTP` (which has already waited out
    429s and retried what is safe to repeat), its failure put in the push loop's terms -- the one place the
    plain-HTTP writers classify outcomes:

    * 401 / 403 are raised as they are: configuration, not the action's fault (the run fails, the action
      stays approved);
    * a 5xx, a 429 still there after the retries, a broken connection, or one of ``unknown_statuses`` (say
      Zuora's 409: the same key still in flight) -> :class:`Unknown` (read back before any resend);
    * any other 4xx -> :class:`Permanent` with the platform's own message (``describe(body)``).
    """
    try:
        return call()
    except PlatformHTTPError as e:
        if e.status in (401, 403):
            raise
        if e.status >= 500 or e.status in unknown_statuses:
            raise Unknown(f"{e.status}: {describe(e.body)}") from e
        raise Permanent(f"{e.status} {describe(e.body)}".strip(), status=e.status) from e
    except (RateLimited, Transient, httpx.TransportError) as e:
        raise Unknown(f"{type(e).__name__}: {e}") from e
