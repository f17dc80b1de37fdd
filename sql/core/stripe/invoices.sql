SELECT
    payload->>'id'                                                  AS invoice_id,
    'stripe'                                                        AS platform,
    payload->>'customer'                                            AS customer_id,
    payload->>'$.parent.subscription_details.subscription'          AS subscription_id,
    payload->>'number'                                              AS number,
    payload->>'status'                                              AS status,
    payload->>'billing_reason'                                      AS billing_reason,
    lower(payload->>'currency')                                     AS currency,
    to_timestamp(CAST(payload->>'period_start' AS BIGINT))          AS period_start,
    to_timestamp(CAST(payload->>'period_end' AS BIGINT))            AS period_end,
    to_timestamp(CAST(payload->>'created' AS BIGINT))               AS created_at,
    to_timestamp(CAST(payload->>'$.status_transitions.finalized_at' AS BIGINT)) AS finalized_at,
    to_timestamp(CAST(payload->>'$.status_transitions.paid_at' AS BIGINT))      AS paid_at,
    CAST(payload->>'subtotal' AS BIGINT)                            AS subtotal,
    CAST(coalesce((SELECT sum(CAST(d->>'amount' AS BIGINT))
              FROM (SELECT unnest(CAST(payload->'total_discount_amounts' AS JSON[])) AS d)), 0) AS BIGINT) AS total_discount,
    CAST(payload->>'total' AS BIGINT)                               AS total,
    CAST(payload->>'starting_balance' AS BIGINT)                    AS starting_balance,
    CAST(payload->>'amount_due' AS BIGINT)                          AS amount_due,
    CAST(payload->>'amount_paid' AS BIGINT)                         AS amount_paid,
    CAST(payload->>'amount_remaining' AS BIGINT)                    AS amount_remaining,
    CAST(payload->>'attempt_count' AS INTEGER)                      AS attempt_count
FROM raw.stripe_invoices
