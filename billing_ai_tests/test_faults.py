"""Injected faults (``billing_ai.sandbox.faults``): the sandbox misbehaves, the clients cope.

Everything runs against ``tiny_world`` through the ``sandbox`` fixture, with a
``FaultPlan`` installed at run time on ``sandbox.settings.faults``. Plans are
seeded and count their injections, so every number asserted below is exact and
the same on every run. To stay fast, ``Retry-After`` is 0 (or 1 where the header
itself is checked), delays are a few hundredths of a second, and the SDK's
network-retry backoff is shrunk by the ``fast_sdk_retries`` fixture.

Request bookkeeping used throughout: ``plan.seen[METHOD]`` counts the requests
that reached the sandbox since the plan was installed, ``plan.counts[kind]`` the
faults actually injected; the connector's ``stats["requests"]`` counts SDK calls
(each 429 retry is a new call), the SDK's own 5xx retries happen inside one call.
"""

from __future__ import annotations

import time

import httpx
import pytest
import stripe
from stripe._http_client import HTTPClient

from billing_ai.platforms.stripe.client import StripeConnector
from billing_ai.retry import RetryPolicy
from billing_ai.sandbox.faults import GET, POST, FaultPlan, When, burst, nth, randomly
from billing_ai.sandbox.server import SandboxServer
from billing_ai.sandbox.stripe_api import DEFAULT_READONLY_KEY, DEFAULT_SECRET_KEY

PII_KEY = "test-pii-key"


# ---------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_sdk_retries(monkeypatch):
    """The SDK sleeps 0.5 s .. 5 s between network retries; a millisecond will do here."""
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.001)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.005)


@pytest.fixture
def server(sandbox: SandboxServer) -> SandboxServer:
    """The sandbox with its own rate limiter out of the way: only injected 429s happen."""
    sandbox.settings.rate_limit_per_second = 1e6
    return sandbox


def sdk(url: str, retries: int) -> stripe.StripeClient:
    return stripe.StripeClient(DEFAULT_SECRET_KEY, base_addresses={"api": url}, max_network_retries=retries)


def connector(url: str, max_attempts: int = 6, **kw) -> StripeConnector:
    return StripeConnector(
        DEFAULT_READONLY_KEY,
        url,
        PII_KEY,
        requests_per_second=1000,
        policy=RetryPolicy(max_attempts=max_attempts, base_delay=0.01),
        **kw,
    )


def requests_served(server: SandboxServer) -> int:
    return server.settings.counters.get("requests", 0)


def a_customer(server: SandboxServer) -> str:
    return sdk(server.url, 0).v1.customers.list({"limit": 1}).data[0].id


def invoice_items(server: SandboxServer, customer: str) -> list[str]:
    return [i.id for i in sdk(server.url, 0).v1.invoice_items.list({"customer": customer, "limit": 100}).data]


ITEM = {"amount": 1234, "currency": "usd", "description": "fault test"}


# ---------------------------------------------------------------------------
# the plan itself
# ---------------------------------------------------------------------------


def test_schedules_are_exact_and_draws_are_seeded():
    def hits(plan: FaultPlan, method: str, n: int) -> list[int]:
        return [i for i in range(1, n + 1) if plan.draw(method, "/v1/x") is not None]

    assert hits(FaultPlan(rate_limit=burst(3, start=5)), "GET", 10) == [5, 6, 7]
    assert hits(FaultPlan(rate_limit=burst(2)), "GET", 10) == [1, 2]  # "the next two"
    assert hits(FaultPlan(server_error=nth(2, 4)), "GET", 10) == [2, 4]

    # ordinals count only the methods a fault targets: the 2nd POST, whatever GETs came between
    plan = FaultPlan(apply_then_fail=nth(2, methods=POST))
    got = [(m, plan.draw(m, "/v1/x") is not None) for m in ("GET", "POST", "GET", "GET", "POST", "POST")]
    assert [m for m, hit in got if hit] == ["POST"] and got.index(("POST", True)) == 4
    assert plan.seen == {"GET": 3, "POST": 3}

    # the same seed hits the same requests; another seed others; about p of them
    a = hits(FaultPlan(seed=1, server_error=randomly(0.2)), "GET", 1000)
    assert a == hits(FaultPlan(seed=1, server_error=randomly(0.2)), "GET", 1000)
    assert a != hits(FaultPlan(seed=2, server_error=randomly(0.2)), "GET", 1000)
    assert 150 < len(a) < 250

    # drawing is not injecting: nothing is counted until a request is answered with the fault
    assert FaultPlan(rate_limit=burst(3)).counts == {}
    # a plan with no faults, or faults for other methods, never fires
    assert hits(FaultPlan(), "GET", 100) == [] and hits(FaultPlan(slow=randomly(1.0, methods=POST)), "GET", 100) == []
    with pytest.raises(ValueError):
        When(probability=1.5)
    with pytest.raises(ValueError):
        FaultPlan(error_statuses=(404,))


