"""Execute one approved action: exactly once on the platform, every step audited.

The loop for one action (:func:`push_action`):

1. claim it in the ledger (a new attempt with its own idempotency key);
2. if an earlier attempt's outcome is unknown (a timeout, a dropped
   connection, a 5xx after sending), read the platform back first: if the
   change is there, record it as applied and stop; never resend blind;
3. re-check the business rules and the platform's current state (the plan
   still exists and is not already active, the invoice is still open, the
   customer has not opted out of e-mail...); a failed re-check blocks the
   action with the reason;
4. send, with the attempt's idempotency key (the SDK resends the same key on
   its own network retries); a 429 waits ``Retry-After``; a permanent error
   (4xx, a card decline) fails the action with the platform's message; an
   unknown outcome goes back to 2 after a backoff;
5. record the platform's response and leave the audit pointer on the object
   touched (on Stripe ``metadata[billing_ai_audit_id] = "<action_id>#<audit seq>"``;
   each platform's writer in ``billing_ai/platforms/<name>/writer.py`` says where),
   in the same request where the API allows it.

Only the typed ``params`` and the target reach a request; rationale and
evidence text never do. Contact details (the e-mail address) are read from the
platform here, at push time, and never stored.
"""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from string import Template

import httpx

from billing_ai.actions.ledger import Claim, Ledger
from billing_ai.actions.policy import Policy
from billing_ai.retry import RateLimited, RetryPolicy, Transient, call_with_retries, retry_after_seconds
from billing_ai.writeback.kinds import Proposal
from billing_ai.writeback.outcomes import Applied, Permanent, PlatformExecutor, Unknown, pointer


class PushIncomplete(Exception):
    """Attempts ran out with the outcome still unknown: the run fails and a retry reads back first."""


