"""Deterministic, seeded fault injection for the Stripe sandbox.

A :class:`FaultPlan` installed on the sandbox's settings (``server.settings.faults
= FaultPlan(...)``, at any time, also while it serves) makes chosen requests
misbehave the way the real API sometimes does:

``rate_limit``
    answer 429 with Stripe's ``rate_limit`` error body and a ``Retry-After``
    header (``retry_after`` seconds; keep it 0 or 1 in tests).
``server_error``
    answer 500, 502 or 503 (from ``error_statuses``) with Stripe's ``api_error``
    body and no ``Stripe-Should-Retry`` header, *before* the request is served:
    nothing is written.
``slow``
    wait ``delay`` seconds before answering (combines with every other fault).
``apply_then_fail``
    serve the request for real (the write happens, its idempotency record is
    stored with the successful response) and then, instead of that response,
    answer 500 ``api_error`` (``apply_then_fail_mode="500"``) or drop the
    connection after the status line and headers, before the body
    (``apply_then_fail_mode="drop"``). Replays of a stored idempotent response
    and requests the sandbox refuses (4xx) are never hit.

Which requests a fault hits is a :class:`When`: explicit request ordinals
(``at``), a probability, or both, for the HTTP methods it names. Ordinals are
counted per fault, from 1, over the requests with those methods that reached the
sandbox since the plan was installed; e.g. ``burst(3, start=5, methods=GET)``
hits the 5th, 6th and 7th GET, ``nth(1, methods=POST)`` the next POST. The
random draw for ordinal ``n`` depends only on ``(seed, fault, n)``, so a plan
hits the same requests every time the same client runs the same calls, however
the other faults fall.

Precedence on one request: the delay first, then 429, then 5xx, then the
request is served and ``apply_then_fail`` may replace its answer. Every fault
that actually changed an answer is counted in ``counts`` (by fault and by
``"<fault>:<METHOD>"``) and logged in ``events``; ``seen`` counts the requests
per method. With no plan installed (``faults=None``, the default) none of this
code runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from billing_ai.sandbox.stripe_api import StripeError, request_id

GET: tuple[str, ...] = ("GET",)
POST: tuple[str, ...] = ("POST",)
WRITES: tuple[str, ...] = ("POST", "DELETE")
ANY: tuple[str, ...] = ("GET", "POST", "DELETE")

KINDS = ("slow", "rate_limit", "server_error", "apply_then_fail")


@dataclass(frozen=True)
class When:
    """The requests a fault hits: those with one of ``methods`` whose ordinal is
    in ``at``, plus each other one with chance ``probability``."""

    methods: tuple[str, ...] = ANY
    at: frozenset[int] = frozenset()
    probability: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(m.upper() for m in self.methods))
        object.__setattr__(self, "at", frozenset(self.at))
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], not {self.probability}")
        if any(n < 1 for n in self.at):
            raise ValueError("request ordinals start at 1")


def burst(count: int, start: int = 1, methods: tuple[str, ...] = ANY) -> When:
    """Requests ``start`` .. ``start + count - 1`` (the next ``count`` by default)."""
    return When(methods=methods, at=frozenset(range(start, start + count)))


def nth(*ordinals: int, methods: tuple[str, ...] = ANY) -> When:
    """Exactly these requests (1 = the next one)."""
    return When(methods=methods, at=frozenset(ordinals))


def randomly(probability: float, methods: tuple[str, ...] = ANY) -> When:
    """Each request with chance ``probability`` (seeded by the plan's ``seed``)."""
    return When(methods=methods, probability=probability)


@dataclass
class FaultPlan:
    """Which requests fail and how; see the module docstring."""

    seed: int = 0
    rate_limit: When | None = None
    retry_after: float = 0  # seconds, sent as the Retry-After header of an injected 429
    server_error: When | None = None
    error_statuses: tuple[int, ...] = (500, 502, 503)
    slow: When | None = None
    delay: float = 0.05  # seconds
    apply_then_fail: When | None = None
    apply_then_fail_mode: Literal["500", "drop"] = "500"

    counts: Counter = field(default_factory=Counter, init=False, compare=False)
    seen: Counter = field(default_factory=Counter, init=False, compare=False)
    events: list[tuple[str, str, str, str]] = field(default_factory=list, init=False, compare=False, repr=False)
    _ordinals: Counter = field(default_factory=Counter, init=False, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, compare=False, repr=False)

    def __post_init__(self):
        if self.apply_then_fail_mode not in ("500", "drop"):
            raise ValueError("apply_then_fail_mode is '500' or 'drop'")
        if not self.error_statuses or any(not 500 <= s <= 599 for s in self.error_statuses):
            raise ValueError("error_statuses must be 5xx codes")

    # ---- deciding -------------------------------------------------------------------
    def _unit(self, kind: str, ordinal: int) -> float:
        """A uniform number in [0, 1) fixed by (seed, kind, ordinal)."""
        digest = hashlib.sha256(f"{self.seed}:{kind}:{ordinal}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def _hits(self, kind: str, method: str) -> int | None:
        """The ordinal if ``kind`` hits this request, else None. Advances the kind's ordinal."""
        when: When | None = getattr(self, kind)
        if when is None or method not in when.methods:
            return None
        self._ordinals[kind] += 1
        n = self._ordinals[kind]
        if n in when.at or (when.probability and self._unit(kind, n) < when.probability):
            return n
        return None

    def draw(self, method: str, path: str) -> Fault | None:
        """Called by the sandbox once per request, before anything else: the faults for it."""
        method = method.upper()
        with self._lock:
            self.seen[method] += 1
            hits = {kind: n for kind in KINDS if (n := self._hits(kind, method)) is not None}
        if not hits:
            return None
        status = None
        if "server_error" in hits:
            statuses = sorted(self.error_statuses)
            status = statuses[int(self._unit("status", hits["server_error"]) * len(statuses))]
        return Fault(self, method, path, set(hits), status)

    def _count(self, kind: str, method: str, path: str, detail: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            self.counts[f"{kind}:{method}"] += 1
            self.events.append((kind, method, path, detail))

    @property
    def total(self) -> int:
        """Faults injected so far, all kinds."""
        return sum(self.counts[k] for k in KINDS)


class Fault:
    """What happens to one request; ``before`` runs first, ``after`` on the served response."""

    def __init__(self, plan: FaultPlan, method: str, path: str, kinds: set[str], status: int | None):
        self.plan, self.method, self.path, self.kinds, self.status = plan, method, path, kinds, status

    async def before(self) -> None:
        """Sleep, then raise the injected 429 or 5xx (a :class:`StripeError`) if any."""
        plan = self.plan
        if "slow" in self.kinds:
            plan._count("slow", self.method, self.path, f"{plan.delay}s")
            await asyncio.sleep(plan.delay)
        if "rate_limit" in self.kinds:
            plan._count("rate_limit", self.method, self.path, "429")
            raise StripeError(
                429,
                "invalid_request_error",
                "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
                code="rate_limit",
                headers={"Retry-After": f"{plan.retry_after:g}"},
            )
        if "server_error" in self.kinds:
            plan._count("server_error", self.method, self.path, str(self.status))
            raise api_error(self.status)

    def after(self, response: Response) -> Response:
        """The response the client gets for a request that was served."""
        if "apply_then_fail" not in self.kinds or response.status_code >= 300:
            return response
        plan = self.plan
        plan._count("apply_then_fail", self.method, self.path, plan.apply_then_fail_mode)
        if plan.apply_then_fail_mode == "drop":
            return DroppedResponse(response.status_code, len(response.body))
        return api_error(500).response()


def api_error(status: int) -> StripeError:
    return StripeError(status, "api_error", "An unknown error occurred with Stripe's servers. Please try again.")


class DroppedResponse(Response):
    """Sends the status line and headers (announcing ``length`` bytes of body),
    then ends the exchange: the server closes the connection without a body."""

    def __init__(self, status: int, length: int):
        super().__init__(
            status_code=status,
            media_type="application/json",
            headers={"Request-Id": request_id(), "Content-Length": str(max(1, length))},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        # returning without the body: uvicorn logs "ASGI callable returned without
        # completing response" and closes the transport, the client sees a truncated response
