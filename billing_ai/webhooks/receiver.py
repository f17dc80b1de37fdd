"""A small webhook receiver: verify, deduplicate by event id, append to a durable inbox.

``POST /webhooks/<platform>`` for ``stripe``, ``recurly``, ``chargebee`` and ``zuora``. A delivery that
fails its platform's check gets ``400`` (nothing is stored); a verified one is appended to the inbox
(SQLite, ``data/webhooks/inbox.sqlite``) once per ``(platform, event id)`` and answered ``200``, also
when it is a redelivery, so the platform stops retrying. The Dagster sensor ``webhook_events`` reads
the inbox with a cursor (:mod:`billing_ai.webhooks.assets`). Secrets come from the environment:
``STRIPE_WEBHOOK_SECRETS`` and ``RECURLY_WEBHOOK_SECRETS`` (comma-separated: several during a
rotation), ``CHARGEBEE_WEBHOOK_USER``/``_PASSWORD``, ``ZUORA_WEBHOOK_SECRET`` (HMAC in
``X-Zuora-Signature``) or ``ZUORA_WEBHOOK_USER``/``_PASSWORD`` (basic auth).

Run on its own: ``billing-ai webhooks serve``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from billing_ai.webhooks import signatures as sig

DEFAULT_INBOX = "data/webhooks/inbox.sqlite"


class WebhookInbox:
    """Durable, deduplicated, append-only: ``seq`` orders deliveries for the sensor's cursor."""

    def __init__(self, path: str | Path = DEFAULT_INBOX):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, platform TEXT NOT NULL, event_id TEXT NOT NULL,
            type TEXT NOT NULL, object_id TEXT, received_at REAL NOT NULL, payload TEXT NOT NULL,
            UNIQUE (platform, event_id))""")

    def append(
        self, platform: str, event_id: str, type_: str, object_id: str | None, payload: str, received_at: float
    ) -> bool:
        """True if new; False for a redelivery (already in the inbox)."""
        with self._lock:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO events (platform, event_id, type, object_id, received_at, "
                "payload) VALUES (?,?,?,?,?,?)",
                (platform, event_id, type_, object_id, received_at, payload),
            )
            return cur.rowcount == 1

    def after(self, seq: int, limit: int = 500) -> list[dict]:
        cols = ("seq", "platform", "event_id", "type", "object_id", "received_at")
        rows = self.db.execute(
            f"SELECT {', '.join(cols)} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def close(self) -> None:
        self.db.close()


@dataclass
class WebhookSecrets:
    stripe: list[str] = field(default_factory=list)
    recurly: list[str] = field(default_factory=list)
    chargebee: tuple[str, str] = ("", "")
    zuora_hmac: str = ""
    zuora_basic: tuple[str, str] = ("", "")
    tolerance: int = 300

    @classmethod
    def from_env(cls) -> WebhookSecrets:
        split = lambda v: [s.strip() for s in os.environ.get(v, "").split(",") if s.strip()]  # noqa: E731 -- a one-line local helper reads best inline
        return cls(
            stripe=split("STRIPE_WEBHOOK_SECRETS"),
            recurly=split("RECURLY_WEBHOOK_SECRETS"),
            chargebee=(os.environ.get("CHARGEBEE_WEBHOOK_USER", ""), os.environ.get("CHARGEBEE_WEBHOOK_PASSWORD", "")),
            zuora_hmac=os.environ.get("ZUORA_WEBHOOK_SECRET", ""),
            zuora_basic=(os.environ.get("ZUORA_WEBHOOK_USER", ""), os.environ.get("ZUORA_WEBHOOK_PASSWORD", "")),
        )


def parse_event(platform: str, body: dict) -> tuple[str, str, str | None]:
    """(event id, type, object id) in each platform's own payload shape."""
    if platform == "stripe":  # {"id": "evt_...", "type": "invoice.created", "data": {"object": {"id": ...}}}
        return body["id"], body["type"], ((body.get("data") or {}).get("object") or {}).get("id")
    if platform == "recurly":  # {"id": ..., "object_type": "subscription", "event_type": "updated", "id" of object}
        return body["id"], f"{body['object_type']}.{body['event_type']}", body.get("uuid") or body.get("object_id")
    if platform == "chargebee":  # {"id": "ev_...", "event_type": "invoice_generated", "content": {"invoice": {...}}}
        content = body.get("content") or {}
        obj = next(iter(content.values()), {}) if content else {}
        return body["id"], body["event_type"], obj.get("id") if isinstance(obj, dict) else None
    if platform == "zuora":  # callout: {"eventId": ..., "eventType": ..., "objectId": ...}
        return body["eventId"], body["eventType"], body.get("objectId")
    raise KeyError(platform)


def verify(platform: str, request_headers, payload: bytes, secrets: WebhookSecrets, now: float | None = None) -> None:
    h = request_headers
    if platform == "stripe":
        sig.verify_stripe(payload, h.get("stripe-signature"), secrets.stripe, secrets.tolerance, now)
    elif platform == "recurly":
        sig.verify_recurly(payload, h.get("recurly-signature"), secrets.recurly, secrets.tolerance, now)
    elif platform == "chargebee":
        sig.verify_basic(h.get("authorization"), *secrets.chargebee)
    elif platform == "zuora":
        if secrets.zuora_hmac:
            sig.verify_zuora_hmac(payload, h.get("x-zuora-signature"), secrets.zuora_hmac)
        else:
            sig.verify_basic(h.get("authorization"), *secrets.zuora_basic)
    else:
        raise KeyError(platform)


def create_app(inbox: WebhookInbox, secrets: WebhookSecrets, clock=None) -> Starlette:
    import time

    async def receive(request: Request) -> JSONResponse:
        platform = request.path_params["platform"]
        payload = await request.body()
        now = clock() if clock else time.time()
        try:
            verify(platform, request.headers, payload, secrets, now)
        except KeyError:
            return JSONResponse({"error": f"unknown platform {platform!r}"}, status_code=404)
        except sig.SignatureError as e:
            return JSONResponse({"error": f"rejected: {e}"}, status_code=400)
        try:
            body = json.loads(payload)
            event_id, type_, object_id = parse_event(platform, body)
        except (ValueError, KeyError, TypeError, AttributeError):
            return JSONResponse({"error": "verified, but not an event this receiver understands"}, status_code=400)
        new = inbox.append(platform, str(event_id), str(type_), object_id, payload.decode("utf-8", "replace"), now)
        return JSONResponse({"received": True, "duplicate": not new})

    return Starlette(routes=[Route("/webhooks/{platform}", receive, methods=["POST"])])