def test_no_plan_no_faults(server):
    assert server.settings.faults is None  # the default is fault-free
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"}) as http:
        assert all(http.get("/v1/customers").status_code == 200 for _ in range(20))


def test_faults_on_the_wire_and_switched_at_run_time(server):
    """Raw HTTP, so the status, headers and body of each injected answer are visible."""
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"}, timeout=10
    ) as http:
        plan = server.settings.faults = FaultPlan(rate_limit=burst(1, methods=GET), retry_after=1)
        r = http.get("/v1/customers")
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["code"] == "rate_limit"
        assert http.get("/v1/customers").status_code == 200  # the burst is over

        plan = server.settings.faults = FaultPlan(server_error=burst(3, methods=GET), error_statuses=(502,))
        r = http.get("/v1/customers")
        assert r.status_code == 502 and r.json()["error"]["type"] == "api_error"
        assert "stripe-should-retry" not in r.headers  # the SDK may retry it
        assert http.post("/v1/customers/x", data={}).status_code == 404  # POSTs are not targeted

        server.settings.faults = FaultPlan(slow=randomly(1.0, methods=GET), delay=0.2)
        t0 = time.monotonic()
        assert http.get("/v1/products").status_code == 200
        assert time.monotonic() - t0 >= 0.2

        server.settings.faults = None  # off again, mid-run
        assert http.get("/v1/customers").status_code == 200
        assert plan.counts == {"server_error": 1, "server_error:GET": 1}  # the old plan stopped counting


# ---------------------------------------------------------------------------
# ingestion under faults: same snapshot, no duplicates, no gaps
# ---------------------------------------------------------------------------


def test_ingestion_recovers_from_429s_5xx_and_slow_responses(server, tiny_world):
    now = tiny_world.config.as_of_dt()
    clean_conn = connector(server.url, page_size=10)
    clean = clean_conn.fetch_snapshot(now)
    clean_requests = clean_conn.stats["requests"]

    plan = server.settings.faults = FaultPlan(
        seed=7,
        rate_limit=burst(4, start=3, methods=GET),
        retry_after=0,  # 4 x 429 on one page: 5 of 6 attempts
        server_error=randomly(0.2, methods=GET),  # retried by the SDK (max_network_retries=3)
        slow=randomly(0.1, methods=GET),
        delay=0.02,
    )
    before = requests_served(server)
    conn = connector(server.url, page_size=10)
    faulty = conn.fetch_snapshot(now)

    # identical snapshots: same ids in the same order, no duplicates, same payloads
    assert faulty.keys() == clean.keys()
    for name, rows in clean.items():
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), name
        assert [r["id"] for r in faulty[name]] == ids, name
        assert faulty[name] == rows, name
    assert len(clean["customers"]) == 12 and len(clean["invoices"]) == 21 and clean["meter_event_summaries"]

    # the faults really happened, and every one is accounted for
    assert plan.counts["rate_limit"] == 4
    assert plan.counts["server_error"] > 0 and plan.counts["slow"] > 0
    assert plan.counts["apply_then_fail"] == 0 and plan.seen["POST"] == 0
    assert conn.stats["rate_limited"] == 4  # the connector saw and retried each 429
    assert conn.stats["requests"] == clean_requests + 4  # one extra call per 429, nothing else
    # the SDK retried each 5xx itself, within a call: one extra request each
    assert requests_served(server) - before == plan.seen["GET"] == conn.stats["requests"] + plan.counts["server_error"]


# ---------------------------------------------------------------------------
# writes: a POST that applied and then failed
# ---------------------------------------------------------------------------


def test_sdk_retry_of_an_applied_post_replays_it_and_leaves_one_object(server):
    cust = a_customer(server)
    plan = server.settings.faults = FaultPlan(apply_then_fail=nth(1, methods=POST))
    item = sdk(server.url, retries=2).v1.invoice_items.create({"customer": cust, **ITEM})

    assert plan.counts["apply_then_fail"] == 1 and plan.total == 1
    assert plan.seen["POST"] == 2  # the failed attempt and the SDK's retry (same auto-generated Idempotency-Key)
    assert item.last_response.headers["Idempotent-Replayed"] == "true"  # the retry got the stored response
    assert invoice_items(server, cust) == [item.id]


