"""The push-time business rules every platform writer shares (billing_ai.writeback.prechecks), by hand."""

from billing_ai.writeback import prechecks as rules


def _invoice(status="paid", creditable=True, currency="usd", total=10_000, credited=2_500, calls=None):
    def uncredited():
        if calls is not None:
            calls.append(1)
        return total - credited

    return rules.CreditableInvoice(status=status, creditable=creditable, currency=currency, uncredited=uncredited)


def test_a_credit_fits_up_to_what_is_not_credited_yet():
    # total 100.00 USD, 25.00 already credited: room 75.00
    assert rules.credit_fits("in_1", _invoice(), 7_500, "usd", needs="x") == []
    assert rules.credit_fits("in_1", _invoice(), 7_501, "usd", needs="x") == [
        "75.01 USD is more than the invoice's uncredited 75.00 USD"
    ]


def test_a_credit_needs_an_existing_creditable_invoice_in_its_currency():
    assert rules.credit_fits("in_1", None, 1, "usd", needs="x") == ["invoice in_1 does not exist"]
    assert rules.credit_fits(
        "in_1", _invoice(status="void", creditable=False), 1, "usd", needs="credit notes need an open or paid invoice"
    ) == ["invoice in_1 is void: credit notes need an open or paid invoice"]
    assert rules.credit_fits("in_1", _invoice(currency="EUR"), 1, "usd", needs="x") == [
        "invoice in_1 is in eur, not usd"
    ]


def test_what_is_left_to_credit_is_read_only_when_status_and_currency_pass():
    calls = []
    rules.credit_fits("in_1", _invoice(creditable=False, calls=calls), 1, "usd", needs="x")
    rules.credit_fits("in_1", _invoice(currency="eur", calls=calls), 1, "usd", needs="x")
    assert calls == []
    rules.credit_fits("in_1", _invoice(calls=calls), 1, "usd", needs="x")
    assert calls == [1]


def test_currency_is_compared_case_blind_and_skipped_when_the_platform_does_not_say():
    assert rules.same_currency("customer", "cus_1", "USD", "usd", billed=True) == []
    assert rules.same_currency("customer", "cus_1", None, "usd", billed=True) == []
    assert rules.same_currency("customer", "cus_1", "jpy", "usd", billed=True) == [
        "customer cus_1 is billed in jpy, not usd"
    ]
    # where the platform always knows the currency (a Zuora account), not knowing it fails closed
    assert rules.same_currency("customer", "A-1", "", "usd", required=True) == [
        "customer A-1 has no currency on the platform"
    ]


def test_a_charge_goes_on_a_live_subscription_of_the_same_customer():
    assert rules.live_subscription_of("sub_1", "cus_1", live=True, owner="cus_1") == []
    assert rules.live_subscription_of("sub_1", "cus_1", live=True, owner="cus_2") == [
        "subscription sub_1 is not an active subscription of cus_1"
    ]
    assert rules.live_subscription_of("sub_1", "cus_1", live=False, owner="cus_1") != []


def test_a_price_change_in_the_order_a_reviewer_reads_it():
    ok = rules.TargetPrice(active=True, currency="usd")
    kw = {"on_subscription": True, "already_current": False, "target": ok, "item_currency": "USD"}
    assert rules.price_change_allowed("sub_1", "si_1", "price_b", **kw) == []
    assert rules.price_change_allowed("sub_1", "si_1", "price_b", **{**kw, "on_subscription": False}) == [
        "subscription item si_1 is not on sub_1"
    ]
    assert rules.price_change_allowed("sub_1", "si_1", "price_b", **{**kw, "already_current": True}) == [
        "price price_b is already active on si_1"
    ]
    assert rules.price_change_allowed("sub_1", "si_1", "price_b", **{**kw, "target": None}) == [
        "price price_b does not exist or is inactive"
    ]
    assert (
        rules.price_change_allowed(
            "sub_1", "si_1", "price_b", **{**kw, "target": rules.TargetPrice(active=False, currency="usd")}
        )
        != []
    )
    assert rules.price_change_allowed(
        "sub_1", "si_1", "price_b", **{**kw, "target": rules.TargetPrice(active=True, currency="EUR")}
    ) == ["price price_b is in eur, the item in usd"]


def test_a_retry_charges_exactly_what_was_approved():
    kw = {
        "open_": True,
        "status": "open",
        "amount_due": 1_999,
        "currency": "usd",
        "approved_amount": 1_999,
        "approved_currency": "usd",
    }
    assert rules.retry_matches_approval("in_1", **kw) == []
    assert rules.retry_matches_approval("in_1", **{**kw, "amount_due": 2_000}) == [
        "the amount due changed since approval: approved 19.99 USD, now 20.00 USD"
    ]
    assert rules.retry_matches_approval("in_1", **{**kw, "open_": False, "status": "paid", "amount_due": 0}) == [
        "invoice in_1 is paid with 0 remaining: nothing to retry"
    ]
