"""The clock, PII tokens and the shared retry policy."""

from datetime import UTC, datetime

import pytest

from billing_ai.clock import Clock
from billing_ai.pii import tokenize
from billing_ai.retry import RateLimited, RetryPolicy, Transient, call_with_retries


def test_pinned_clock_is_as_of():
    c = Clock.from_setting("2026-11-01T06:00:00Z")
    assert c.now() == datetime(2026, 11, 1, 6, tzinfo=UTC)
    assert Clock.from_setting("2026-11-01T06:00:00").now().tzinfo is not None


def test_env_clock(monkeypatch):
    monkeypatch.setenv("BILLING_AI_AS_OF", "2026-01-02T03:04:05+00:00")
    assert Clock.from_setting(None).now() == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_tokens_are_stable_keyed_and_case_folded_for_email():
    a = tokenize("Ana@Example.com", "k1", "email")
    assert a == tokenize("ana@example.com ", "k1", "email")
    assert a != tokenize("ana@example.com", "k2", "email")
    assert a.startswith("tok_email_") and "example" not in a
    assert tokenize("Ana", "k1", "name") != tokenize("Ana", "k1", "email")
    assert tokenize(None, "k1", "name") is None
    with pytest.raises(ValueError):
        tokenize("x", "", "name")


def test_429_is_retried_after_retry_after_and_transient_only_when_asked():
    sleeps, calls = [], {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise RateLimited(2.0)
        return "ok"

    assert call_with_retries(flaky, RetryPolicy(max_attempts=5), retry_transient=False, sleep=sleeps.append) == "ok"
    assert sleeps == [2.0, 2.0] and calls["n"] == 3

    def broken():
        raise Transient("502")

    with pytest.raises(Transient):  # the SDK retries 5xx itself: no second loop here
        call_with_retries(broken, RetryPolicy(max_attempts=5), retry_transient=False, sleep=sleeps.append)


def test_429_gives_up_after_max_attempts():
    with pytest.raises(RateLimited):
        call_with_retries(
            lambda: (_ for _ in ()).throw(RateLimited(None)),
            RetryPolicy(max_attempts=3),
            retry_transient=False,
            sleep=lambda s: None,
        )