def slack_escape(text: str) -> str:
    """Slack's own escaping: customer text cannot mention @channel, link or format."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---- sinks (support cases, chat, e-mail) --------------------------------------------------------
@dataclass
class Sinks:
    """Where non-platform actions go. ``chat_webhook_url`` is a secret (the URL is the credential)."""

    case_url: str
    chat_webhook_url: str
    outbox_dir: Path
    sender: str = "billing@billing-ai.invalid"
    timeout: float = 10.0

    def post(self, url: str, body: dict) -> httpx.Response:
        def attempt():
            try:
                r = httpx.post(url, json=body, timeout=self.timeout)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                raise Transient(type(e).__name__) from e
            if r.status_code == 429:
                raise RateLimited(retry_after_seconds(r.headers.get("retry-after")))
            if r.status_code >= 500:
                raise Transient(f"{r.status_code}")
            return r

        try:
            r = call_with_retries(
                attempt, RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=5), retry_transient=True
            )
        except (Transient, RateLimited) as e:
            raise Unknown(f"sink {url.split('?')[0].rsplit('/', 1)[0]}: {e}") from e
        if r.status_code >= 400:
            raise Permanent(f"sink answered {r.status_code}: {r.text[:300]}")
        return r


EMAIL_TEMPLATES: dict[str, str] = {
    "usage_anomaly_heads_up": "Hello,\n\nWe noticed unusual usage on your account: $summary\n\n"
    "If this is expected, no action is needed. If not, reply to this e-mail and "
    "we will look into it with you.\n",
    "tier_crossing_notice": "Hello,\n\nAt your current pace your $meter usage will cross into the next pricing "
    "tier around $date: $summary\n",
    "upgrade_recommendation": "Hello,\n\n$summary\n\nWe have prepared a quote you can review any time.\n",
    "invoice_correction_notice": "Hello,\n\nWe found a difference on invoice $invoice: $summary\n",
}


def render_email(p: Proposal, to: str, sender: str) -> EmailMessage:
    """Plain text plus an HTML part in which every variable is escaped (they may carry customer text)."""
    params = p.typed_params()
    variables = dict(params.variables)
    text = Template(EMAIL_TEMPLATES[params.template]).safe_substitute(variables)
    html_body = Template(html.escape(EMAIL_TEMPLATES[params.template]).replace("\n", "<br>\n")).safe_substitute(
        {k: html.escape(v) for k, v in variables.items()}
    )
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, to
    msg["Subject"] = re.sub(r"[\r\n]+", " ", params.subject)  # no header injection
    msg["X-Billing-AI-Action"] = p.action_id
    msg.set_content(text)
    msg.add_alternative(f"<html><body>{html_body}</body></html>", subtype="html")
    return msg


# ---- the router: platform kinds to the proposal's platform, the rest to the sinks ------------------
SINK_KINDS = frozenset({"support_case", "chat_message", "customer_email"})


class Executor:
    """Re-check, read back and apply one proposal: platform kinds through the writer of the proposal's
    platform, cases, chat and e-mail through the sinks (with what they need read from the platform)."""

    def __init__(self, platforms: PlatformExecutor | dict[str, PlatformExecutor], sinks: Sinks):
        self.platforms = platforms if isinstance(platforms, dict) else {platforms.platform: platforms}
        self.sinks = sinks

    def platform(self, p: Proposal) -> PlatformExecutor:
        plat = self.platforms.get(p.platform)
        if plat is None:
            raise Permanent(f"no writer is configured for platform {p.platform!r}")
        return plat

    def precheck(self, p: Proposal) -> list[str]:
        plat, kind, tid = self.platform(p), p.kind, p.target_id
        if kind not in SINK_KINDS:
            if kind not in plat.kinds:
                return [f"{kind} is not something {p.platform} can carry out"]
            return plat.precheck(p)
        contact = plat.contact(tid)  # every sink kind targets a customer
        if contact is None:
            return [f"customer {tid} does not exist"]
        if kind == "customer_email":
            if contact.email_opt_out:
                return [f"customer {tid} opted out of e-mail"]
            if not contact.email:
                return [f"customer {tid} has no e-mail address on the platform"]
        return []

    def read_back(self, p: Proposal) -> Applied | None:
        kind, aid = p.kind, p.action_id
        if kind not in SINK_KINDS:
            return self.platform(p).read_back(p)
        if kind == "support_case":
            r = httpx.get(self.sinks.case_url, params={"external_id": aid}, timeout=self.sinks.timeout)
            cases = r.json().get("cases", []) if r.status_code == 200 else []
            return Applied(cases[0]["id"], cases[0]) if cases else None
        if kind == "customer_email":
            path = self.sinks.outbox_dir / f"{aid}.eml"
            return Applied(str(path.name)) if path.exists() else None
        return None  # chat_message: a webhook cannot be read back; resent (internal, at least once)

    def apply(self, p: Proposal, key: str, audit_seq: int) -> Applied:
        kind, tid = p.kind, p.target_id
        if kind not in SINK_KINDS:
            return self.platform(p).apply(p, key, audit_seq)
        params = p.typed_params().model_dump()
        mark = pointer(p.action_id, audit_seq)
        if kind == "support_case":
            r = self.sinks.post(
                self.sinks.case_url,
                {
                    "external_id": p.action_id,
                    "customer": tid,
                    "subject": params["subject"],
                    "body": params["body"],
                    "tags": list(params["tags"]),
                    "priority": params["priority"],
                },
            )
            case = r.json()
            return Applied(case.get("id"), case)
        if kind == "chat_message":
            text = f"*For {slack_escape(params['recipient'])}* ({p.action_id})\n{slack_escape(params['text'])}"
            self.sinks.post(self.sinks.chat_webhook_url, {"text": text})
            return Applied(None, {"sent": True})
        if kind == "customer_email":
            contact = self.platform(p).contact(tid)  # the address is read now, from the platform, never stored
            if contact is None or not contact.email:
                raise Permanent(f"customer {tid} has no e-mail address on the platform")
            msg = render_email(p, contact.email, self.sinks.sender)
            self.sinks.outbox_dir.mkdir(parents=True, exist_ok=True)
            final = self.sinks.outbox_dir / f"{p.action_id}.eml"
            tmp = final.with_suffix(".tmp")
            tmp.write_bytes(bytes(msg))
            os.replace(tmp, final)  # atomic: a crash leaves no half e-mail
            self.platform(p).leave_pointer(tid, key + "-ptr", mark)
            return Applied(final.name, {"template": p.params["template"]})
        raise Permanent(f"no executor for kind {kind!r}")


# ---- the push loop ------------------------------------------------------------------------------
def push_action(
    ledger: Ledger,
    executor: Executor,
    policy: Policy,
    action_id: str,
    *,
    actor: str = "push_job",
    run_id: str = "",
    max_attempts: int = 3,
    backoff: Callable[[int], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> dict:
    """Push one action; returns the ledger row after. Raises :class:`PushIncomplete` if the outcome
    stays unknown after ``max_attempts`` (the run fails; its retry reads back before resending)."""
    backoff = backoff or (lambda n: min(10.0, 0.5 * 2 ** (n - 1)))
    sleep = sleep or time.sleep
    for _ in range(max_attempts):
        claim: Claim | None = ledger.claim(action_id, actor, run_id)
        if claim is None:
            return ledger.get(action_id)  # already done, failed, blocked, or not approved: nothing to send
        p, n = claim.proposal, claim.attempt
        try:
            if claim.outcome_unknown:
                found = executor.read_back(p)
                if found:
                    ledger.finish(
                        action_id,
                        n,
                        "already_applied",
                        actor,
                        platform_object=found.platform_object,
                        response=found.response,
                    )
                    return ledger.get(action_id)
            problems = policy.violations(p) + executor.precheck(p)
            if problems:
                ledger.finish(action_id, n, "blocked", actor, error="; ".join(problems))
                return ledger.get(action_id)
            done = executor.apply(p, claim.idempotency_key, claim.audit_seq)
        except Permanent as e:
            ledger.finish(action_id, n, "failed", actor, error=str(e))
            return ledger.get(action_id)
        except Unknown as e:
            ledger.finish(action_id, n, "unknown", actor, error=str(e))
            sleep(backoff(n))
            continue
        except BaseException as e:  # auth/config errors, crashes: not sent as far as we know -> read back next time
            ledger.finish(action_id, n, "unknown", actor, error=f"{type(e).__name__}: {e}")
            raise
        ledger.finish(action_id, n, "succeeded", actor, platform_object=done.platform_object, response=done.response)
        return ledger.get(action_id)
    raise PushIncomplete(
        f"{action_id}: outcome still unknown after {max_attempts} attempts; "
        "the next run reads the platform back before any resend"
    )
