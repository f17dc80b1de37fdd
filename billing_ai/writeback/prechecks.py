"""The business rules every platform writer re-checks at push time, written once for all of them.

Between approval and push the platform may have moved on: the invoice got paid or credited, the
subscription was canceled, the price retired. Each writer reads the platform's current state its own way
(an SDK, a REST read, an object query) and hands a rule the few facts it needs in the platform-neutral
terms below; the rule decides, and its reason -- what the reviewer reads in the ledger when an action is
blocked -- is the same on every platform. Limits only one platform has (Stripe's 50 metadata keys,
Recurly's custom-field length, Zuora's custom-field names) stay with that writer.

Every rule returns the reasons to block, empty when the action may go: a writer returns the first
non-empty answer (``return problems`` / ``if problems: return problems``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from billing_ai.money import format_minor


def exists(what: str, object_id: str, found: object | None) -> list[str]:
    """The target (or an object the action names) is still on the platform."""
    return [] if found is not None else [f"{what} {object_id} does not exist"]


def same_currency(
    what: str, object_id: str, has: str | None, wanted: str, *, billed: bool = False, required: bool = False
) -> list[str]:
    """Money moves only in the currency of the object it lands on. ``has`` empty: the platform does not say
    (a Stripe customer with no invoice yet), nothing to compare -- unless ``required``: where the platform
    always knows it (a Zuora account), not knowing it fails closed."""
    has = (has or "").lower()
    if not has:
        return [f"{what} {object_id} has no currency on the platform"] if required else []
    if has == wanted:
        return []
    return [f"{what} {object_id} {'is billed in' if billed else 'is in'} {has}, not {wanted}"]


def live_subscription_of(subscription_id: str, customer_id: str, *, live: bool, owner: str | None) -> list[str]:
    """A charge named for a subscription goes on a live subscription of the same customer."""
    if live and owner == customer_id:
        return []
    return [f"subscription {subscription_id} is not an active subscription of {customer_id}"]


@dataclass(frozen=True)
class CreditableInvoice:
    """An invoice as the credit rule sees it. ``uncredited`` is read only if the status and the currency
    pass: it costs a listing of the invoice's credits on most platforms, and parses amounts that are only
    known to parse in a currency the rule has accepted."""

    status: str  # the platform's own word, quoted in the reason
    creditable: bool  # the platform takes a credit against an invoice in this status
    currency: str
    uncredited: Callable[[], int]  # minor units: its total less what is credited (voided credits excluded)


def credit_fits(
    invoice_id: str, invoice: CreditableInvoice | None, amount: int, currency: str, needs: str
) -> list[str]:
    """A credit goes against an existing invoice the platform lets us credit (``needs`` says which, in
    the platform's words), in its currency, and never beyond what is not credited yet."""
    if invoice is None:
        return exists("invoice", invoice_id, None)
    if not invoice.creditable:
        return [f"invoice {invoice_id} is {invoice.status}: {needs}"]
    problems = same_currency("invoice", invoice_id, invoice.currency, currency)
    if problems:
        return problems
    room = invoice.uncredited()
    if amount > room:
        return [
            f"{format_minor(amount, currency)} is more than the invoice's uncredited {format_minor(room, currency)}"
        ]
    return []


def subscription_live(subscription_id: str, live: bool) -> list[str]:
    """A plan change or a quote needs a subscription that is still running."""
    return [] if live else [f"subscription {subscription_id} is not active"]


@dataclass(frozen=True)
class TargetPrice:
    """The price an item would move to, as the price-change rule sees it."""

    active: bool
    currency: str


def price_change_allowed(
    subscription_id: str,
    item: str,
    to_price: str,
    *,
    on_subscription: bool,
    already_current: bool,
    target: TargetPrice | None,
    item_currency: str,
) -> list[str]:
    """An item moves to another price only if the item is on the subscription, the new price is not
    already the item's, exists, is active, and is in the item's currency."""
    if not on_subscription:
        return [f"subscription item {item} is not on {subscription_id}"]
    if already_current:
        return [f"price {to_price} is already active on {item}"]
    if target is None or not target.active:
        return [f"price {to_price} does not exist or is inactive"]
    if target.currency.lower() != item_currency.lower():
        return [f"price {to_price} is in {target.currency.lower()}, the item in {item_currency.lower()}"]
    return []


def retry_matches_approval(
    invoice_id: str,
    *,
    open_: bool,
    status: str,
    amount_due: int,
    currency: str,
    approved_amount: int,
    approved_currency: str,
) -> list[str]:
    """A payment retry charges exactly what the approver saw: the invoice still open with that amount due."""
    if not open_ or amount_due <= 0:
        return [f"invoice {invoice_id} is {status} with {amount_due} remaining: nothing to retry"]
    if amount_due != approved_amount or currency != approved_currency:
        return [
            f"the amount due changed since approval: approved {format_minor(approved_amount, approved_currency)}, "
            f"now {format_minor(amount_due, currency)}"
        ]
    return []