@pytest.mark.parametrize("mode, error", [("500", stripe.APIError), ("drop", stripe.APIConnectionError)])
def test_without_sdk_retries_the_caller_retries_with_the_same_key(server, mode, error):
    cust = a_customer(server)
    plan = server.settings.faults = FaultPlan(apply_then_fail=nth(1, methods=POST), apply_then_fail_mode=mode)
    client = sdk(server.url, retries=0)
    params, options = {"customer": cust, **ITEM}, {"idempotency_key": f"fault-test-{mode}"}

    with pytest.raises(error):
        client.v1.invoice_items.create(params, options)
    written = invoice_items(server, cust)
    assert len(written) == 1  # it did apply

    item = client.v1.invoice_items.create(params, options)
    assert item.id == written[0] and item.amount == ITEM["amount"]
    assert item.last_response.headers["Idempotent-Replayed"] == "true"
    assert invoice_items(server, cust) == written  # still exactly one
    assert plan.counts["apply_then_fail"] == 1 and plan.seen["POST"] == 2


def test_the_sdk_does_not_retry_a_response_cut_off_mid_body(server):
    """Pins stripe 16.1.0's behaviour: a connection dropped after the headers is a
    ChunkedEncodingError, which the SDK does not retry even with retries on and an
    idempotency key on the request. A caller that writes must retry such a call
    itself, with the same key (see the test above)."""
    cust = a_customer(server)
    plan = server.settings.faults = FaultPlan(apply_then_fail=nth(1, methods=POST), apply_then_fail_mode="drop")
    with pytest.raises(stripe.APIConnectionError):
        sdk(server.url, retries=2).v1.invoice_items.create({"customer": cust, **ITEM})
    assert plan.seen["POST"] == 1 and plan.counts["apply_then_fail"] == 1
    assert len(invoice_items(server, cust)) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_on_a_post_without_retries_is_an_api_error_and_writes_nothing(server, status):
    cust = a_customer(server)
    plan = server.settings.faults = FaultPlan(server_error=burst(2, methods=POST), error_statuses=(status,))

    # through the SDK (which, in 16.1.0, puts an Idempotency-Key on every POST)
    with pytest.raises(stripe.APIError) as exc:
        sdk(server.url, retries=0).v1.invoice_items.create({"customer": cust, **ITEM})
    assert type(exc.value) is stripe.APIError and exc.value.http_status == status

    # raw, with no Idempotency-Key at all
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"}) as http:
        r = http.post("/v1/invoiceitems", data={"customer": cust, **ITEM})
    assert r.status_code == status and r.json()["error"]["type"] == "api_error"
    assert "idempotency-key" not in r.headers

    assert plan.seen["POST"] == 2 and plan.counts["server_error"] == 2  # no silent retry, no silent success
    assert invoice_items(server, cust) == []  # the fault came before the write


# ---------------------------------------------------------------------------
# the retry budget
# ---------------------------------------------------------------------------


def test_429s_beyond_the_retry_budget_surface_as_rate_limit_error(server):
    plan = server.settings.faults = FaultPlan(rate_limit=burst(10, methods=GET), retry_after=0)
    conn = connector(server.url, max_attempts=3)
    before = requests_served(server)
    with pytest.raises(stripe.RateLimitError):
        list(conn.customers())
    assert requests_served(server) - before == 3  # exactly max_attempts tries
    assert plan.counts["rate_limit"] == 3 and plan.seen["GET"] == 3
    assert conn.stats == {"requests": 3, "rate_limited": 3, "broken_reads": 0}

    # the rest of the burst is still armed: 7 more 429s, then the listing goes through
    conn = connector(server.url, max_attempts=8)
    assert len(list(conn.customers())) == 12
    assert plan.counts["rate_limit"] == 10 and conn.stats == {"requests": 8, "rate_limited": 7, "broken_reads": 0}


def test_a_get_cut_off_mid_body_is_retried_by_the_connector(server):
    plan = server.settings.faults = FaultPlan(apply_then_fail=nth(2, methods=GET), apply_then_fail_mode="drop")
    conn = connector(server.url, page_size=5)
    assert len(list(conn.customers())) == 12  # pages of 5, 5, 2; the 2nd cut off, then read again
    assert plan.counts["apply_then_fail"] == 1
    assert conn.stats["broken_reads"] == 1 and conn.stats["requests"] == 4
