-- core.invoices from Chargebee invoices (imported with the merchant's reference as the invoice id; Chargebee's
-- invoice id *is* its number, so number = invoice_id). Chargebee's amount_due is what is still unpaid
-- (core.amount_remaining); core.amount_due is what the invoice asked for after credits (paid + still due).
-- Chargebee invoices carry no period: as Stripe's, it is the span since the subscription's previous invoice
-- (the first invoice's is its own date). Nor a billing reason: the first invoice creates, one on or after the
-- subscription's cancellation closes it, the rest are cycles. starting_balance is the customer's credit
-- balance before the invoice: the site's promotional credits less what earlier invoices used (or added).
WITH x AS (
    SELECT i.payload AS payload, s.payload AS sub, c.payload AS cust,
           lag(CAST(i.payload->>'date' AS BIGINT)) OVER (
               PARTITION BY i.payload->>'subscription_id'
               ORDER BY CAST(i.payload->>'date' AS BIGINT), i.payload->>'id') AS prev_date,
           coalesce(sum(CAST(coalesce(i.payload->>'credits_applied', '0') AS BIGINT)
                        + least(CAST(i.payload->>'total' AS BIGINT), 0)) OVER (
               PARTITION BY i.payload->>'customer_id'
               ORDER BY CAST(i.payload->>'date' AS BIGINT), i.payload->>'id'
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS credit_moved
    FROM raw.chargebee_invoices i
    LEFT JOIN raw.chargebee_subscriptions s ON s.payload->>'id' = i.payload->>'subscription_id'
    LEFT JOIN raw.chargebee_customers c ON c.payload->>'id' = i.payload->>'customer_id'
)
SELECT
    payload->>'id'                                                  AS invoice_id,
    'chargebee'                                                     AS platform,
    payload->>'id'                                                  AS platform_invoice_id,
    payload->>'customer_id'                                         AS customer_id,
    payload->>'subscription_id'                                     AS subscription_id,
    payload->>'id'                                                  AS number,
    CASE payload->>'status' WHEN 'paid' THEN 'paid' WHEN 'voided' THEN 'void' WHEN 'pending' THEN 'draft'
                            ELSE 'open' END                         AS status,
    CASE WHEN CAST(payload->>'first_invoice' AS BOOLEAN) THEN 'subscription_create'
         WHEN sub->>'cancelled_at' IS NOT NULL
              AND CAST(payload->>'date' AS BIGINT) >= CAST(sub->>'cancelled_at' AS BIGINT) THEN 'subscription_cancel'
         WHEN payload->>'subscription_id' IS NOT NULL AND CAST(payload->>'recurring' AS BOOLEAN) THEN 'subscription_cycle'
         ELSE 'manual' END                                          AS billing_reason,
    lower(payload->>'currency_code')                                AS currency,
    to_timestamp(CASE WHEN CAST(payload->>'first_invoice' AS BOOLEAN) OR prev_date IS NULL
                      THEN CAST(payload->>'date' AS BIGINT) ELSE prev_date END) AS period_start,
    to_timestamp(CAST(payload->>'date' AS BIGINT))                  AS period_end,
    to_timestamp(CAST(payload->>'date' AS BIGINT))                  AS created_at,
    to_timestamp(CAST(payload->>'generated_at' AS BIGINT))          AS finalized_at,
    to_timestamp(CAST(payload->>'paid_at' AS BIGINT))               AS paid_at,
    CAST(payload->>'sub_total' AS BIGINT)                           AS subtotal,
    CAST(coalesce((SELECT sum(CAST(d->>'amount' AS BIGINT))
              FROM (SELECT unnest(CAST(payload->'discounts' AS JSON[])) AS d)), 0) AS BIGINT) AS total_discount,
    CAST(payload->>'total' AS BIGINT)                               AS total,
    CAST(-CAST(coalesce(cust->>'promotional_credits', '0') AS BIGINT) + credit_moved AS BIGINT) AS starting_balance,
    CAST(CAST(coalesce(payload->>'amount_paid', '0') AS BIGINT)
         + CAST(coalesce(payload->>'amount_due', '0') AS BIGINT) AS BIGINT) AS amount_due,
    CAST(coalesce(payload->>'amount_paid', '0') AS BIGINT)          AS amount_paid,
    CAST(coalesce(payload->>'amount_due', '0') AS BIGINT)           AS amount_remaining,
    CAST(coalesce(json_array_length(payload->'dunning_attempts'), 0) AS INTEGER) AS attempt_count
FROM x
