"""Webhook signatures (each platform's scheme), the receiver's dedup and inbox, and the sensor's runs."""

from __future__ import annotations

import hashlib
import hmac
import json

import dagster as dg
import pytest

from billing_ai.pipeline import platform_sync_job
from billing_ai.webhooks import signatures as sig
from billing_ai.webhooks.receiver import WebhookInbox, WebhookSecrets, create_app
from billing_ai.webhooks.sensors import requests_for, webhook_sensor
from billing_ai_tests.conftest import ASGIClient

NOW = 1_790_000_000
BODY = json.dumps({"id": "evt_1", "type": "invoice.created", "data": {"object": {"id": "in_1"}}}).encode()


def test_stripe_signature_by_hand_rotation_and_tolerance():
    expected = hmac.new(b"whsec_a", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sig.stripe_header(BODY, "whsec_a", NOW) == f"t={NOW},v1={expected}"
    sig.verify_stripe(BODY, f"t={NOW},v1={expected}", ["whsec_a"], now=NOW)
    # rotation: signed with the old and the new secret, we hold only the new one (or both)
    rotated = f"t={NOW},v1={sig.stripe_header(BODY, 'whsec_old', NOW).split('v1=')[1]},v1={expected}"
    sig.verify_stripe(BODY, rotated, ["whsec_a"], now=NOW)
    sig.verify_stripe(BODY, rotated, ["whsec_old", "whsec_a"], now=NOW)
    with pytest.raises(sig.SignatureError, match="tolerance"):
        sig.verify_stripe(BODY, f"t={NOW},v1={expected}", ["whsec_a"], now=NOW + 301)
    with pytest.raises(sig.SignatureError, match="no v1"):
        sig.verify_stripe(BODY.replace(b"in_1", b"in_2"), f"t={NOW},v1={expected}", ["whsec_a"], now=NOW)
    with pytest.raises(sig.SignatureError):
        sig.verify_stripe(BODY, None, ["whsec_a"], now=NOW)
    with pytest.raises(sig.SignatureError, match="malformed"):
        sig.verify_stripe(BODY, "v1=abc", ["whsec_a"], now=NOW)


def test_recurly_chargebee_zuora():
    h = sig.recurly_header(BODY, "rk", NOW * 1000)
    sig.verify_recurly(BODY, h, ["rk"], now=NOW)
    with pytest.raises(sig.SignatureError):
        sig.verify_recurly(BODY + b" ", h, ["rk"], now=NOW)
    with pytest.raises(sig.SignatureError, match="tolerance"):
        sig.verify_recurly(BODY, h, ["rk"], now=NOW + 3600)
    sig.verify_basic(sig.basic_header("cb", "pw"), "cb", "pw")
    with pytest.raises(sig.SignatureError):
        sig.verify_basic(sig.basic_header("cb", "nope"), "cb", "pw")
    with pytest.raises(sig.SignatureError, match="configured"):
        sig.verify_basic(sig.basic_header("", ""), "", "")  # no credentials configured: closed, not open
    sig.verify_zuora_hmac(BODY, sig.zuora_hmac(BODY, "zs"), "zs")
    with pytest.raises(sig.SignatureError):
        sig.verify_zuora_hmac(BODY, sig.zuora_hmac(BODY, "other"), "zs")


def test_receiver_verifies_dedups_and_the_sensor_runs_once(tmp_path, monkeypatch):
    inbox = WebhookInbox(tmp_path / "inbox.sqlite")
    secrets = WebhookSecrets(stripe=["whsec_a"], chargebee=("cb", "pw"))
    client = ASGIClient(create_app(inbox, secrets, clock=lambda: NOW))
    headers = {"Stripe-Signature": sig.stripe_header(BODY, "whsec_a", NOW), "Content-Type": "application/json"}
    assert client.post("/webhooks/stripe", content=BODY, headers=headers).json() == {
        "received": True,
        "duplicate": False,
    }
    assert client.post("/webhooks/stripe", content=BODY, headers=headers).json()["duplicate"] is True  # redelivery
    stale = {"Stripe-Signature": sig.stripe_header(BODY, "whsec_a", NOW - 1000)}
    assert client.post("/webhooks/stripe", content=BODY, headers=stale).status_code == 400
    altered = BODY.replace(b"in_1", b"in_9")
    assert client.post("/webhooks/stripe", content=altered, headers=headers).status_code == 400
    assert client.post("/webhooks/stripe", content=BODY).status_code == 400  # unsigned
    cb = json.dumps(
        {"id": "ev_cb_1", "event_type": "subscription_changed", "content": {"subscription": {"id": "sub_cb"}}}
    ).encode()
    assert (
        client.post(
            "/webhooks/chargebee", content=cb, headers={"Authorization": sig.basic_header("cb", "pw")}
        ).status_code
        == 200
    )
    assert client.post("/webhooks/chargebee", content=cb).status_code == 400
    assert client.post("/webhooks/nowhere", content=cb).status_code == 404
    events = inbox.after(0)
    assert [(e["platform"], e["event_id"], e["type"], e["object_id"]) for e in events] == [
        ("stripe", "evt_1", "invoice.created", "in_1"),
        ("chargebee", "ev_cb_1", "subscription_changed", "sub_cb"),
    ]
    monkeypatch.setenv("BILLING_AI_WEBHOOK_INBOX", str(tmp_path / "inbox.sqlite"))
    webhook_events = webhook_sensor(platform_sync_job)
    ctx = dg.build_sensor_context(cursor=None)
    reqs = webhook_events(ctx)
    first, last = events[0]["seq"], events[-1]["seq"]
    # the Stripe invoice event and the Chargebee subscription event: targeted refreshes of those objects
    # (both connectors fetch single objects, see refresh.py); other refreshing events: a snapshot run
    assert all(r.job_name == "targeted_refresh_job" for r in reqs)
    targeted = {r.run_config["ops"]["refresh_named_objects"]["config"]["platform"]: r for r in reqs}
    assert targeted["stripe"].run_key == f"webhook-stripe-invoice-{first}-{first}"
    assert targeted["stripe"].run_config["ops"]["refresh_named_objects"]["config"] == {
        "platform": "stripe",
        "kind": "invoice",
        "ids": ["in_1"],
        "events": ["evt_1"],
    }
    assert targeted["chargebee"].run_config["ops"]["refresh_named_objects"]["config"] == {
        "platform": "chargebee",
        "kind": "subscription",
        "ids": ["sub_cb"],
        "events": ["ev_cb_1"],
    }
    snap = requests_for(
        [{"seq": 9, "platform": "chargebee", "event_id": "e9", "type": "customer_changed", "object_id": "cus_1"}],
        platform_sync_job,
    )
    assert [(r.job_name, r.run_key) for r in snap] == [("platform_sync_job", "webhooks-9-9")]
    assert ctx.cursor == str(last)
    assert isinstance(webhook_events(dg.build_sensor_context(cursor=str(last))), dg.SkipReason)  # read once
    assert (
        requests_for(
            [{"seq": 5, "platform": "stripe", "event_id": "e", "type": "balance.available", "object_id": None}],
            platform_sync_job,
        )
        == []
    )


def test_out_of_order_deliveries_refresh_the_object_once_from_its_current_state(tmp_path):
    """A newer event delivered before an older one about the same invoice: both are kept (distinct ids),
    and one targeted run refreshes the invoice by fetching it as it is now, so arrival order cannot
    leave an older version in the warehouse."""
    inbox = WebhookInbox(tmp_path / "inbox.sqlite")
    client = ASGIClient(create_app(inbox, WebhookSecrets(stripe=["whsec_a"]), clock=lambda: NOW))
    for evt, typ, created in (("evt_2", "invoice.finalized", NOW), ("evt_1", "invoice.created", NOW - 60)):
        body = json.dumps(
            {"id": evt, "type": typ, "created": created, "data": {"object": {"id": "in_7", "object": "invoice"}}}
        ).encode()
        headers = {"Stripe-Signature": sig.stripe_header(body, "whsec_a", NOW), "Content-Type": "application/json"}
        assert client.post("/webhooks/stripe", content=body, headers=headers).status_code == 200
    events = inbox.after(0)
    assert [e["event_id"] for e in events] == ["evt_2", "evt_1"]  # kept in arrival order
    reqs = requests_for(events, platform_sync_job)
    assert len(reqs) == 1 and reqs[0].job_name == "targeted_refresh_job"
    config = reqs[0].run_config["ops"]["refresh_named_objects"]["config"]
    assert config["ids"] == ["in_7"] and config["events"] == ["evt_2", "evt_1"]
