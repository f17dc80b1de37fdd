-- core.invoices from Recurly charge invoices (credit invoices are core.credit_notes). The merchant's id is the
-- invoice custom field merchant_ref. Recurly has no invoice period: a renewal or termination invoice closes the
-- usage since the subscription's previous invoice (a purchase invoice closes none). Customer credit used on
-- an invoice is a credit payment; the balance before an invoice is the account's credit (the account balance)
-- less the credit used by and plus the credit left by the account's earlier invoices.
WITH inv AS (
    SELECT
        i.payload,
        coalesce(list_filter(CAST(i.payload->'custom_fields' AS JSON[]),
                             lambda f: f->>'name' = 'merchant_ref')[1]->>'value', i.payload->>'id') AS invoice_id,
        CAST(i.payload->>'created_at' AS TIMESTAMPTZ)                                          AS created_at,
        CAST(i.payload->>'total_minor' AS BIGINT)                                              AS total,
        CAST(coalesce((SELECT sum(CAST(c->>'amount_minor' AS BIGINT))
                         FROM (SELECT unnest(CAST(i.payload->'credit_payments' AS JSON[])) AS c)), 0) AS BIGINT) AS credit
    FROM raw.recurly_invoices i
    WHERE i.payload->>'type' = 'charge'
)
SELECT
    inv.invoice_id,
    'recurly'                                                                AS platform,
    inv.payload->>'id'                                                       AS platform_invoice_id,
    inv.payload->>'$.account.code'                                          AS customer_id,
    coalesce(list_filter(CAST(s.payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'merchant_ref')[1]->>'value',
             inv.payload->>'$.subscription_ids[0]')                            AS subscription_id,
    inv.payload->>'number'                                                   AS number,
    CASE inv.payload->>'state' WHEN 'paid' THEN 'paid' WHEN 'voided' THEN 'void' WHEN 'failed' THEN 'uncollectible'
                               ELSE 'open' END                               AS status,
    CASE inv.payload->>'origin' WHEN 'purchase' THEN 'subscription_create' WHEN 'renewal' THEN 'subscription_cycle'
                                WHEN 'termination' THEN 'subscription_cancel'
                                WHEN 'immediate_change' THEN 'subscription_update' ELSE 'manual' END AS billing_reason,
    lower(inv.payload->>'currency')                                          AS currency,
    CASE WHEN inv.payload->>'origin' = 'purchase' THEN inv.created_at
         ELSE coalesce(lag(inv.created_at) OVER (PARTITION BY inv.payload->>'$.subscription_ids[0]'
                                                 ORDER BY inv.created_at, inv.payload->>'id'), inv.created_at)
    END                                                                      AS period_start,
    inv.created_at                                                           AS period_end,
    inv.created_at,
    CAST(inv.payload->>'due_at' AS TIMESTAMPTZ)                              AS finalized_at,
    CASE WHEN inv.payload->>'state' = 'paid' THEN CAST(inv.payload->>'closed_at' AS TIMESTAMPTZ) END AS paid_at,
    CAST(inv.payload->>'subtotal_minor' AS BIGINT)                           AS subtotal,
    CAST(coalesce(inv.payload->>'discount_minor', '0') AS BIGINT)            AS total_discount,
    inv.total,
    CAST(-CAST(coalesce(b.payload->>'$.balances[0].available_credit_amount_minor', '0') AS BIGINT)
         + coalesce(sum(inv.credit + least(inv.total, 0)) OVER (
               PARTITION BY inv.payload->>'$.account.code' ORDER BY inv.created_at, inv.payload->>'id'
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS BIGINT) AS starting_balance,
    CAST(greatest(inv.total - inv.credit, 0) AS BIGINT)                      AS amount_due,
    CAST(inv.payload->>'paid_minor' AS BIGINT)                               AS amount_paid,
    CAST(inv.payload->>'balance_minor' AS BIGINT)                            AS amount_remaining,
    CAST((SELECT count(*) FROM raw.recurly_transactions t
           WHERE t.payload->>'$.invoice.id' = inv.payload->>'id' AND t.payload->>'type' = 'purchase') AS INTEGER)
                                                                             AS attempt_count
FROM inv
LEFT JOIN raw.recurly_subscriptions s ON s.payload->>'id' = inv.payload->>'$.subscription_ids[0]'
LEFT JOIN raw.recurly_account_balances b ON b.payload->>'$.account.id' = inv.payload->>'$.account.id'
