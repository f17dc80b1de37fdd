-- core.payments from Chargebee payment transactions: Chargebee records each attempt (a failed one, each
-- dunning retry, the success) as its own transaction; core has one payment per invoice with its attempt
-- count. payment_id is Chargebee's id of the first attempt's transaction (the merchant cannot set one).
WITH t AS (
    SELECT payload, coalesce(payload->>'$.linked_invoices[0].invoice_id', payload->>'id') AS grp,
           payload->>'$.linked_invoices[0].invoice_id' AS invoice_id, CAST(payload->>'date' AS BIGINT) AS txn_at
    FROM raw.chargebee_transactions
    WHERE payload->>'type' = 'payment'
)
SELECT
    arg_min(payload->>'id', txn_at)                                  AS payment_id,
    'chargebee'                                                  AS platform,
    arg_min(payload->>'id', txn_at)                                  AS platform_payment_id,
    any_value(invoice_id)                                        AS invoice_id,
    any_value(payload->>'customer_id')                           AS customer_id,
    CAST(arg_min(payload->>'amount', txn_at) AS BIGINT)              AS amount,
    CAST(sum(CASE WHEN payload->>'status' = 'success' THEN CAST(payload->>'amount' AS BIGINT) ELSE 0 END) AS BIGINT) AS amount_received,
    lower(any_value(payload->>'currency_code'))                  AS currency,
    CASE WHEN bool_or(payload->>'status' = 'success') THEN 'succeeded'
         WHEN bool_or(payload->>'status' IN ('in_progress', 'needs_attention')) THEN 'processing'
         ELSE 'requires_payment_method' END                      AS status,
    arg_max(payload->>'error_code', txn_at) FILTER (WHERE payload->>'status' = 'failure') AS failure_code,
    arg_max(payload->>'$.error_detail.decline_code', txn_at) FILTER (WHERE payload->>'status' = 'failure') AS decline_code,
    CAST(count(*) AS INTEGER)                                    AS attempt_count,
    to_timestamp(min(txn_at))                                        AS created_at
FROM t
GROUP BY grp
