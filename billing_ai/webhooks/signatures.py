"""Webhook authenticity, per platform's own scheme. Every check is constant-time and fails closed.

* **Stripe** (``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``): HMAC-SHA256 of ``"<t>.<raw body>"``
  with the endpoint secret. During a secret rotation Stripe signs with both secrets (several ``v1``)
  and we may hold both: any configured secret matching any ``v1`` passes. ``t`` must be within the
  tolerance (default 300 s) of now, so a captured delivery cannot be replayed later.
* **Recurly** (``recurly-signature: <unix ms>,<hex>[,<hex>...]``): HMAC-SHA256 of ``"<ms>.<raw body>"``;
  same rotation and tolerance rules.
* **Chargebee**: HTTP basic auth on the webhook URL (Chargebee's documented protection).
* **Zuora**: the scheme configured on the callout: basic auth, or an HMAC-SHA256 of the raw body in a
  named header (``zuora_hmac``) with the shared secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


class SignatureError(ValueError):
    """The delivery is unsigned, altered, stale or signed with an unknown secret."""


def _hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _any_match(expected: list[str], given: list[str]) -> bool:
    ok = False
    for e in expected:
        for g in given:
            ok |= hmac.compare_digest(e, g)  # no early exit: timing does not reveal which failed
    return ok


def _fresh(timestamp: float, tolerance: int, now: float | None) -> None:
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp outside the {tolerance} s tolerance (replayed or clock skew)")


def verify_stripe(
    payload: bytes, header: str | None, secrets: list[str], tolerance: int = 300, now: float | None = None
) -> None:
    if not header:
        raise SignatureError("no Stripe-Signature header")
    if not secrets:
        raise SignatureError("no webhook secret configured")
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    ts = [v for k, v in parts if k.strip() == "t"]
    sigs = [v.strip() for k, v in parts if k.strip() == "v1"]
    if len(ts) != 1 or not sigs or not ts[0].strip().isdigit():
        raise SignatureError("malformed Stripe-Signature header")
    t = ts[0].strip()
    if not _any_match([_hmac(s, f"{t}.".encode() + payload) for s in secrets], sigs):
        raise SignatureError("no v1 signature matches a configured secret")
    _fresh(int(t), tolerance, now)


def stripe_header(payload: bytes, secret: str, t: int | None = None) -> str:
    """The header Stripe would send (for the sandbox and tests)."""
    t = int(time.time()) if t is None else t
    return f"t={t},v1={_hmac(secret, f'{t}.'.encode() + payload)}"


def verify_recurly(
    payload: bytes, header: str | None, secrets: list[str], tolerance: int = 300, now: float | None = None
) -> None:
    if not header:
        raise SignatureError("no recurly-signature header")
    if not secrets:
        raise SignatureError("no webhook secret configured")
    fields = [f.strip() for f in header.split(",")]
    if len(fields) < 2 or not fields[0].isdigit():
        raise SignatureError("malformed recurly-signature header")
    ms = fields[0]
    if not _any_match([_hmac(s, f"{ms}.".encode() + payload) for s in secrets], fields[1:]):
        raise SignatureError("no signature matches a configured secret")
    _fresh(int(ms) / 1000, tolerance, now)


def recurly_header(payload: bytes, secret: str, ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if ms is None else ms
    return f"{ms},{_hmac(secret, f'{ms}.'.encode() + payload)}"


def verify_basic(header: str | None, username: str, password: str) -> None:
    if not username or not password:
        raise SignatureError("no webhook credentials configured")
    if not header or not header.lower().startswith("basic "):
        raise SignatureError("no basic auth")
    try:
        user, _, pw = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise SignatureError("malformed basic auth") from None
    ok = hmac.compare_digest(user, username) & hmac.compare_digest(pw, password)
    if not ok:
        raise SignatureError("wrong webhook credentials")


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def verify_zuora_hmac(payload: bytes, header: str | None, secret: str) -> None:
    if not secret:
        raise SignatureError("no webhook secret configured")
    if not header or not hmac.compare_digest(header.strip(), _hmac(secret, payload)):
        raise SignatureError("Zuora signature missing or wrong")


def zuora_hmac(payload: bytes, secret: str) -> str:
    return _hmac(secret, payload)
