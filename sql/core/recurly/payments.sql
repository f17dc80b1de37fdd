-- core.payments: one row per invoice collected, from its purchase transactions (Recurly records each
-- collection attempt as a transaction). The payment id is the first attempt's transaction id; failure and
-- decline codes are the last failed attempt's (status_code 'declined' is Stripe's card_declined).
WITH t AS (
    SELECT payload, CAST(payload->>'created_at' AS TIMESTAMPTZ) AS created_at,
           CAST(payload->>'success' AS BOOLEAN) AS ok
    FROM raw.recurly_transactions
    WHERE payload->>'type' = 'purchase'
)
SELECT
    arg_min(t.payload->>'id', t.created_at)                               AS payment_id,
    'recurly'                                                             AS platform,
    arg_min(t.payload->>'id', t.created_at)                               AS platform_payment_id,
    any_value(coalesce(list_filter(CAST(i.payload->'custom_fields' AS JSON[]),
                                   lambda f: f->>'name' = 'merchant_ref')[1]->>'value', i.payload->>'id')) AS invoice_id,
    any_value(t.payload->>'$.account.code')                              AS customer_id,
    CAST(arg_min(t.payload->>'amount_minor', t.created_at) AS BIGINT)     AS amount,
    CAST(coalesce(sum(CASE WHEN t.ok THEN CAST(t.payload->>'amount_minor' AS BIGINT) END), 0) AS BIGINT) AS amount_received,
    lower(any_value(t.payload->>'currency'))                              AS currency,
    CASE WHEN bool_or(t.ok) THEN 'succeeded' ELSE 'requires_payment_method' END AS status,
    arg_max(CASE t.payload->>'status_code' WHEN 'declined' THEN 'card_declined' ELSE t.payload->>'status_code' END,
            t.created_at) FILTER (WHERE NOT t.ok)                         AS failure_code,
    arg_max(t.payload->>'gateway_response_code', t.created_at) FILTER (WHERE NOT t.ok) AS decline_code,
    CAST(count(*) AS INTEGER)                                             AS attempt_count,
    min(t.created_at)                                                     AS created_at
FROM t
LEFT JOIN raw.recurly_invoices i ON i.payload->>'id' = t.payload->>'$.invoice.id'
GROUP BY t.payload->>'$.invoice.id'
